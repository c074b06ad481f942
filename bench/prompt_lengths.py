"""
bench/prompt_lengths.py: how many model calls of a run sent a prompt longer than a context window?
Server runs (bench/llama_runs.sh) give each slot 32,768 tokens, where the in-process llamacpp backend
cuts every prompt to its 8,192-token window; this counts the calls that the cut would have changed.

    python bench/prompt_lengths.py runs/table/*              # window 8,192 (the embedded model's)
    python bench/prompt_lengths.py runs/table/* --window 4096
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import trace_format  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("runs", nargs="+", help="run folders (runs/<name>)")
p.add_argument("--window", type=int, default=8192, help="context window in tokens")
args = p.parse_args()
print(f"| run | calls | prompts over {args.window:,} tokens | longest prompt |")
print("|---|---:|---:|---:|")
for run in args.runs:
    lengths = [turn["prompt_tokens"] for path in sorted(Path(run).glob("traces/**/*.jsonl"))
               for header, steps, _ in [trace_format.read_trace(path)] for step in steps
               for _, turn, _ in trace_format.model_calls(header, step)]
    over = sum(n > args.window for n in lengths)
    print(f"| {Path(run).name} | {len(lengths):,} | {over:,} ({over / max(len(lengths), 1):.1%}) | "
          f"{max(lengths, default=0):,} |")
