"""
llm.py: model backends behind one call, messages in -> text and token counts out.

    import llm
    model = llm.load()                                   # llama.cpp, the embedded SmolLM2-135M GGUF
    r = model.chat([{"role": "user", "content": "Hi"}], max_tokens=32)
    r.text, r.prompt_tokens, r.completion_tokens, r.seconds, r.cached_tokens
    model.describe()                                     # the config that reproduces it

    llm.load("llamacpp", "model.gguf", n_ctx=4096, temperature=0, lora_path="specialist.gguf")
    llm.load("transformers", "Qwen/Qwen2.5-32B-Instruct", load_4bit=True, adapters={"memory": "adapters/x"})
    llm.load("openai", "Qwen/Qwen2.5-32B-Instruct", base_url="http://127.0.0.1:8000/v1")
    llm.load("openai", "Qwen/Qwen2.5-32B-Instruct", base_url=["http://a:8000/v1", "http://b:8000/v1"])  # replicas
    llm.load("scripted", replies=["<|ACTION|>north<|END|>"], cycle=True)   # or replies=f(messages) -> str
    llm.load("scripted", "runs/x/traces/crafter/default__00.jsonl")         # replay a trace's replies
    llm.load("anthropic", "claude-opus-4-1")        # meta-LLMs only (pip install anthropic)
    llm.load("claude-cli", "opus", read_dirs=["runs/x"])   # Claude Code, an agentic session that may read runs/x

    python llm.py "Say hello." [--backend llamacpp] [--model PATH] [--max-tokens 64]   # one reply + speed

The transformers backend (load_hf, batching) is llm_hf.py; what every backend shares (Reply,
BackendError, the defaults, the embedded model, fit_messages) is llm_core.py, reached through llm.

Every backend has chat(messages, adapter=None, max_tokens=None, stop=None, seed=None, grammar=None)
-> Reply and describe() -> dict. Conventions shared by all of them:
- Sampling: temperature 1.0 (the paper) with nothing else on (no top-k/top-p/min-p, no repeat
  penalty), like an OpenAI-compatible server's defaults; temperature 0 is greedy. Each call samples
  with `seed` (or the backend's seed): the same seed and messages give the same reply (llama.cpp:
  bit for bit for one thread count, whatever the backend computed before; other thread counts
  round differently; servers: as far as they honour seeds).
- `stop` strings end the reply and are not part of it (OpenAI semantics).
- `adapter`: None is the base model; a name picks a LoRA adapter (transformers: one loaded with
  adapters={name: path}; openai: the served model of that name, vLLM multi-LoRA). llama.cpp applies
  one GGUF LoRA at load (lora_path) and serves only that; load a second backend for the base model.
- `grammar`: a GBNF grammar the reply must match (memory_fs.grammar writes the op syntax's).
  llamacpp applies it; openai sends it as `grammar` (llama.cpp servers) and
  `structured_outputs.grammar` (vLLM >= 0.10); scripted replays ignore it; transformers has no
  grammar sampler and says so (GRAMMAR = False: callers check before a run).
- Context overflow (llamacpp, transformers) never raises; see fit_messages for the rule.
- llama.cpp threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set, before llama.cpp
  loads): with OpenMP's spinning default, a 2-core machine shared by other processes generated
  0.8 tok/s instead of 20.
- A CUDA build of llama-cpp-python segfaulted on the lent H200 image in processes that also used numpy
  (every eval.py run: the games, torch), at the model load when numpy came first; with libllama loaded
  at the process start, through LD_PRELOAD, it ran. The command lines call preload_cuda_llama(),
  which restarts the command once with that set (a CPU build: nothing).
- Errors: bad input (missing file, unknown backend/adapter) raises ValueError/FileNotFoundError;
  a call that fails at run time (server down, timeouts, a script out of replies) raises BackendError,
  which a caller may record and go on.
"""
import ctypes
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from llm_core import (CUT_MARK, DEFAULT_MODEL, MAX_TOKENS, N_CTX, NO_GRAMMAR, SEED, TEMPERATURE, BackendError,  # noqa: F401
                      Reply, common_prefix, cut_at_stop, embedded_model, fit_messages, gguf_path, reply_budget)
from llm_hf import Transformers

