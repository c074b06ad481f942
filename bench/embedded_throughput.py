"""
bench/embedded_throughput.py: the embedded model's prompt and generation tokens/s through our
llama.cpp backend (llm.LlamaCpp, as the agent calls it) vs llama-cpp-python's Llama on the same
prompts with the same seeds and sampling settings (the hardware limit). Prompts are the real calls
of a trace; every call starts from an empty KV cache, so both paths do the same work. Each prompt
runs direct, ours, ours, direct (ABBA), so a shared machine's load drift hits both paths alike.
Prompt and generation speed come from llama.cpp's own timers; "end to end" is tokens/s including
our layer (templating, token counting, trimming). Goal: ours >= 80% of the direct calls.
A third path, "ours + grammar", samples under the op grammar (memory_fs.grammar for the call's
routine): the price of --grammar on (direct, ours, grammar, grammar, ours, direct per prompt).

    python bench/embedded_throughput.py runs/<quick run>/traces/crafter/default__00.jsonl
"""
import argparse
import json
import sys
import time
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import trace_format  # noqa: E402
import llm  # noqa: E402
import memory_fs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}  # as llm.LlamaCpp


def direct(backend, messages, max_tokens, seed, grammar):
    out = backend.llm.create_chat_completion(messages, max_tokens=max_tokens, seed=seed, **SAMPLING)
    return out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def ours(backend, messages, max_tokens, seed, grammar):
    reply = backend.chat(messages, max_tokens=max_tokens, seed=seed)
    return reply.prompt_tokens + reply.completion_tokens


def constrained(backend, messages, max_tokens, seed, grammar):
    reply = backend.chat(messages, max_tokens=max_tokens, seed=seed, grammar=grammar)
    return reply.prompt_tokens + reply.completion_tokens


def op_grammar(header, routine):
    """The op grammar of a v0 scaffold's routine on the episode's initial files."""
    if routine == "plan":
        return memory_fs.grammar(memory_fs.READ_OPS + ("ACTION",), files=header["files"], actions=header["actions"])
    return memory_fs.grammar(memory_fs.READ_OPS + memory_fs.WRITE_OPS + ("DONE",), files=header["files"])


def measure(totals, call, backend, messages, max_tokens, seed, grammar):
    """One call from an empty KV cache; adds llama.cpp's timers and the wall time to totals."""
    backend.llm.reset()
    backend.prompt = []  # our layer's reuse record: empty, like the direct path's cache
    llama_cpp.llama_perf_context_reset(backend.llm.ctx)
    t0 = time.perf_counter()
    totals["tokens"] += call(backend, messages, max_tokens, seed, grammar)
    totals["wall_s"] += time.perf_counter() - t0
    perf = llama_cpp.llama_perf_context(backend.llm.ctx)
    totals["prompt_tokens"] += perf.n_p_eval
    totals["prompt_ms"] += perf.t_p_eval_ms
    totals["gen_tokens"] += perf.n_eval
    totals["gen_ms"] += perf.t_eval_ms


def rates(totals):
    return {**totals, "prompt_tok_s": 1000 * totals["prompt_tokens"] / totals["prompt_ms"],
            "gen_tok_s": 1000 * totals["gen_tokens"] / max(totals["gen_ms"], 1e-9),
            "wall_tok_s": totals["tokens"] / totals["wall_s"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace")
    p.add_argument("--calls", type=int, default=12, help="first N model calls of the trace")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "embedded_throughput.json"))
    args = p.parse_args()
    header, steps, _ = trace_format.read_trace(args.trace)
    prompts = [(r, m) for s in steps for r, _, m in trace_format.model_calls(header, s)][:args.calls]
    backend = llm.load("llamacpp")
    paths = {"direct": direct, "ours": ours, "ours + grammar": constrained}
    totals = {name: dict.fromkeys(("prompt_tokens", "prompt_ms", "gen_tokens", "gen_ms", "tokens", "wall_s"), 0)
              for name in paths}
    for i, (routine, messages) in enumerate(prompts):
        grammar = op_grammar(header, routine)
        for name in list(paths) + list(paths)[::-1]:
            measure(totals[name], paths[name], backend, messages, args.max_tokens, i, grammar)
    results = {name: rates(t) for name, t in totals.items()}
    keys = ("prompt_tok_s", "gen_tok_s", "wall_tok_s")
    ratio = {k: results["ours"][k] / results["direct"][k] for k in keys}
    print("| path | prompt tok/s | generation tok/s | end to end tok/s |\n| --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['prompt_tok_s']:.0f} | {r['gen_tok_s']:.1f} | {r['wall_tok_s']:.0f} |")
    print("| ours / direct | " + " | ".join(f"{100 * ratio[k]:.0f}%" for k in keys) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**results, "ratio": ratio, "calls": len(prompts)}, indent=2))


if __name__ == "__main__":
    main()
