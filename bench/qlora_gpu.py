"""
bench/qlora_gpu.py: QLoRA SFT on CUDA (bitsandbytes nf4 base, bf16 compute, gradient checkpointing,
paged AdamW 8-bit) on Qwen2-architecture models with random weights, offline.

  (a) end to end: a small random Qwen2 with a byte-level tokenizer and a ChatML template is trained
      through `train_lora.py sft --qlora on`; the adapter is then served 4-bit by llm.py's transformers
      backend (adapter on vs off must differ).
  (b) the Qwen2.5-32B-Instruct shape (64 layers, hidden 5120, 40 heads / 8 KV heads, FFN 27648,
      vocab 152064) built a few layers at a time: per layer count and LoRA prior, the peak GPU memory
      and the speed of QLoRA steps at seq 2048, fitted as a + b * layers and extrapolated to 64 layers.

    python bench/qlora_gpu.py --out qlora.json                        # both parts, one H100: about 5 minutes
    python bench/qlora_gpu.py --part b --layers 1 2 4 --priors crafter nethack --seq 2048 --out qlora.json

Offline needs: CUDA, torch, transformers, peft, tokenizers, and bitsandbytes (carry its wheel, e.g.
bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl, which ships a CUDA 13.0 binary). Prints a
table and writes everything measured to --out (JSON).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import recipe  # noqa: E402
import sft_data  # noqa: E402
import train_lora  # noqa: E402

QWEN25_32B = {"hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
              "num_key_value_heads": 8, "vocab_size": 152064, "max_position_embeddings": 32768, "rope_theta": 1e6,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
SMALL = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8,
         "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True}
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
GB = 2 ** 30


def byte_tokenizer():
    """A byte-level tokenizer with ChatML special tokens: no download needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def random_qwen2(path, shape, layers, tok):
    """Save a random-weight Qwen2 (bf16) with `layers` layers and the tokenizer to `path`."""
    import torch
    import transformers
    config = transformers.Qwen2Config(**{**shape, "num_hidden_layers": layers, "vocab_size": shape.get("vocab_size") or
                                         64 * ((len(tok) + 63) // 64)})
    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: seconds, even for billions of weights
        model = transformers.Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def log_rows(n=64):
    """LOG-like chat rows with a learnable pattern, in train_lora.py's data format."""
    rows = []
    for i in range(n):
        thing = ["tree", "water", "stone", "cow"][i % 4]
        rows.append({"messages": [
            {"role": "system", "content": "You keep notes in files."},
            {"role": "user", "content": f"LOG phase, step {i}. You see a {thing} {i % 7 + 1} steps to your west."},
            {"role": "assistant", "content": f"<|SEARCH|>map_notes.txt|{thing}<|END|>\n<|APPEND|>map_notes.txt|"
                                             f"step {i}: {thing} {i % 7 + 1} west<|END|>\n<|DONE|>"}],
            "meta": {"env": "crafter"}})
    return rows


def part_a(work):
    """Small random Qwen2 through `train_lora.py sft --qlora on`, then served 4-bit with the adapter by llm.py."""
    import llm
    tok = byte_tokenizer()
    model_dir, data, out = work / "small_qwen2", work / "a_data.jsonl", work / "a_adapter"
    random_qwen2(model_dir, SMALL, SMALL["num_hidden_layers"], tok)
    rows = log_rows()
    sft_data.write_jsonl(data, rows)
    cmd = [sys.executable, str(ROOT / "train_lora.py"), "sft", "--data", str(data), "--model", str(model_dir),
           "--out", str(out), "--env", "crafter", "--qlora", "on", "--rank", "16", "--alpha", "32", "--lr", "2e-3",
           "--batch", "8", "--micro-batch", "4", "--max-steps", "30", "--save-steps", "10", "--eval-examples", "16"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"ok": False, "error": (proc.stderr.strip().splitlines() or ["?"])[-1], "log_tail": proc.stderr[-3000:]}
    card = json.loads((out / "card.json").read_text())
    served = llm.load("transformers", str(model_dir), load_4bit=True, adapters={"memory": str(out)}, temperature=0)
    prompt = rows[5]["messages"][:-1]
    base, tuned = served.chat(prompt, max_tokens=24).text, served.chat(prompt, adapter="memory", max_tokens=24).text
    return {"ok": card["qlora"] and card["loss_after"] < card["loss_before"] and base != tuned,
            "seconds": round(time.time() - t0, 1), "loss_before": card["loss_before"], "loss_after": card["loss_after"],
            "steps": card["steps"], "qlora": card["qlora"], "sample_base": base, "sample_adapter": tuned,
            "target": rows[5]["messages"][-1]["content"][:60]}


def measure(model_dir, prior, seq, steps):
    """Peak memory and step times of QLoRA on one model folder with one env's LoRA prior."""
    import bitsandbytes as bnb
    import peft
    import torch
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    _, net = train_lora.load_base(model_dir, qlora=True)
    cfg = recipe.lora_config(prior, {})
    net.gradient_checkpointing_enable({"use_reentrant": False})  # as train_lora.py sft's SFTTrainer sets the model up
    net.enable_input_require_grads()
    net = peft.get_peft_model(net, train_lora.lora_peft_config(cfg))
    for p in net.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # TRL's QLoRA: the adapter in bf16
    net.train()  # gradient checkpointing acts in training mode only
    loaded = torch.cuda.memory_allocated()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = bnb.optim.PagedAdamW8bit(params, lr=cfg["lr"])
    ids = torch.randint(0, net.config.vocab_size, (1, seq), device="cuda")
    fwd_bwd, optim = [], []
    for i in range(steps + 1):  # the first step warms up (kernels, allocator, paged states)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i:
            fwd_bwd.append(t1 - t0)
            optim.append(time.perf_counter() - t1)
    row = {"prior": prior, "rank": cfg["rank"], "targets": cfg["targets"], "layers": net.config.num_hidden_layers,
           "trainable_params": sum(p.numel() for p in params), "loaded_gb": loaded / GB,
           "peak_alloc_gb": torch.cuda.max_memory_allocated() / GB, "peak_reserved_gb": torch.cuda.max_memory_reserved() / GB,
           "fwd_bwd_s": sorted(fwd_bwd)[len(fwd_bwd) // 2], "optim_s": sorted(optim)[len(optim) // 2]}
    row["tokens_per_s"] = seq / row["fwd_bwd_s"]
    del net, opt, params, loss
    torch.cuda.empty_cache()
    return row


def fit(xs, ys, x):
    """Least-squares line through (xs, ys), evaluated at x."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((a - mx) * (c - my) for a, c in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return my + b * (x - mx)


def part_b(work, layers, priors, seq, steps):
    """The 32B shape with a few layers at a time; one saved model, per-count config folders linking its weights."""
    tok = byte_tokenizer()
    full = work / "qwen2_32b_shape"
    random_qwen2(full, QWEN25_32B, max(layers), tok)
    rows = []
    for n in sorted(layers):
        d = work / f"qwen2_32b_shape_{n}"  # from_pretrained reads only the first n layers' weights
        d.mkdir(exist_ok=True)
        for f in full.iterdir():
            if f.name != "config.json" and not (d / f.name).exists():
                os.symlink(f, d / f.name)
        config = json.loads((full / "config.json").read_text())
        config["num_hidden_layers"] = n
        if "layer_types" in config:  # transformers 5 checks one entry per layer
            config["layer_types"] = config["layer_types"][:n]
        (d / "config.json").write_text(json.dumps(config))
        for prior in priors:
            rows.append(measure(d, prior, seq, steps))
            print(f"  measured {prior} x {n} layers: {rows[-1]['peak_alloc_gb']:.1f} GiB, "
                  f"{rows[-1]['tokens_per_s']:.0f} tok/s", flush=True)
    full_layers = QWEN25_32B["num_hidden_layers"]
    extrapolated = {}
    for prior in priors:
        mine = [r for r in rows if r["prior"] == prior]
        xs = [r["layers"] for r in mine]
        est = {k: fit(xs, [r[k] for r in mine], full_layers)
               for k in ("peak_alloc_gb", "peak_reserved_gb", "fwd_bwd_s", "optim_s", "trainable_params", "loaded_gb")}
        est["tokens_per_s"] = seq / est["fwd_bwd_s"]
        est.update(layers=full_layers, prior=f"{prior} fit", rank=mine[0]["rank"], targets=mine[0]["targets"])
        extrapolated[prior] = est
    return {"shape": QWEN25_32B, "seq": seq, "steps": steps, "rows": rows, "extrapolated": extrapolated}


def table(result):
    lines = []
    a = result.get("part_a")
    if a:
        lines.append(f"(a) small random Qwen2 through train_lora.py sft --qlora on: {'ok' if a['ok'] else 'FAILED'}"
                     + (f", loss {a['loss_before']:.3f} -> {a['loss_after']:.3f} in {a['steps']} steps, {a['seconds']} s"
                        if "loss_before" in a else f": {a.get('error')}"))
    b = result.get("part_b")
    if b:
        lines.append(f"(b) Qwen2.5-32B shape, QLoRA nf4, seq {b['seq']}, batch 1, gradient checkpointing, paged AdamW 8-bit")
        lines.append(f"{'prior':12s} {'rank':>4s} {'targets':10s} {'layers':>6s} {'trainable':>11s} {'loaded GiB':>10s} "
                     f"{'peak GiB':>9s} {'reserved':>9s} {'tok/s':>8s} {'fwd+bwd s':>9s} {'optim s':>8s}")
        for r in b["rows"] + list(b["extrapolated"].values()):
            lines.append(f"{r['prior']:12s} {r['rank']:4d} {r['targets']:10s} {r['layers']:6d} {r['trainable_params'] / 1e6:10.1f}M "
                         f"{r['loaded_gb']:10.2f} {r['peak_alloc_gb']:9.2f} {r['peak_reserved_gb']:9.2f} {r['tokens_per_s']:8.0f} "
                         f"{r['fwd_bwd_s']:9.3f} {r['optim_s']:8.3f}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--part", choices=["a", "b", "both"], default="both")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4], help="(b) layer counts to measure")
    p.add_argument("--priors", nargs="+", default=["crafter", "nethack"], choices=list(recipe.PRIORS),
                   help="(b) LoRA priors: crafter = rank 256 on attention, nethack = rank 256 on all linear layers")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3, help="(b) timed steps per point (after one warm-up step)")
    p.add_argument("--work", help="scratch folder for the random models (default: a temporary folder)")
    args = p.parse_args()
    import torch
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU: run this on a GPU machine")
    try:
        import bitsandbytes
    except ImportError:
        sys.exit("error: bitsandbytes is missing: pip install bitsandbytes (offline: carry its manylinux wheel)")
    import peft
    import transformers
    result = {"device": torch.cuda.get_device_name(), "versions": {
        m.__name__: m.__version__ for m in (torch, transformers, peft, bitsandbytes)}}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        if args.part in ("a", "both"):
            result["part_a"] = part_a(work)
            print(table({"part_a": result["part_a"]}), flush=True)
        if args.part in ("b", "both"):
            result["part_b"] = part_b(work, args.layers, args.priors, args.seq, args.steps)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"device: {result['device']}; {result['versions']}")
    print(table(result))
    if "part_a" in result and not result["part_a"]["ok"]:
        sys.exit(f"error: part (a) failed: {result['part_a'].get('error') or 'see ' + args.out}")


if __name__ == "__main__":
    main()