RETRIES = 3             # openai: extra attempts after a failed one, waiting BACKOFF * 2**i seconds
BACKOFF = 1.0
TIMEOUT = 600.0         # openai: seconds per request (long replies from a 32B model take minutes)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when llama.cpp's OpenMP loads


class GrammarCheckedSampler:
    """A grammar-constrained draw that filters the vocabulary only when it must. llama-cpp-python puts
    llama.cpp's grammar sampler in front of the draw, so every token pays for checking the whole vocabulary
    against the grammar (about 8 ms of one core for SmolLM2's 49k tokens, a third of the token on this CPU
    box and most of it on a GPU), whatever the grammar. This draws from the model's distribution first and
    checks only that token; when the grammar rejects it, the grammar filters the vocabulary and the draw is
    redone among the tokens it allows (llama-server samples the same way). The result has the constrained
    distribution: p(t) + p(rejected) * p(t) / p(allowed) = p(t) / p(allowed) for every allowed t.
    For the draws LlamaCpp asks for (temperature, or greedy at 0; no top-k/top-p/min-p/penalties)."""

    def __init__(self, llama, grammar, temperature):
        import llama_cpp
        self.api = llama_cpp
        rule = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, grammar._grammar.encode(), grammar._root.encode())
        self.free = self.chain(temperature, llama._seed)
        self.constrained = self.chain(temperature, llama._seed ^ 0x5A5A5A5A, rule)  # its own random stream
        self.rule = llama_cpp.llama_sampler_chain_get(self.constrained, 0)  # owned by that chain
        self.cell = (llama_cpp.llama_token_data * 1)()
        self.one = llama_cpp.llama_token_data_array(data=self.cell, size=1, selected=-1, sorted=False)

    def chain(self, temperature, seed, *first):
        api = self.api
        chain = api.llama_sampler_chain_init(api.llama_sampler_chain_default_params())
        draw = ([api.llama_sampler_init_greedy()] if temperature == 0 else
                [api.llama_sampler_init_temp(temperature), api.llama_sampler_init_dist(seed)])
        for sampler in (*first, *draw):
            api.llama_sampler_chain_add(chain, sampler)
        return chain

    def sample(self, ctx, idx=-1):
        """Called by llama-cpp-python's generate() for each token; the grammar accepts the token drawn."""
        api = self.api
        token = api.llama_sampler_sample(self.free, ctx.ctx, idx)
        self.cell[0].id, self.cell[0].logit, self.cell[0].p = token, 0.0, 0.0
        self.one.size, self.one.selected = 1, -1
        api.llama_sampler_apply(self.rule, ctypes.byref(self.one))
        if self.cell[0].logit == -math.inf:  # rejected: filter, draw again, and the chain's grammar accepts it
            return api.llama_sampler_sample(self.constrained, ctx.ctx, idx)
        api.llama_sampler_accept(self.rule, token)
        return token

    def __del__(self):
        for chain in ("free", "constrained"):
            if getattr(self, chain, None):
                self.api.llama_sampler_free(getattr(self, chain))


