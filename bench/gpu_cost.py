"""
bench/gpu_cost.py: what the paper's table costs on one GPU. A Qwen2.5-32B-shape model (64 layers,
hidden 5120, 40/8 heads, FFN 27648, vocab 152,064) with random weights (speed does not depend on
their values) plays the real agent loop (eval.py: automem + envs + scaffolds/<env>/v0) with N
episodes in flight, through one of three paths, for a fixed window of wall-clock time:

  inproc        llama.cpp with CUDA in this process: our llamacpp backend on a Q4_K_M GGUF, every
                layer on the GPU; one call at a time (N = 1). llama-cpp-python from `build` (--prefix)
                or, without one, the installed CUDA build (install.sh --gpu); libllama preloaded
                (llm.preload_cuda_llama: loaded after numpy it crashed on the H200)
  server        llama.cpp's own llama-server (N parallel slots, continuous batching, a prompt cache
                per slot) driven by our openai backend with --workers N. (llama-cpp-python's
                `python -m llama_cpp.server` takes one request at a time behind a lock: no slots.)
  transformers  our transformers backend in bf16 (--load-4bit: bitsandbytes nf4, from install.sh --gpu) with
                --workers N: N episode threads whose calls it batches into one generate (at most N
                rows, left-padded; N = 1 is one call at a time); no grammar sampler, so --grammar off

Replies: --grammar off and --max-tokens 128 (a random model rarely ends a reply earlier) for the
speed numbers. With --grammar on a random model still writes well-formed ops, but llama.cpp then
filters the whole vocabulary on the CPU for nearly every token (its free sample fails the grammar
check), which caps llama-server near 35 generated tok/s whatever N: a cost of random weights, not of
a model that writes the syntax. Tokenizer: Qwen2's, from llama.cpp's models/ggml-vocab-qwen2.gguf
(151,936 tokens, padded to 152,064 rows; its ChatML template with the default system line), for
llama.cpp and transformers alike.

Reported per run (JSON): env steps/s, LLM calls/s, prompt and generated tokens/s, the share of
prompt tokens served from a cache, peak GPU memory, per-step tokens from the traces, and the
physical limit: weights bytes (+ KV cache) / measured HBM bandwidth per decode step at batch 1 and N.
`table` turns the runs into the README's GPU-hours (prefill and per-token decode costs x the tokens
per step of each row x the protocol's steps).

The device has no network: carry llama-cpp-python 0.3.36's sdist unpacked as lcp/ and trimmed to
~8 MB (drop .git, docs, examples, tests, docker; in vendor/llama.cpp drop docs, benches, tests,
examples, pocs, media, tools/server/tests, tools/ui/{src,static,tests,*.json}, every ggml/src/ggml-*
backend but cpu and cuda, and every models/ file but ggml-vocab-qwen2.gguf), plus wheels for what
the image lacks (openai and its pydantic, the envs: balrog-nle built for cp312, gym 0.23, crafter,
minihack, setuptools 80.9 for pkg_resources). On the GPU machine:
    python bench/gpu_cost.py build --src .gpu/lcp.tgz --prefix /tmp/lcp      # llama-server + libllama, sm_90: 301 s
    python bench/gpu_cost.py gguf --out /tmp/q4km.gguf \
        --vocab /tmp/lcp/lcp/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf
    python bench/gpu_cost.py run --path server --n 32 --env crafter --grammar off --seconds 60 --out s32.json
    python bench/gpu_cost.py run --path transformers --env crafter --seconds 40 --out tf_1_crafter.json
    python bench/gpu_cost.py run --path transformers --n 32 --env crafter --seconds 120 --out tf_32_crafter.json
    python bench/gpu_cost.py run --path inproc --env crafter --grammar off --seconds 45 --prefix /none \
        --out inproc_1_crafter.json                                   # the installed CUDA llama-cpp-python
On a CPU machine, the same loop with a tiny model of the same tokenizer (token counts, no speed):
    python bench/gpu_cost.py build --src .gpu/lcp.tgz --prefix /tmp/lcp --cpu
    python bench/gpu_cost.py gguf --out /tmp/tiny.gguf --tiny --vocab ...
    python bench/gpu_cost.py run --path inproc --gguf /tmp/tiny.gguf --tiny --env minihack --grammar on \
        --max-tokens 512 --seconds 90 --out tokens_cpu_minihack_v0.json     # + --scaffold .../v4 [--memory-model]
    python bench/gpu_cost.py table --runs bench/device/server_*.json bench/device/tf_*_crafter.json \
        bench/device/inproc_1_crafter.json --tokens bench/device/tokens_cpu_*.json
"""
import argparse
import faulthandler
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from qlora_gpu import QWEN25_32B  # noqa: E402  the shape, one definition

