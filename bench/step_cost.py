"""
bench/step_cost.py: the cost side of the paper's table. Seconds, LLM calls and prompt/completion
tokens per env step for the memory agent (v0, free and grammar-constrained replies) vs the
sliding-window and chain-of-thought baselines, with the embedded model, through eval.py (one
episode, a few steps, the quick limits, one task per env).

    python bench/step_cost.py --env all
    python bench/step_cost.py --env crafter --max-steps 8
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_TASK = {"crafter": "default", "minihack": "MiniHack-MazeWalk-9x9-v0", "nethack": "NetHackChallenge-v0"}
AGENTS = {"memory": [], "memory+grammar": ["--grammar", "on"], "window": ["--agent", "window"],
          "cot": ["--agent", "cot"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="all", choices=["all", *FIRST_TASK])
    p.add_argument("--max-steps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "step_cost.json"))
    args = p.parse_args()
    rows = []
    for env in FIRST_TASK if args.env == "all" else [args.env]:
        for agent, flags in AGENTS.items():
            name = f"bench-step-cost-{env}-{agent.replace('+', '-')}-{args.max_steps}"
            subprocess.run([sys.executable, str(ROOT / "eval.py"), "--env", env, *flags, "--quick", "--no-replay",
                            "--task", FIRST_TASK[env], "--max-steps", str(args.max_steps), "--run-name", name],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            b = json.loads((ROOT / "runs" / name / "results.json").read_text())["envs"][env]["behaviour"]
            rows.append({"env": env, "agent": agent, **{k: b[k] for k in (
                "seconds_per_step", "llm_calls_per_step", "input_tokens_per_step", "output_tokens_per_step")}})
    print("| env | agent | s/step | calls/step | prompt tok/step | completion tok/step |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['env']} | {r['agent']} | {r['seconds_per_step']:.1f} | {r['llm_calls_per_step']:.2f} | "
              f"{r['input_tokens_per_step']:.0f} | {r['output_tokens_per_step']:.0f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