class LlamaCpp:
    """llama-cpp-python on a GGUF file. A call reuses the KV cache of the previous call's prompt
    for the whole n_batch blocks the two prompts share (llama-cpp-python skips those tokens).
    Why only that much: llama.cpp's CPU kernels give slightly different logits for a token computed
    alone (as generated tokens are) or in a batch cut elsewhere, so reusing the previous reply or
    a partial block would make a reply depend on earlier calls. Blocks aligned as a fresh model
    cuts them keep a reply a function of (seed, messages) alone, bit for bit."""
    GRAMMAR = True

    def __init__(self, model=None, *, n_ctx=N_CTX, n_threads=None, n_gpu_layers=0, seed=SEED,
                 temperature=TEMPERATURE, max_tokens=MAX_TOKENS, lora_path=None, flash_attn=True,
                 n_batch=128):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        self.model, self.n_ctx, self.n_threads = gguf_path(model), n_ctx, n_threads or os.cpu_count()
        if lora_path:
            gguf_path(lora_path)
        self.seed, self.temperature, self.max_tokens = seed, temperature, max_tokens
        self.n_gpu_layers, self.lora_path, self.flash_attn = n_gpu_layers, lora_path, flash_attn
        # flash_attn: prompts ~1.3x faster on the 2-core CPU box (llama-cpp-python turns it off by default).
        # n_batch 128 instead of 512: prompts ~5% slower, but reuse (whole blocks) loses 64 tokens a call, not 256.
        self.llm = llama_cpp.Llama(model_path=self.model, n_ctx=n_ctx, n_threads=self.n_threads,
                                   n_threads_batch=self.n_threads, n_gpu_layers=n_gpu_layers, seed=seed,
                                   lora_path=lora_path, flash_attn=flash_attn, n_batch=n_batch, n_ubatch=n_batch,
                                   verbose=False)
        default_sampler = self.llm._init_sampler  # generate() builds its sampler through this, once a reply
        self.llm._init_sampler = lambda *, grammar=None, temp=0.8, **draw: (
            GrammarCheckedSampler(self.llm, grammar, temp) if grammar else default_sampler(temp=temp, **draw))
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{self.model} has no chat template: use an instruct GGUF that embeds one")
        # Renders exactly what create_chat_completion renders (same template, bos/eos), for counting tokens.
        text = lambda t: self.llm.detokenize([t], special=True).decode() if t != -1 else ""
        self.format = Jinja2ChatFormatter(template, eos_token=text(self.llm.token_eos()),
                                          bos_token=text(self.llm.token_bos()))
        # Free the model with this backend, and at exit before modules unload (Llama.__del__ then fails noisily).
        weakref.finalize(self, self.llm.close)
        self.grammars = {}  # GBNF text -> parsed grammar (an agent uses a handful: per routine and file set)
        self.prompt = []  # the previous call's prompt tokens, whose KV blocks the next call may reuse
        self.lock = threading.Lock()  # one Llama context: calls take turns

    def tokens(self, messages):
        return self.llm.tokenize(self.format(messages=messages).prompt.encode(), add_bos=False, special=True)

    def chat(self, messages, *, adapter=None, max_tokens=None, stop=None, seed=None, grammar=None):
        import llama_cpp
        if adapter is not None:
            raise ValueError("llamacpp serves one model (apply a GGUF LoRA with lora_path=...): "
                             "pass adapter=None and load a second backend, or use transformers/openai")
        want = max_tokens or self.max_tokens
        with self.lock:
            t0 = time.perf_counter()
            if grammar and grammar not in self.grammars:
                # llama-cpp-python parses a grammar only when sampling starts, and crashes on a bad one: check first
                check = llama_cpp.llama_sampler_init_grammar(self.llm._model.vocab, grammar.encode(), b"root")
                if not check:
                    raise ValueError("invalid GBNF grammar: see llama.cpp's grammars/README.md for the syntax")
                llama_cpp.llama_sampler_free(check)
                if len(self.grammars) >= 256:
                    self.grammars.clear()
                self.grammars[grammar] = llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
            msgs = fit_messages(messages, lambda m: len(self.tokens(m)), reply_budget(self.n_ctx, want))
            prompt = self.tokens(msgs)
            keep = min(common_prefix(self.prompt, prompt), len(prompt) - 1) // self.llm.n_batch * self.llm.n_batch
            self.llm.n_tokens = min(self.llm.n_tokens, keep)  # generate() evaluates from here on
            self.prompt = []
            out = self.llm.create_chat_completion(
                msgs, max_tokens=min(want, self.n_ctx - len(prompt)), stop=stop or [],
                seed=self.seed if seed is None else seed, temperature=self.temperature,
                top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, grammar=self.grammars.get(grammar))
            self.prompt = prompt
            usage = out["usage"]
            return Reply(out["choices"][0]["message"]["content"] or "", usage["prompt_tokens"],
                         usage["completion_tokens"], time.perf_counter() - t0, keep)

    def describe(self):
        import llama_cpp
        return {"backend": "llamacpp", "model": self.model, "n_ctx": self.n_ctx, "n_threads": self.n_threads,
                "n_gpu_layers": self.n_gpu_layers, "seed": self.seed, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "lora_path": self.lora_path,
                "flash_attn": self.flash_attn, "n_batch": self.llm.n_batch, "llama_cpp_python": llama_cpp.__version__,
                "grammar_sampling": "draw, then check (GrammarCheckedSampler)"}


