"""
bench/prefix_cache.py: how much of each model call's prompt a prefix cache (vLLM's, llama.cpp's)
can reuse: the share of its prompt tokens identical to a prefix of the previous call of the same
routine (LOG to LOG, PLAN to PLAN), tokenized with the embedded model's chat template.
Goal: >= 70%. Reads traces; without arguments it runs the three quick evals first (or reuses them).

    python bench/prefix_cache.py                          # quick runs of crafter, minihack, nethack
    python bench/prefix_cache.py runs/x/traces/crafter/default__00.jsonl
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import trace_format  # noqa: E402
import llm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def reuse(trace, backend):
    """(reusable tokens, prompt tokens) per routine over one trace."""
    header, steps, _ = trace_format.read_trace(trace)
    last, totals = {}, {}
    for step in steps:
        for routine, _, messages in trace_format.model_calls(header, step):
            tokens = backend.tokens(messages)
            shared = llm.common_prefix(tokens, last.get(routine, []))
            reused, total = totals.get(routine, (0, 0))
            totals[routine] = (reused + shared, total + len(tokens))
            last[routine] = tokens
    return totals


def quick_traces():
    traces = []
    for env in ("crafter", "minihack", "nethack"):
        subprocess.run([sys.executable, str(ROOT / "eval.py"), "--env", env, "--quick"], check=True, cwd=ROOT)
        config = json.loads(max((ROOT / "runs").glob(f"{env}-memory-*quick/config.json"), key=lambda p: p.stat().st_mtime).read_text())
        traces += sorted((ROOT / "runs" / config["run_name"] / "traces" / env).glob("*.jsonl"))
    return traces


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("traces", nargs="*")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "prefix_cache.json"))
    args = p.parse_args()
    traces = [Path(t) for t in args.traces] or quick_traces()
    backend = llm.load("llamacpp", n_ctx=512)  # the tokenizer and chat template only
    rows = []
    for trace in traces:
        for routine, (reused, total) in reuse(trace, backend).items():
            rows.append({"trace": str(trace), "routine": routine, "reused_tokens": reused, "prompt_tokens": total,
                         "share": reused / total if total else 0.0})
    print("| trace | routine | prompt tokens | reusable |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {Path(r['trace']).parent.name}/{Path(r['trace']).name} | {r['routine']} | {r['prompt_tokens']} | {100 * r['share']:.1f}% |")
    reused, total = sum(r["reused_tokens"] for r in rows), sum(r["prompt_tokens"] for r in rows)
    print(f"overall: {100 * reused / max(total, 1):.1f}% of {total} prompt tokens reusable")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "overall": reused / max(total, 1)}, indent=2))


if __name__ == "__main__":
    main()
