"""
bench/jail_cost.py: what running a scaffold's hooks in the jail (jail.py) costs per env step, against
the same hooks in-process. One episode per setting on real games with a scripted agent (no model
cost: the agent's seconds are prompt building, memory ops and hooks), the newest shipped scaffold of
each env; also the worker's cold start, and whether both settings wrote the same trace.

    python bench/jail_cost.py                     # crafter, minihack, nethack; 40 steps each
    python bench/jail_cost.py --env crafter --steps 100
"""
import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import automem  # noqa: E402
import envs  # noqa: E402
import llm  # noqa: E402
import scaffold_spec  # noqa: E402

FIRST_TASK = {"crafter": "default", "minihack": "MiniHack-MazeWalk-9x9-v0", "nethack": "NetHackChallenge-v0"}


def newest(env):
    return max((d for d in (ROOT / "scaffolds" / env).glob("v*") if d.name[1:].isdigit()), key=lambda d: int(d.name[1:]))


def episode(scaffold_dir, env, steps, seed, jailed, work):
    """(agent seconds per step, hook calls, worker start seconds or None, trace text without times)."""
    scaffold = scaffold_spec.load_scaffold(scaffold_dir, jailed=jailed)
    calls = [0]
    if jailed:
        t0 = time.perf_counter()
        scaffold["hooks"].start()  # cold start: bwrap, Python, imports, hooks.py
        start = time.perf_counter() - t0
    else:
        def counted(fn):
            def call(*args):
                calls[0] += 1
                return fn(*args)
            return call
        scaffold["hooks"] = {name: counted(fn) for name, fn in scaffold["hooks"].items()}
        start = None
    game = envs.make(env, FIRST_TASK[env], max_steps=steps)
    reply = f"<|DONE|> <|ACTION|>{game.actions[1]}<|END|>"  # LOG: done; PLAN: always the same action
    agent = automem.Agent(scaffold, llm.load("scripted", replies=lambda messages: reply), game, work / "memory")
    trace = work / "trace.jsonl"
    try:
        automem.run_episode(agent, game, seed, trace, max_steps=steps)
    finally:
        game.close()
        if jailed:
            calls[0] = scaffold["hooks"].calls
            scaffold["hooks"].close()
    lines = trace.read_text().splitlines()
    seconds = [json.loads(line)["agent_seconds"] for line in lines if '"type": "step"' in line]
    return seconds, calls[0], start, re.sub(r'"(seconds|agent_seconds)": [0-9.e-]+', "", trace.read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="all", choices=["all", *FIRST_TASK])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "jail_cost.json"))
    args = p.parse_args()
    rows = []
    for env in FIRST_TASK if args.env == "all" else [args.env]:
        scaffold_dir = newest(env)
        with tempfile.TemporaryDirectory() as tmp:
            runs = {}
            for jailed in (False, True, False, True):  # twice each, interleaved: the machine's load drifts
                runs.setdefault(jailed, []).append(episode(scaffold_dir, env, args.steps, args.seed, jailed,
                                                           Path(tmp) / f"{jailed}{len(runs.get(jailed, []))}"))
        inproc = [s for r in runs[False] for s in r[0]]
        jail_s = [s for r in runs[True] for s in r[0]]
        steps = len(runs[True][0][0])
        calls = runs[True][0][1] / steps
        row = {"env": env, "scaffold": scaffold_dir.name, "steps": steps, "hook_calls_per_step": round(calls, 2),
               "in_process_ms_per_step": round(1000 * statistics.median(inproc), 3),
               "jailed_ms_per_step": round(1000 * statistics.median(jail_s), 3),
               "cold_start_ms": round(1000 * statistics.median(r[2] for r in runs[True]), 1),
               "same_trace": len({r[3] for rs in runs.values() for r in rs}) == 1}
        row["jail_ms_per_step"] = round(row["jailed_ms_per_step"] - row["in_process_ms_per_step"], 3)
        row["jail_ms_per_call"] = round(row["jail_ms_per_step"] / calls, 3) if calls else None
        rows.append(row)
    print("| env | scaffold | hook calls/step | in-process ms/step | jailed ms/step | jail ms/step | jail ms/call "
          "| cold start ms | same trace |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['env']} | {r['scaffold']} | {r['hook_calls_per_step']} | {r['in_process_ms_per_step']} | "
              f"{r['jailed_ms_per_step']} | {r['jail_ms_per_step']} | {r['jail_ms_per_call']} | {r['cold_start_ms']} | "
              f"{r['same_trace']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