def trace_replies(path):
    """The replies a trace recorded, in the order they were made (LOG, PLAN attempts sent back, PLAN)."""
    import trace_format
    _, steps, _ = trace_format.read_trace(path)
    return [call["reply"] for step in steps for routine in ("log", "plan") if routine in step
            for call in step[routine]["turns"]]


def _words(text):
    return len(text.split())


class Scripted:
    """Canned replies: a list (in order; cycle=True starts over, else running out raises
    BackendError), a callable f(messages) -> str, or a trace to replay (model= or trace=).
    Token counts are whitespace-split word counts of the message contents and of the reply.
    temperature/seed/grammar are accepted so one command line fits every backend; they change nothing."""
    GRAMMAR = True

    def __init__(self, model=None, *, replies=None, trace=None, cycle=False, temperature=None, seed=None):
        self.trace = trace or model
        self.replies = trace_replies(self.trace) if self.trace else replies
        if self.replies is None or (not callable(self.replies) and not self.replies):
            raise ValueError("scripted backend needs replies=[...], replies=f(messages) -> str, or a trace .jsonl with replies")
        self.cycle, self.calls = cycle, 0

    def chat(self, messages, *, adapter=None, max_tokens=None, stop=None, seed=None, grammar=None):
        t0 = time.perf_counter()
        if callable(self.replies):
            text = self.replies(messages)
        elif self.calls >= len(self.replies) and not self.cycle:
            raise BackendError(f"scripted backend: all {len(self.replies)} replies used; pass more replies or cycle=True")
        else:
            text = self.replies[self.calls % len(self.replies)]
        self.calls += 1
        text = cut_at_stop(text, stop)
        return Reply(text, sum(_words(m.get("content") or "") for m in messages), _words(text), time.perf_counter() - t0)

    def describe(self):
        replies = getattr(self.replies, "__name__", "callable") if callable(self.replies) else len(self.replies)
        return {"backend": "scripted", "trace": self.trace and str(self.trace), "replies": replies, "cycle": self.cycle}