TINY = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 152064}
Q4_K, Q6_K, F32 = 12, 14, 0  # ggml type ids
BLOCK = {Q4_K: 144, Q6_K: 210}  # bytes per 256 weights
# Fixed parts of a block (offset: bytes), the rest random: weights are then zero-mean with std ~0.02, as
# transformers initialises them, so activations stay finite through 64 random layers (random scales and mins
# gave non-zero-mean weights whose activations overflowed). Q4_K: w = d*sc*q - dmin*m with q in 0..15;
# sc = m = 1 in every sub-block and dmin = 7.5 d make w = d (q - 7.5). Q6_K: w = d*sc*(q - 32), sc = 1.
D4, D6 = 0.02 / 4.6, 0.02 / 18.5  # std of q - 7.5 (q uniform 0..15) and of q - 32 (0..63)
FIXED = {Q4_K: {0: np.float16(D4).tobytes() + np.float16(7.5 * D4).tobytes(), 4: bytes([1] * 8 + [0x11] * 4)},
         Q6_K: {192: bytes([1] * 16), 208: np.float16(D6).tobytes()}}
KV_BYTES = 2  # f16 KV cache
GB = 2 ** 30
CHATML_EOS = 151645  # <|im_end|>, what Qwen2.5-Instruct ends a turn with


# ----------------------------------------------------------------------------- build

def lib_dir(prefix):
    return Path(prefix) / "build" / "bin"


