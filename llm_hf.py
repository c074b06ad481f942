"""
llm_hf.py: llm.py's transformers backend (llm.load("transformers", ...)): a hub id, a local folder or a .gguf
file in Hugging Face transformers, with peft LoRA adapters and batched calls from several threads.

    import llm_hf
    tok, net = llm_hf.load_hf("Qwen/Qwen2.5-32B-Instruct", torch.bfloat16, load_4bit=True)   # what SFT trains on
    model = llm_hf.Transformers("Qwen/Qwen2.5-32B-Instruct", adapters={"memory": "adapters/x"}, max_batch=8)
"""
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from llm_core import MAX_TOKENS, N_CTX, NO_GRAMMAR, SEED, TEMPERATURE, Reply, cut_at_stop, fit_messages, gguf_path, reply_budget

BATCH_WAIT = 0.05       # transformers: seconds a batch waits for max_batch calls before it runs with fewer


def load_hf(model, dtype, load_4bit=False):
    """(tokenizer, model) with transformers from a hub id, a local directory or a .gguf file
    (dequantized), in torch `dtype`; load_4bit: bitsandbytes nf4 with bf16 compute on GPU 0.
    An unknown id, or no network, is a ValueError naming the fix."""
    import torch
    import transformers
    src, kw = str(model), {"dtype": dtype}
    if src.endswith(".gguf"):
        src, kw["gguf_file"] = str(Path(gguf_path(src)).parent), Path(src).name
        if hasattr(transformers, "GgufConfig"):  # transformers 5 may keep GGUF blocks packed, a model Trainer refuses
            kw["quantization_config"] = transformers.GgufConfig(dequantize=True)
    if load_4bit:
        kw["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kw["device_map"] = {"": 0}
    try:
        tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=kw.get("gguf_file"))
        net = transformers.AutoModelForCausalLM.from_pretrained(src, **kw)
    except OSError as e:  # what from_pretrained raises for an unknown id or no network
        raise ValueError(f"cannot load {str(model)!r} ({str(e).splitlines()[0][:120]}): pass a local model "
                         "directory or a .gguf file (offline, set HF_HUB_OFFLINE=1)") from None
    return tok, net


class RowEnds:
    """generate's stopping criterion for a left-padded batch whose rows end on their own: row i is done at the first
    step where it has limits[i] new tokens, its last token is an end-of-turn id, or its text ends with one of
    stops[i] (transformers' StopStringCriteria, one per distinct stop list). `at` keeps each row's length then:
    generate goes on filling finished rows with the pad token until every row is done."""

    def __init__(self, start, limits, stops, eos, tok, device):
        import torch
        import transformers
        self.start, self.eos = start, torch.tensor(eos, device=device)
        self.at = torch.tensor(limits, device=device)
        self.checks = [(transformers.StopStringCriteria(tok, list(s)), [i for i, t in enumerate(stops) if t == s])
                       for s in dict.fromkeys(stops) if s]

    def __call__(self, input_ids, scores, **kwargs):
        import torch
        n = input_ids.shape[1] - self.start
        done = (n >= self.at) | torch.isin(input_ids[:, -1], self.eos)
        for check, rows in self.checks:
            done[rows] |= check(input_ids[rows], scores)
        self.at = torch.where(done, torch.clamp(self.at, max=n), self.at)
        return done


class RowSampler:
    """A logits processor that draws each row's next token from softmax(logits / temperature) with that row's own
    generator (seeded with its call's seed) and leaves only that token, which greedy decoding then picks. So a
    sampled reply depends on its seed alone, not on which calls share its batch (generate's own sampling draws a
    whole batch from one generator)."""

    def __init__(self, seeds, temperature, device):
        import torch
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        picks = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        return torch.full_like(scores, float("-inf")).scatter_(1, picks[:, None], 0.0)