class OpenAI:
    """An OpenAI-compatible server (vLLM, llama.cpp server, SGLang, hosted APIs), or several replicas
    of one model (base_url a list). The API key comes from the env var api_key_env ("EMPTY" when
    unset, what local servers expect). model=None asks the (first) server which model it serves.
    The client's own retries are off: a call is tried 1 + retries times, waiting backoff * 2**i
    seconds between tries, on connection errors (a reply cut off mid-way too), timeouts, malformed
    JSON, 408/409/429 and 5xx; then (or at once on other errors) it raises BackendError.
    Safe to call from several threads (the clients are; nothing else is shared but the replica
    counts). Replicas: a thread keeps the one it first got, the replica fewest threads use (so
    eval.py's worker threads spread evenly and each server's prefix cache holds whole episodes)."""
    GRAMMAR = True

    def __init__(self, model=None, *, base_url=None, api_key_env="OPENAI_API_KEY", timeout=TIMEOUT,
                 retries=RETRIES, backoff=BACKOFF, seed=SEED, temperature=TEMPERATURE, max_tokens=MAX_TOKENS):
        import openai
        urls = [base_url] if isinstance(base_url, str) else list(base_url or [])
        self.base_urls = urls or [os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")]
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.seed, self.temperature, self.max_tokens = seed, temperature, max_tokens
        self.clients = [openai.OpenAI(base_url=url, api_key=os.environ.get(api_key_env, "EMPTY"),
                                      timeout=timeout, max_retries=0) for url in self.base_urls]
        self.threads = [0] * len(self.clients)  # how many threads each replica serves
        self.pinned, self.pin_lock = threading.local(), threading.Lock()
        self.model = model or self.call(lambda client: client.models.list().data[0].id, "list models", replica=0)

    def replica(self):
        """This thread's replica (index), chosen at its first call: the one fewest threads use."""
        if not hasattr(self.pinned, "index"):
            with self.pin_lock:
                self.pinned.index = self.threads.index(min(self.threads))
                self.threads[self.pinned.index] += 1
        return self.pinned.index

    def call(self, fn, what, replica=None):
        """fn(client) on this thread's replica (or the one given), retried as the class says."""
        import openai
        i = self.replica() if replica is None else replica
        for attempt in range(self.retries + 1):
            try:
                return fn(self.clients[i])
            except (openai.APIConnectionError, openai.APIStatusError, openai.APIResponseValidationError,
                    ValueError, IndexError) as e:  # ValueError: a body that is not JSON
                status = getattr(e, "status_code", None)
                transient = (isinstance(e, (openai.APIConnectionError, ValueError)) or status in (408, 409, 429)
                             or (status or 0) >= 500)
                if not transient or attempt == self.retries:
                    detail = (str(e).splitlines() or [""])[0][:200]
                    raise BackendError(f"openai backend: {what} at {self.base_urls[i]} failed after {attempt + 1} "
                                       f"attempt(s): {type(e).__name__}: {detail}") from e
                time.sleep(self.backoff * 2 ** attempt)

    def chat(self, messages, *, adapter=None, max_tokens=None, stop=None, seed=None, grammar=None):
        t0 = time.perf_counter()
        constrain = {"extra_body": {"grammar": grammar, "structured_outputs": {"grammar": grammar}}} if grammar else {}
        out = self.call(lambda client: client.chat.completions.create(
            model=adapter or self.model, messages=messages, max_tokens=max_tokens or self.max_tokens,
            temperature=self.temperature, seed=self.seed if seed is None else seed, stop=stop or None, **constrain),
            f"chat with {adapter or self.model!r}")
        usage, details = out.usage, getattr(out.usage, "prompt_tokens_details", None)
        return Reply(out.choices[0].message.content or "", usage.prompt_tokens if usage else 0,
                     usage.completion_tokens if usage else 0, time.perf_counter() - t0,
                     (details and details.cached_tokens) or 0)

    def describe(self):
        return {"backend": "openai", "model": self.model, "base_url": self.base_urls, "seed": self.seed,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "timeout": self.timeout,
                "retries": self.retries, "backoff": self.backoff}


class Anthropic:
    """Anthropic's API (pip install anthropic; the key from ANTHROPIC_API_KEY), streamed so that a
    long reply does not hit the client's timeout. A meta-LLM backend: its API takes no seed (`seed`
    is accepted and changes nothing), adapters or grammars. A failed call raises BackendError."""
    GRAMMAR = False

    def __init__(self, model=None, *, timeout=TIMEOUT, temperature=TEMPERATURE, max_tokens=MAX_TOKENS, seed=None):
        try:
            import anthropic
        except ImportError:
            raise ValueError("the anthropic backend needs the official client: pip install anthropic "
                             "(and set ANTHROPIC_API_KEY)") from None
        if not model:
            raise ValueError("the anthropic backend needs a model name, e.g. claude-opus-4-1")
        self.model, self.timeout, self.temperature, self.max_tokens = model, timeout, temperature, max_tokens
        self.client = anthropic.Anthropic(timeout=timeout)

    def chat(self, messages, *, adapter=None, max_tokens=None, stop=None, seed=None, grammar=None):
        import anthropic
        if adapter or grammar:
            raise ValueError("the anthropic backend has no adapters or grammars")
        t0 = time.perf_counter()
        system = [m["content"] for m in messages[:1] if m["role"] == "system"]
        try:
            with self.client.messages.stream(
                    model=self.model, max_tokens=max_tokens or self.max_tokens, temperature=self.temperature,
                    messages=messages[len(system):], stop_sequences=stop or [],
                    **({"system": system[0]} if system else {})) as stream:
                text, usage = stream.get_final_text(), stream.get_final_message().usage
        except anthropic.APIError as e:
            raise BackendError(f"anthropic: {type(e).__name__}: {str(e)[:300]}") from None
        return Reply(text, usage.input_tokens, usage.output_tokens, time.perf_counter() - t0)

    def describe(self):
        return {"backend": "anthropic", "model": self.model, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "timeout": self.timeout}


class ClaudeCli:
    """Claude Code as a meta-LLM, the authors' setting: `claude -p` (npm install -g
    @anthropic-ai/claude-code) gets one user message on standard input and runs an agentic session
    of at most `turns` turns in `cwd` with the read-only tools Read, Grep and Glob (so it may read
    the folders in `read_dirs`, e.g. whole traces); its final message is the reply. The CLI takes no
    sampling settings, adapters or grammars, and reports no token counts (0); temperature/seed/max_tokens
    are accepted so one command line fits every backend, and change nothing."""
    GRAMMAR = False
    TOOLS = ("Read", "Grep", "Glob")

    def __init__(self, model="opus", *, timeout=3600, turns=100, cwd=None, read_dirs=(), temperature=None, seed=None,
                 max_tokens=None):
        if shutil.which("claude") is None:
            raise ValueError("the claude-cli backend: no `claude` on PATH; install Claude Code "
                             "(npm install -g @anthropic-ai/claude-code) or pick another backend")
        self.model, self.timeout, self.turns = model or "opus", timeout, turns
        self.cwd, self.read_dirs = cwd, [str(d) for d in read_dirs]

    def chat(self, messages, *, adapter=None, max_tokens=None, stop=None, seed=None, grammar=None):
        if [m["role"] for m in messages] != ["user"] or adapter or grammar:
            raise ValueError("the claude-cli backend takes one user message (no system message, adapters or grammars)")
        t0 = time.perf_counter()
        cmd = ["claude", "-p", "Do the task given on standard input. Your final message must be the reply it asks for.",
               "--model", self.model, "--output-format", "text", "--max-turns", str(self.turns),
               "--allowedTools", *self.TOOLS] + [a for d in self.read_dirs for a in ("--add-dir", d)]
        try:
            out = subprocess.run(cmd, input=messages[0]["content"], capture_output=True, text=True, cwd=self.cwd,
                                 timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BackendError(f"claude -p gave no answer within {self.timeout} s") from None
        if out.returncode:
            raise BackendError(f"claude -p exited with {out.returncode}: {out.stderr.strip()[-300:]}")
        return Reply(cut_at_stop(out.stdout, stop), 0, 0, time.perf_counter() - t0)

    def describe(self):
        return {"backend": "claude-cli", "model": self.model, "turns": self.turns, "tools": list(self.TOOLS),
                "read_dirs": self.read_dirs, "timeout": self.timeout}


BACKENDS = {"llamacpp": LlamaCpp, "scripted": Scripted, "transformers": Transformers, "openai": OpenAI,
            "anthropic": Anthropic, "claude-cli": ClaudeCli}
AGENT_BACKENDS = ("llamacpp", "scripted", "transformers", "openai")  # the others serve meta-LLMs only


def load(backend="llamacpp", model=None, **options):
    """A backend by name; options are the keyword arguments of its class."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](model, **options)


def cuda_libllama():
    """The libllama of a CUDA build of llama-cpp-python (its lib folder, or LLAMA_CPP_LIB_PATH, holds
    libggml-cuda.so), else None: a CPU build, or none installed."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(spec.submodule_search_locations[0]) / "lib")
    return str(lib / "libllama.so") if (lib / "libggml-cuda.so").exists() else None


def preload_cuda_llama():
    """Run this command line again, once, with a CUDA build's libllama in LD_PRELOAD (see the module notes:
    loaded after numpy, it crashed). Call it first thing in a script's __main__ block; a CPU build, a
    preload already in place, or a program that is not a script file (python -c, stdin) changes nothing."""
    libllama = cuda_libllama()
    preload = os.environ.get("LD_PRELOAD", "")
    if libllama is None or libllama in preload.replace(":", " ").split() or not os.path.isfile(sys.argv[0]):
        return
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "LD_PRELOAD": f"{libllama} {preload}".strip()})


if __name__ == "__main__":
    preload_cuda_llama()
    import argparse
    p = argparse.ArgumentParser(description="One chat reply from a backend, with token counts and speed.")
    p.add_argument("prompt")
    p.add_argument("--backend", default="llamacpp", choices=[b for b in BACKENDS if b != "scripted"])
    p.add_argument("--model", help="GGUF path, hub id / local dir, or server model name (default: embedded SmolLM2)")
    p.add_argument("--base-url", help="openai: server URL")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args()
    try:
        options = {"base_url": args.base_url} if args.backend == "openai" else {}
        m = load(args.backend, args.model, temperature=args.temperature, seed=args.seed, **options)
        r = m.chat([{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens)
    except (ValueError, FileNotFoundError, BackendError) as e:
        p.exit(2, f"error: {e}\n")  # one line, status 2, like the kit's other CLIs
    print(r.text)
    print(f"-- {r.prompt_tokens} prompt + {r.completion_tokens} completion tokens in {r.seconds:.2f} s "
          f"({(r.prompt_tokens + r.completion_tokens) / r.seconds:.1f} tok/s overall)")