def build(args):
    """Unpack the trimmed sdist and build libllama (for llama-cpp-python, found through LLAMA_CPP_LIB_PATH)
    and llama-server from its vendored llama.cpp, with CUDA for sm_90 unless --cpu."""
    prefix = Path(args.prefix)
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "xzf", args.src, "-C", str(prefix)], check=True)
    flags = ["-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF",
             "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
             "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF"]  # no network there: no UI download
    flags += [] if args.cpu else ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90"]
    env = {**os.environ, "PATH": f"/usr/local/cuda/bin:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t0 = time.time()
    subprocess.run(["cmake", "-S", str(prefix / "lcp" / "vendor" / "llama.cpp"), "-B", str(prefix / "build"), *flags],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(prefix / "build"), "--target", "llama-server", "llama",
                    "-j", str(os.cpu_count())], check=True, env=env, stdout=subprocess.DEVNULL)
    print(f"built {lib_dir(prefix)} in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------- the random Q4_K_M GGUF

def more_bits(i, n):
    """llama.cpp's Q4_K_M rule: these layers' attn_v and ffn_down get Q6_K."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4km_tensors(shape):
    """(name, ggml type, ne0, ne1) of a Qwen2 model in llama.cpp's Q4_K_M mix."""
    h, ff, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    out = [("token_embd.weight", Q4_K, h, shape["vocab_size"]), ("output_norm.weight", F32, h, 1),
           ("output.weight", Q6_K, h, shape["vocab_size"])]
    for i in range(layers):
        hi = Q6_K if more_bits(i, layers) else Q4_K
        out += [(f"blk.{i}.attn_norm.weight", F32, h, 1), (f"blk.{i}.ffn_norm.weight", F32, h, 1),
                (f"blk.{i}.attn_q.weight", Q4_K, h, h), (f"blk.{i}.attn_q.bias", F32, h, 1),
                (f"blk.{i}.attn_k.weight", Q4_K, h, kv), (f"blk.{i}.attn_k.bias", F32, kv, 1),
                (f"blk.{i}.attn_v.weight", hi, h, kv), (f"blk.{i}.attn_v.bias", F32, kv, 1),
                (f"blk.{i}.attn_output.weight", Q4_K, h, h),
                (f"blk.{i}.ffn_gate.weight", Q4_K, h, ff), (f"blk.{i}.ffn_up.weight", Q4_K, h, ff),
                (f"blk.{i}.ffn_down.weight", hi, ff, h)]
    return out


def nbytes(kind, ne0, ne1):
    return ne0 * ne1 * 4 if kind == F32 else ne0 // 256 * BLOCK[kind] * ne1


def block_pool(kind, blocks, rng):
    """Random quantized blocks with the FIXED scales of their type."""
    pool = rng.integers(0, 256, size=(blocks, BLOCK[kind]), dtype=np.uint8)
    for at, value in FIXED[kind].items():
        pool[:, at:at + len(value)] = np.frombuffer(value, dtype=np.uint8)
    return pool.reshape(-1)


def write_gguf(args):
    """A Qwen2 GGUF of the chosen shape: random Q4_K/Q6_K blocks (one pool, repeated), norms 1, biases 0,
    and the tokenizer and chat template of --vocab (llama.cpp's ggml-vocab-qwen2.gguf)."""
    sys.path.insert(0, str(Path(args.vocab).parents[1] / "gguf-py"))
    import gguf
    shape = {**QWEN25_32B, "vocab_size": 152064, **(TINY if args.tiny else {})}
    vocab = gguf.GGUFReader(args.vocab)
    field = lambda k: vocab.fields[k].contents()
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    pad = shape["vocab_size"] - len(tokens)  # Qwen2.5's embedding has 152,064 rows; the extra ids are unused
    w = gguf.GGUFWriter(args.out, "qwen2")
    w.add_name("Qwen2.5-32B-shape random Q4_K_M" if not args.tiny else "tiny random Qwen2")
    w.add_block_count(shape["num_hidden_layers"])
    w.add_context_length(32768)
    w.add_embedding_length(shape["hidden_size"])
    w.add_feed_forward_length(shape["intermediate_size"])
    w.add_head_count(shape["num_attention_heads"])
    w.add_head_count_kv(shape["num_key_value_heads"])
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(15)  # MOSTLY_Q4_K_M
    w.add_tokenizer_model(field("tokenizer.ggml.model"))
    w.add_tokenizer_pre(field("tokenizer.ggml.pre"))
    w.add_token_list(tokens + [f"[PAD{i}]" for i in range(len(tokens), shape["vocab_size"])])
    w.add_token_types(types + [gguf.TokenType.UNUSED] * pad)
    w.add_token_merges(field("tokenizer.ggml.merges"))
    w.add_bos_token_id(field("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(CHATML_EOS)
    w.add_pad_token_id(field("tokenizer.ggml.padding_token_id"))
    w.add_add_bos_token(False)
    w.add_chat_template(field("tokenizer.chat_template"))
    tensors = q4km_tensors(shape)
    for name, kind, ne0, ne1 in tensors:
        w.add_tensor_info(name, (ne0,) if kind == F32 else (ne1, nbytes(kind, ne0, 1)),
                          np.float32 if kind == F32 else np.uint8,
                          nbytes(kind, ne0, ne1), raw_dtype=None if kind == F32 else gguf.GGMLQuantizationType(kind))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    pools = {kind: block_pool(kind, 1 << 16, rng) for kind in BLOCK}  # ~10 MB each, repeated
    t0 = time.time()
    for name, kind, ne0, ne1 in tensors:
        if kind == F32:
            data = np.full(ne0 * ne1, 1.0 if name.endswith("norm.weight") else 0.0, dtype=np.float32)
        else:
            data = np.resize(pools[kind], nbytes(kind, ne0, ne1))
        w.write_tensor_data(data)
    w.close()
    total = sum(nbytes(*t[1:]) for t in tensors)
    print(f"wrote {args.out}: {total / 1e9:.2f} GB of tensors in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------- measuring

class GpuMemory:
    """Peak used memory of the GPU this process runs on (the first CUDA_VISIBLE_DEVICES names; all processes on it,
    nvidia-smi polled every 0.5 s) while the block runs. nvidia-smi ignores CUDA_VISIBLE_DEVICES: without -i it
    answered GPU 0's number for a run on GPU 1."""

    def __enter__(self):
        self.peak_mib, self.stop = 0, threading.Event()
        self.gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def poll(self):
        while not self.stop.wait(0.5):
            try:
                query = ["nvidia-smi", "-i", self.gpu, "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
                out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max(self.peak_mib, int(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return  # no GPU (a CPU run): no number

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def hbm_bandwidth():
    """Device-to-device copy bandwidth in bytes/s (read + write), the decode step's ceiling; None without CUDA.
    Measured in a child process: torch's CUDA libraries stay out of the process that loads llama.cpp's."""
    out = subprocess.run([sys.executable, __file__, "bandwidth"], capture_output=True, text=True).stdout.split()
    return float(out[-1]) if out and out[-1] != "None" else None


def bandwidth(args):
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print(None)
        return
    x = torch.empty(2 * GB, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    print(2 * 10 * 2 * GB / (time.perf_counter() - t0))


def physical_limit(weights_bytes, bandwidth, n, context, shape):
    """Decode tokens/s if a step only had to read the weights once and each sequence's KV cache once."""
    if not bandwidth:
        return None
    kv = shape["num_hidden_layers"] * 2 * shape["num_key_value_heads"] * \
        (shape["hidden_size"] // shape["num_attention_heads"]) * KV_BYTES
    step = lambda b: (weights_bytes + b * context * kv) / bandwidth
    return {"hbm_gb_s": bandwidth / 1e9, "weights_gb": weights_bytes / 1e9, "kv_bytes_per_token": kv,
            "context_tokens": context, "decode_ms_batch1": 1e3 * step(1), "tok_s_batch1": 1 / step(1),
            f"decode_ms_batch{n}": 1e3 * step(n), f"tok_s_batch{n}": n / step(n)}


def instrument(cls, calls, errors, seconds):
    """Record every model call of backend class `cls` (and what a failing one raised); `seconds` after the
    first call refuse new calls (BackendError), so eval.py ends its episodes and returns. A call in flight
    then finishes and counts."""
    import llm
    inner, first = cls.chat, []

    def chat(self, messages, **kw):
        first[:] = first or [time.time()]
        if time.time() > first[0] + seconds:
            raise llm.BackendError("gpu_cost: the measuring window is over")
        t0 = time.time()
        try:
            r = inner(self, messages, **kw)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}"[:400])
            raise
        calls.append({"t0": t0, "t1": time.time(), "prompt": r.prompt_tokens, "completion": r.completion_tokens,
                      "cached": r.cached_tokens})
        return r
    cls.chat = chat


def trace_steps(run_dir):
    """Every step record of the run's traces, finished or cut off by the window (.part)."""
    import trace_format
    steps = []
    for path in sorted(Path(run_dir, "traces").glob("*/*")):
        if path.suffix in (".jsonl", ".part"):
            header, recs, _ = trace_format.read_trace(path)
            steps += [(header, s) for s in recs]
    return steps


def seeds_file(path, env, episodes):
    Path(path).write_text(f"{env}: {' '.join(str(42 + i) for i in range(episodes))}\n")


# ----------------------------------------------------------------------------- the transformers path

def qwen2_tokenizer(vocab_gguf):
    """Qwen2's tokenizer as a transformers tokenizer, built from llama.cpp's vocab GGUF (byte-level BPE with
    Qwen2's pre-tokenizer split; control tokens special)."""
    sys.path.insert(0, str(Path(vocab_gguf).parents[1] / "gguf-py"))
    import gguf
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    r = gguf.GGUFReader(vocab_gguf)
    field = lambda k: r.fields[k].contents()
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")])
    tok = Tokenizer(bpe)
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, k in zip(tokens, types) if k == gguf.TokenType.CONTROL])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=field("tokenizer.chat_template"))


def random_hf_loader(shape, tok, folder=None):
    """A stand-in for llm_hf.load_hf: the Qwen2 of `shape` with random bf16 weights made on the GPU (64 GB for the
    32B shape: nothing to read from disk). With `folder`, those weights are saved there once (safetensors) and loaded
    back through the real llm_hf.load_hf, so that --load-4bit quantizes them as it would the real model's."""
    import llm_hf
    real_load = llm_hf.load_hf

    def random_model(dtype):
        import torch
        import transformers
        config = transformers.Qwen2Config(**{**shape, "max_position_embeddings": 32768, "rope_theta": 1e6,
                                             "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                                             "eos_token_id": CHATML_EOS})
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)

    def load_hf(model, dtype, load_4bit=False):
        if folder is None:
            return tok, random_model(dtype)
        if not (Path(folder) / "config.json").is_file():
            import torch
            net = random_model(torch.bfloat16)
            net.save_pretrained(folder)
            tok.save_pretrained(folder)
            del net
            torch.cuda.empty_cache()
        return real_load(folder, dtype, load_4bit=load_4bit)
    return load_hf


# ----------------------------------------------------------------------------- one run

def start_server(args, n):
    port = free_port()
    log = open(Path(args.workdir) / f"llama-server-{n}.log", "w")
    cmd = [str(lib_dir(args.prefix) / "llama-server"), "-m", args.gguf, "-ngl", "999", "-np", str(n),
           "-c", str(n * args.ctx), "-fa", "on", "-b", "2048", "-ub", "512", "--host", "127.0.0.1",
           "--port", str(port), "-a", "qwen2.5-32b-shape"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"error: llama-server exited with {proc.returncode}: see {log.name}")
        try:
            if urllib.request.urlopen(f"{url}/v1/models", timeout=2).status == 200:  # 503 while loading
                return proc, url, cmd
        except OSError:
            time.sleep(1)
    proc.kill()
    sys.exit(f"error: llama-server not ready after 10 minutes: see {log.name}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args):
    faulthandler.enable()  # a crash inside llama.cpp prints the Python stack that led there
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM)"))  # `timeout`: stop the server, report
    if lib_dir(args.prefix).is_dir():  # `build`'s libllama and llama-cpp-python's package from its sdist;
        os.environ["LLAMA_CPP_LIB_PATH"] = str(lib_dir(args.prefix))  # else the installed one (install.sh --gpu)
        sys.path.insert(0, str(Path(args.prefix) / "lcp"))
    elif args.path == "server":
        sys.exit(f"error: no llama-server under {lib_dir(args.prefix)}: run `gpu_cost.py build` first (or --prefix)")
    import envs
    import eval as evaluation
    import llm
    import llm_hf
    import trace_format
    llm.preload_cuda_llama()  # the in-process path's CUDA libllama ahead of numpy (it crashed on the 32B file without)
    shape = {**QWEN25_32B, "vocab_size": 152064, **(TINY if args.tiny else {})}
    if args.path == "inproc" and args.n != 1:
        sys.exit("error: --path inproc runs one call at a time: use --n 1 (or --path server or transformers)")
    bandwidth = hbm_bandwidth()
    work = Path(tempfile.mkdtemp(prefix="gpu_cost_", dir=args.workdir))
    tasks = 1 if args.env != "minihack" else len([t for t in envs.tasks("minihack") if t not in envs.BOXOBAN_TASKS])
    episodes = 2 * math.ceil(args.n / tasks)  # more jobs than slots: an episode that ends is replaced
    seeds_file(work / "seeds.txt", args.env, episodes)
    argv = ["--env", args.env, "--episodes", str(episodes), "--seeds", str(work / "seeds.txt"),
            "--workers", str(args.n), "--runs-dir", str(work), "--run-name", "run", "--no-replay",
            "--log-turns", str(args.log_turns), "--plan-turns", str(args.plan_turns), "--seed", "0"]
    if args.scaffold:
        argv += ["--scaffold", args.scaffold]
    if args.memory_model:
        argv += ["--memory-model", args.gguf]
    server, cmd = None, None
    if args.path == "inproc":
        cls = llm.LlamaCpp
        argv += ["--backend", "llamacpp", "--model", args.gguf, "--gpu-layers", "-1", "--n-ctx", str(args.ctx),
                 "--grammar", args.grammar, "--max-tokens", str(args.max_tokens)]
        weights = sum(nbytes(*t[1:]) for t in q4km_tensors(shape))
    elif args.path == "server":
        cls = llm.OpenAI
        server, url, cmd = start_server(args, args.n)
        argv += ["--backend", "openai", "--base-url", f"{url}/v1", "--model", "qwen2.5-32b-shape",
                 "--grammar", args.grammar, "--max-tokens", str(args.max_tokens)]
        weights = sum(nbytes(*t[1:]) for t in q4km_tensors(shape))
    else:
        cls = llm.Transformers
        folder = str(Path(args.workdir) / "random-qwen2.5-32b-shape") if args.load_4bit else None
        llm_hf.load_hf = random_hf_loader(shape, qwen2_tokenizer(args.vocab), folder)
        rows, generate = [], llm.Transformers.generate  # the rows of each generate: how full the batches ran
        llm.Transformers.generate = lambda self, batch: (rows.append(len(batch)), generate(self, batch))[1]
        argv += ["--backend", "transformers", "--model", "random-qwen2.5-32b-shape", "--grammar", "off",
                 "--max-tokens", str(args.max_tokens)] + (["--load-4bit"] if args.load_4bit else [])
        weights = None  # counted from the model once loaded
    calls, errors = [], []
    t_start = time.time()
    instrument(cls, calls, errors, args.seconds)
    with GpuMemory() as gpu:
        try:
            evaluation.main(argv)
        except SystemExit:  # the window closed: episodes were refused further calls
            pass
        finally:
            if server:
                server.terminate()
                server.wait()
    if args.path == "transformers":
        import torch
        net = evaluation.WORKER["llm"].net
        weights = sum(p.numel() * p.element_size() for p in net.parameters())
        torch_peak = torch.cuda.max_memory_allocated() / GB if torch.cuda.is_available() else None
    if not calls:
        Path(args.out).write_text(json.dumps({"path": args.path, "n": args.n, "env": args.env, "errors": errors[:5]}))
        sys.exit(f"error: no model call succeeded: {errors[:2]}")
    steps = trace_steps(work / "run")
    t0, t1 = min(c["t0"] for c in calls), max(c["t1"] for c in calls)
    window = t1 - t0
    prompt, completion = sum(c["prompt"] for c in calls), sum(c["completion"] for c in calls)
    cached = sum(c["cached"] for c in calls)
    step_calls = [[t for _, t, _ in trace_format.model_calls(h, s)] for h, s in steps]
    per_step = lambda key: sum(t[key] for turns in step_calls for t in turns) / max(len(steps), 1)
    context = prompt / max(len(calls), 1) + completion / max(len(calls), 1) / 2
    result = {
        "path": args.path, "n": args.n, "env": args.env, "scaffold": args.scaffold or f"scaffolds/{args.env}/v0",
        "two_model": bool(args.memory_model), "tiny": args.tiny, "load_4bit": args.load_4bit,
        "limits": {"log_turns": args.log_turns, "plan_turns": args.plan_turns,
                   "max_tokens": args.max_tokens, "grammar": args.grammar == "on" and args.path != "transformers"},
        "load_seconds": round(t0 - t_start, 1), "window_seconds": round(window, 1),
        "steps": len(steps), "calls": len(calls), "episodes_started": len({id(h) for h, _ in steps}),
        "env_steps_per_s": len(steps) / window, "calls_per_s": len(calls) / window,
        "prompt_tokens": prompt, "completion_tokens": completion, "cached_prompt_tokens": cached,
        "prompt_tok_s": prompt / window, "uncached_prompt_tok_s": (prompt - cached) / window,
        "generated_tok_s": completion / window, "cache_share": cached / max(prompt, 1),
        "per_step": {"calls": sum(map(len, step_calls)) / max(len(steps), 1),
                     "prompt_tokens": per_step("prompt_tokens"), "completion_tokens": per_step("completion_tokens")},
        "per_call": {"prompt_tokens": prompt / max(len(calls), 1), "completion_tokens": completion / max(len(calls), 1),
                     "seconds": sum(c["t1"] - c["t0"] for c in calls) / max(len(calls), 1)},
        "peak_gpu_gib": gpu.peak_mib / 1024 if gpu.peak_mib else None,
        "physical_limit": physical_limit(weights, bandwidth, args.n, round(context), shape),
        "call_errors": len(errors), "first_errors": errors[:3],
        "server_command": cmd and " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
    }
    if args.path == "transformers":
        result.update(torch_peak_gib=torch_peak, batches=len(rows), rows_per_batch=sum(rows) / max(len(rows), 1))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))

# ----------------------------------------------------------------------------- the cost table

PROTOCOL_STEPS = {"crafter": 10 * 2000, "minihack": 8 * 5 * 100, "nethack": 5 * 1000}  # upper bounds; NetHack
# episodes have no fixed length (they end after 150 steps without progress): 1,000 steps each is an assumption
ROWS = {"v0": "v0", "converged": "converged", "twomodel": "two-model"}
PATHS = [("server", 32), ("server", 8), ("server", 1), ("inproc", 1), ("transformers", 32), ("transformers", 8),
         ("transformers", 1), ("transformers-4bit", 32), ("transformers-4bit", 8), ("transformers-4bit", 1)]


def path_key(d):
    """A run's column in the table: its path and N; --load-4bit runs of the transformers path are a path of their own."""
    return d["path"] + ("-4bit" if d.get("load_4bit") else ""), d["n"]


def token_costs(runs):
    """Seconds per uncached prompt token (a, one value: prefill) and per generated token (b, per path and N),
    from the grammar-off runs: a and b of server N=32 solve its two runs (Crafter, NetHack: different mixes);
    every other run gives its b from its window, tokens and that a."""
    mix = lambda d: (d["uncached_prompt_tok_s"] * d["window_seconds"], d["generated_tok_s"] * d["window_seconds"])
    pair = [d for d in runs if path_key(d) == ("server", 32)]
    if len(pair) < 2:
        sys.exit("error: the table needs two server N=32 runs on different envs (grammar off)")
    a, b32 = np.linalg.solve(np.array([mix(d) for d in pair[:2]]), np.array([d["window_seconds"] for d in pair[:2]]))
    costs = {("server", 32): b32}
    for d in runs:
        if path_key(d) not in costs:
            prompt, generated = mix(d)
            costs[path_key(d)] = (d["window_seconds"] - a * prompt) / generated
    return a, costs


def table(args):
    """The README's cost table from the device runs (grammar off) and the per-step tokens of each row."""
    runs = [json.loads(Path(f).read_text()) for f in args.runs]
    runs = [d for d in runs if d.get("window_seconds") and not d["limits"]["grammar"]]
    a, b = token_costs(runs)
    columns = [(p, n) for p, n in PATHS if (p, n) in b]
    print(f"prefill {1e3 * a:.2f} ms/token (~{1 / a:,.0f} tok/s); per generated token: " +
          ", ".join(f"{p} N={n} {1e3 * b[(p, n)]:.1f} ms (~{1 / b[(p, n)]:,.0f} tok/s)" for p, n in columns))
    print("\n| env | row | calls/step | prompt tok/step (cached) | generated tok/step | steps | " +
          " | ".join(f"{p} N={n}" for p, n in columns) + " |")
    print("| --- " * (6 + len(columns)) + "|")
    cells = [(*Path(f).stem.split("_")[-2:], f) for f in args.tokens]  # tokens_cpu_<env>_<row>.json
    totals = [0.0] * len(columns)
    for env, row, f in sorted(cells, key=lambda c: (list(PROTOCOL_STEPS).index(c[0]), list(ROWS).index(c[1]))):
        d = json.loads(Path(f).read_text())
        step = d["per_step"]
        # the cached share is the in-process backend's (counted on CPU); our transformers backend prefills all
        uncached = lambda p: step["prompt_tokens"] * (1 - (d["cache_share"] if not p.startswith("transformers") else 0))
        hours = [PROTOCOL_STEPS[env] * (a * uncached(p) + b[(p, n)] * step["completion_tokens"]) / 3600
                 for p, n in columns]
        print(f"| {env} | {ROWS[row]} | {step['calls']:.1f} | {step['prompt_tokens']:,.0f} ({d['cache_share']:.0%}) | "
              f"{step['completion_tokens']:.0f} | {PROTOCOL_STEPS[env]:,} | "
              + " | ".join(f"{h:,.1f}" for h in hours) + " |")
        totals = [t + h for t, h in zip(totals, hours)]
    print("| " + " | ".join(["**all cells**"] + [""] * 5 + [f"**{t:,.0f}**" for t in totals]) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build libllama + llama-server from the trimmed sdist")
    b.add_argument("--src", required=True, help="the trimmed llama-cpp-python sdist (.tgz holding lcp/)")
    b.add_argument("--prefix", default="/tmp/lcp")
    b.add_argument("--cpu", action="store_true", help="no CUDA (a CPU machine: token counts only)")
    g = sub.add_parser("gguf", help="write the random Q4_K_M GGUF")
    g.add_argument("--out", required=True)
    g.add_argument("--vocab", required=True, help="llama.cpp's models/ggml-vocab-qwen2.gguf")
    g.add_argument("--tiny", action="store_true", help=f"a tiny model of the same tokenizer: {TINY}")
    sub.add_parser("bandwidth", help="print the GPU's copy bandwidth in bytes/s (run uses it)")
    r = sub.add_parser("run", help="play the agent loop for a window of time and measure")
    r.add_argument("--path", required=True, choices=["inproc", "server", "transformers"])
    r.add_argument("--n", type=int, default=1, help="episodes in flight (server: parallel slots; "
                   "transformers: rows a batch holds at most)")
    r.add_argument("--env", default="crafter", choices=["crafter", "minihack", "nethack"])
    r.add_argument("--scaffold", help="default scaffolds/<env>/v0")
    r.add_argument("--memory-model", action="store_true", help="two-model split: LOG and consultation on a "
                   "second copy of the model (inproc) or the same server")
    r.add_argument("--seconds", type=float, default=90, help="measuring window, from the first model call")
    r.add_argument("--gguf", default="/tmp/q4km.gguf")
    r.add_argument("--vocab", default="/tmp/lcp/lcp/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf")
    r.add_argument("--prefix", default="/tmp/lcp", help="where build put llama.cpp")
    r.add_argument("--ctx", type=int, default=12288, help="context per episode (llama.cpp)")
    r.add_argument("--log-turns", type=int, default=2)
    r.add_argument("--plan-turns", type=int, default=2)
    r.add_argument("--grammar", default="on", choices=["on", "off"], help="llama.cpp paths (transformers: off)")
    r.add_argument("--max-tokens", type=int, default=128, help="new tokens per call: with the grammar a cap it "
                   "stays under (use 512), without it the reply length (a random model rarely ends earlier)")
    r.add_argument("--load-4bit", action="store_true", help="transformers: bitsandbytes nf4, as eval.py --load-4bit "
                   "(the random weights are saved under --workdir once, 65 GB, then loaded and quantized)")
    r.add_argument("--tiny", action="store_true", help="the tiny model's shape (for the physical limit)")
    r.add_argument("--workdir", default=tempfile.gettempdir())
    r.add_argument("--out", required=True)
    t = sub.add_parser("table", help="GPU-hours of the protocol per env, row and path (markdown)")
    t.add_argument("--runs", nargs="+", required=True, help="device run JSONs (grammar off)")
    t.add_argument("--tokens", nargs="+", required=True, help="per-step token JSONs named ..._<env>_<row>.json")
    args = p.parse_args()
    {"build": build, "gguf": write_gguf, "run": run, "bandwidth": bandwidth, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
