"""
bench/embedded_throughput.py: the embedded model's prompt and generation tokens/s through our
llama.cpp backend (llm.LlamaCpp, as the agent calls it) vs llama-cpp-python's Llama on the same
prompts in the same order (the hardware limit). Prompts are the real calls of a trace.
Pass 1 generates 1 token (prompt processing); pass 2 generates up to --max-tokens (generation
time = pass 2 minus pass 1). Goal: ours >= 80% of the direct calls.

    python bench/embedded_throughput.py runs/<quick run>/traces/crafter/default__00.jsonl
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import automem  # noqa: E402
import llm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def direct(backend):
    """The same llama.cpp model called without our layer."""
    def call(messages, max_tokens, seed):
        t0 = time.perf_counter()
        out = backend.llm.create_chat_completion(messages, max_tokens=max_tokens, seed=seed, temperature=1.0)
        return out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"], time.perf_counter() - t0
    return call


def ours(backend):
    def call(messages, max_tokens, seed):
        t0 = time.perf_counter()
        reply = backend.chat(messages, max_tokens=max_tokens, seed=seed)
        return reply.prompt_tokens, reply.completion_tokens, time.perf_counter() - t0
    return call


def run(call, prompts, max_tokens):
    prompt_tokens = completion_tokens = 0
    t_prompt = t_total = 0.0
    for i, messages in enumerate(prompts):
        p, _, t1 = call(messages, 1, i)
        _, c, t2 = call(messages, max_tokens, i)
        prompt_tokens, completion_tokens, t_prompt, t_total = prompt_tokens + p, completion_tokens + c, t_prompt + t1, t_total + t2
    return {"prompt_tok_s": prompt_tokens / t_prompt, "gen_tok_s": completion_tokens / max(t_total - t_prompt, 1e-9)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace")
    p.add_argument("--calls", type=int, default=12, help="first N model calls of the trace")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "embedded_throughput.json"))
    args = p.parse_args()
    header, steps, _ = automem.read_trace(args.trace)
    prompts = [m for s in steps for _, _, m in automem.model_calls(header, s)][:args.calls]
    results = {}
    for name, wrap in (("direct", direct), ("ours", ours)):
        backend = llm.load("llamacpp")  # a fresh model each, so both start with an empty cache
        results[name] = run(wrap(backend), prompts, args.max_tokens)
    ratio = {k: results["ours"][k] / results["direct"][k] for k in ("prompt_tok_s", "gen_tok_s")}
    print("| path | prompt tok/s | generation tok/s |\n| --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['prompt_tok_s']:.0f} | {r['gen_tok_s']:.1f} |")
    print(f"| ours / direct | {100 * ratio['prompt_tok_s']:.0f}% | {100 * ratio['gen_tok_s']:.0f}% |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**results, "ratio": ratio, "calls": len(prompts)}, indent=2))


if __name__ == "__main__":
    main()
