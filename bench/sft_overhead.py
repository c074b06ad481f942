"""
bench/sft_overhead.py: where an optimizer step of loop 2's miniature SFT goes. On the H200, `train_lora.py sft`
trained the embedded SmolLM2-135M (LoRA rank 128 on all linear layers, batch 16 of micro-batch 1, ~3.5k-token
chats, gradient checkpointing, bf16) at 7.9-9.1 s a step with one CPU core busy and the GPU 8-25% used. This
times the same step without TRL and without weights or data to carry (a random model of SmolLM2-135M's shape,
random token ids of the chats' length): if it is fast, the time goes to TRL's trainer; if slow, to the model's
many small kernels (PEFT's LoRA layers launch several per linear), and the variants show what helps.

    python bench/sft_overhead.py --out sft_overhead.json            # on the GPU box: about 2 minutes
    python bench/sft_overhead.py --tiny --steps 1                   # a CPU check that it runs

Variants: as train_lora.py (micro-batch 1, checkpointing on); checkpointing off; micro-batch 8 (same batch).
Per variant: seconds per optimizer step (after one warm-up step), GPU busy share (CUDA time over wall time, from
torch.profiler over one step; over 100% where kernels overlap), kernel launches (cudaLaunchKernel and cuLaunchKernel
calls; their *Ex variants are not counted, so a lower bound) and the CPU ops that took longest.
"""
import argparse
import json
import time

import torch

SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
                "max_position_embeddings": 8192}
TINY = {**SMOLLM2_135M, "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2}
VARIANTS = {"as train_lora.py": (1, True), "checkpointing off": (1, False), "micro-batch 8": (8, True)}


def lora_model(shape, checkpointing, device, dtype):
    import peft
    import transformers
    torch.manual_seed(0)
    with torch.device(device):
        net = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).to(dtype)
    if checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        net.enable_input_require_grads()
    config = peft.LoraConfig(r=128, lora_alpha=256, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return peft.get_peft_model(net, config)


def optimizer_step(net, opt, batch, micro, seq, vocab, device):
    for _ in range(batch // micro):
        ids = torch.randint(0, vocab, (micro, seq), device=device)
        net(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()


def measure(shape, micro, checkpointing, steps, batch, seq, device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    net = lora_model(shape, checkpointing, device, dtype)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=5e-5)
    step = lambda: optimizer_step(net, opt, batch, micro, seq, shape["vocab_size"], device)
    step()  # warm-up: allocator, kernels
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events) if device == "cuda" else 0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"seconds_per_step": seconds, "gpu_busy_share": gpu_us / 1e6 / wall if device == "cuda" else None,
            "kernel_launches": sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel")),
            "top_cpu_ops_ms": {e.key: round(e.self_cpu_time_total / 1e3, 1) for e in top}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per variant (after one warm-up)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=3500, help="tokens per chat (the MiniHack data's are ~3.5k)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model of the same vocabulary, short chats (CPU)")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape, seq = (TINY, 64) if args.tiny else (SMOLLM2_135M, args.seq)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "seq": seq, "batch": args.batch,
               "lora": "rank 128, all linear", "variants": {}}
    for name, (micro, checkpointing) in VARIANTS.items():
        results["variants"][name] = r = measure(shape, micro, checkpointing, args.steps, args.batch, seq, device)
        print(f"{name:20s} {r['seconds_per_step']:6.2f} s/step  GPU busy {r['gpu_busy_share'] or 0:.0%}  "
              f"{r['kernel_launches']} launches  top CPU ops (ms): {r['top_cpu_ops_ms']}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