class Transformers:
    """Hugging Face transformers: a hub id, a local directory or a .gguf file (loaded dequantized).
    dtype "fp32" or "bf16" (default: bf16 on CUDA, fp32 on CPU); load_4bit=True is bitsandbytes
    nf4 (CUDA only). adapters={name: path} loads peft LoRA adapters on the one base model.

    Batching (max_batch > 1): calls from several threads (eval.py --workers N) share one `generate`.
    The thread whose call finds the GPU free runs the next batch: it waits up to batch_wait seconds
    for max_batch calls to be waiting (not at all if a call was left out of the last batch), then
    takes up to max_batch of them with the adapter of the oldest (peft switches adapters per batch,
    not per row), left-pads them, and runs one generate in which each row ends on its own (RowEnds:
    its max_tokens, stop strings, end of turn). Each call samples with its own seeded generator
    (RowSampler), so its reply does not depend on its batch: on CPU in fp32, batched replies equal
    single ones (tests). On GPU, and in bf16, a batch runs
    other kernels than one row (other reduction orders), so logits differ in the last bits and a
    reply can part from the single-call one where two tokens nearly tie. Padding costs prefill
    work: every row is computed at the longest prompt's length. max_batch=1 (the default) is one
    call at a time, with no wait."""
    GRAMMAR = False

    def __init__(self, model=None, *, dtype=None, load_4bit=False, adapters=None, n_ctx=None,
                 seed=SEED, temperature=TEMPERATURE, max_tokens=MAX_TOKENS, max_batch=1, batch_wait=BATCH_WAIT):
        import torch
        import transformers
        self.model_id = model = str(model or gguf_path(None))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = dtype or ("bf16" if self.device == "cuda" else "fp32")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype {dtype!r}: use 'fp32' or 'bf16' (or load_4bit=True)")
        self.load_4bit, self.adapters = load_4bit, dict(adapters or {})
        self.seed, self.temperature, self.max_tokens = seed, temperature, max_tokens
        if load_4bit and self.device != "cuda":
            raise ValueError("load_4bit=True needs a CUDA GPU (bitsandbytes nf4): on CPU drop load_4bit "
                             "(fp32/bf16), or use the llamacpp backend with a quantized GGUF")
        self.tok, self.net = load_hf(model, torch.bfloat16 if self.dtype == "bf16" else torch.float32, load_4bit)
        if not load_4bit:
            self.net.to(self.device)
        self.eos = self.net.generation_config.eos_token_id or self.tok.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        # generate fills the fields a config leaves at their defaults from the model's generation config
        # (Qwen2.5-Instruct's: sampling on, temperature 0.7, top-p 0.8, top-k 20, repetition penalty 1.05):
        # the model keeps only its end of turn, so greedy is greedy and sampling is RowSampler's alone
        self.net.generation_config = transformers.GenerationConfig(eos_token_id=self.eos, pad_token_id=self.pad)
        if self.adapters:
            from peft import PeftModel
            (first, path), *rest = self.adapters.items()
            self.net = PeftModel.from_pretrained(self.net, path, adapter_name=first)
            for name, path in rest:
                self.net.load_adapter(path, adapter_name=name)
        self.net.eval()
        self.n_ctx = n_ctx or getattr(self.net.config, "max_position_embeddings", N_CTX)
        self.max_batch, self.batch_wait = max_batch, batch_wait
        self.tok_lock = threading.Lock()  # a fast tokenizer may not be called from two threads at once
        self.turn = threading.Condition()  # guards waiting and running
        self.waiting, self.running = [], False  # calls queued for the model, oldest first; a batch under way

    def tokens(self, messages):
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False).input_ids

    def chat(self, messages, *, adapter=None, max_tokens=None, stop=None, seed=None, grammar=None):
        if grammar:
            raise ValueError(NO_GRAMMAR.format(backend="transformers"))
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"unknown adapter {adapter!r}: load it with adapters={{{adapter!r}: path}} "
                             f"(loaded: {', '.join(self.adapters) or 'none'})")
        want = max_tokens or self.max_tokens
        t0 = time.perf_counter()
        with self.tok_lock:
            msgs = fit_messages(messages, lambda m: len(self.tokens(m)), reply_budget(self.n_ctx, want))
            ids = self.tokens(msgs)
        call = {"ids": ids, "adapter": adapter, "limit": min(want, self.n_ctx - len(ids)), "stop": tuple(stop or ()),
                "seed": self.seed if seed is None else seed}
        with self.turn:
            self.waiting.append(call)
            self.turn.notify_all()  # a thread gathering a batch counts this call
        while True:
            with self.turn:
                while self.running and "text" not in call and "error" not in call:
                    self.turn.wait()
                if "text" in call or "error" in call:
                    break
                self.running = True  # this thread runs the next batch
                deadline = time.monotonic() + self.batch_wait
                while (len(self.waiting) < self.max_batch and not any("passed" in c for c in self.waiting)
                       and time.monotonic() < deadline):
                    self.turn.wait(deadline - time.monotonic())
                batch = [c for c in self.waiting if c["adapter"] == self.waiting[0]["adapter"]][:self.max_batch]
                self.waiting = [c for c in self.waiting if not any(c is b for b in batch)]
                for c in self.waiting:
                    c["passed"] = True  # left out of this batch (adapter, max_batch): the next one starts at once
            try:
                self.generate(batch)
            except Exception as e:  # each caller in the batch raises it (Ctrl-C reaches the main thread only)
                for c in batch:
                    c["error"] = e
            finally:
                with self.turn:
                    self.running = False
                    self.turn.notify_all()
        if "error" in call:
            raise call["error"]
        return Reply(call["text"], len(ids), call["completion_tokens"], time.perf_counter() - t0)

    def generate(self, batch):
        """One generate for calls of one adapter; sets each call's text and completion_tokens."""
        import torch
        import transformers
        width = max(len(c["ids"]) for c in batch)
        pads = [width - len(c["ids"]) for c in batch]
        ids = torch.tensor([[self.pad] * p + c["ids"] for p, c in zip(pads, batch)], device=self.net.device)
        mask = torch.tensor([[0] * p + [1] * len(c["ids"]) for p, c in zip(pads, batch)], device=self.net.device)
        eos = self.eos if isinstance(self.eos, list) else [self.eos]
        ends = RowEnds(width, [c["limit"] for c in batch], [c["stop"] for c in batch], eos, self.tok, self.net.device)
        seeds = [c["seed"] for c in batch]
        sample = [RowSampler(seeds, self.temperature, self.net.device)] if self.temperature > 0 else []
        config = transformers.GenerationConfig(max_new_tokens=max(c["limit"] for c in batch), do_sample=False,
                                               eos_token_id=self.eos, pad_token_id=self.pad)
        adapter = batch[0]["adapter"]
        if adapter:
            self.net.set_adapter(adapter)
        with torch.no_grad(), self.net.disable_adapter() if self.adapters and not adapter else nullcontext():
            out = self.net.generate(ids, attention_mask=mask, generation_config=config,
                                    logits_processor=transformers.LogitsProcessorList(sample),
                                    stopping_criteria=transformers.StoppingCriteriaList([ends]))
        for c, row, n in zip(batch, out[:, width:].tolist(), ends.at.tolist()):
            new = row[:n]
            while new and new[-1] in eos:  # the end-of-turn token is not part of the reply
                new.pop()
            c["completion_tokens"] = len(new)
            c["text"] = cut_at_stop(self.tok.decode(new, skip_special_tokens=True), c["stop"])

    def describe(self):
        import transformers
        return {"backend": "transformers", "model": self.model_id, "dtype": self.dtype, "load_4bit": self.load_4bit,
                "adapters": self.adapters, "device": self.device, "n_ctx": self.n_ctx, "seed": self.seed,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "max_batch": self.max_batch,
                "batch_wait": self.batch_wait, "transformers": transformers.__version__}
