"""
bench/gpu_agent.py: the paper's serving path on one GPU, offline. A Qwen2-architecture model
(the Qwen2.5-0.5B shape, random weights, byte-level tokenizer) is loaded 4-bit nf4 by llm.py's
transformers backend with a LoRA adapter, and the memory agent plays a few Crafter steps through
eval.py in the two-model setting (adapter for LOG and memory consultation, base for the action).
Reports GPU memory, prompt/generation tokens per second and the adapter's effect.

    python bench/gpu_agent.py --out gpu_agent.json      # needs CUDA, bitsandbytes, peft; about 2 minutes
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import eval as evaluation  # noqa: E402
import qlora_gpu  # noqa: E402
import run_folder  # noqa: E402
import trace_format  # noqa: E402
import train_lora  # noqa: E402

QWEN25_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2,
              "max_position_embeddings": 32768, "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
LAYERS = 24


def make_adapter(model_dir, out):
    """A LoRA adapter on the attention projections, initialised non-zero so that it changes the output."""
    import peft
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    config = peft.LoraConfig(r=16, lora_alpha=32, target_modules=train_lora.ATTENTION,
                             init_lora_weights=False, task_type="CAUSAL_LM")
    peft.get_peft_model(model, config).save_pretrained(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    import torch
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU: run this on a GPU machine")
    result = {"device": torch.cuda.get_device_name()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = qlora_gpu.byte_tokenizer()
        qlora_gpu.random_qwen2(tmp / "qwen2", QWEN25_05B, LAYERS, tok)
        make_adapter(tmp / "qwen2", tmp / "adapter")
        torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        evaluation.main(["--env", "crafter", "--backend", "transformers", "--model", str(tmp / "qwen2"), "--load-4bit",
                         "--memory-adapter", str(tmp / "adapter"), "--episodes", "1", "--max-steps", str(args.steps),
                         "--log-turns", "2", "--plan-turns", "2", "--max-tokens", str(args.max_tokens),
                         "--runs-dir", str(tmp / "runs"), "--run-name", "gpu", "--no-replay"])
        result["eval_seconds"] = round(time.time() - t0, 1)
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
        job = {"env": "crafter", "task": "default", "episode": 0}
        header, steps, end = trace_format.read_trace(run_folder.trace_path(tmp / "runs" / "gpu", job))
        calls = [t for s in steps for _, t, _ in trace_format.model_calls(header, s)]
        result.update({
            "steps": len(steps), "calls": len(calls), "models": sorted({t["model"] for t in calls}),
            "prompt_tokens": sum(t["prompt_tokens"] for t in calls),
            "completion_tokens": sum(t["completion_tokens"] for t in calls),
            "llm_seconds": sum(t["seconds"] for t in calls),
            "actions": [s["action"] for s in steps],
        })
        result["tokens_per_s"] = (result["prompt_tokens"] + result["completion_tokens"]) / result["llm_seconds"]
        result["completion_tokens_per_s"] = result["completion_tokens"] / result["llm_seconds"]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
