"""
bench/agent_overhead.py: what a step costs besides the model. The scripted backend replays
realistic LOG/PLAN replies (search the map, upsert a map line, append to the action log,
search the rules, commit a move) on real NetHack, with the memory already as large as it
would be at step 10, 1,000 and 10,000 (files filled at the rates those replies write, up to
the memory caps). Reported per step: agent overhead in ms (prompt building, parsing, memory
ops, hooks, env step, trace write: everything but the LLM call) and trace bytes.

    python bench/agent_overhead.py                 # prints a table, writes bench/results/agent_overhead.json
    python bench/agent_overhead.py --steps 200 --at 10 1000 10000
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import automem  # noqa: E402
import scaffold_spec  # noqa: E402
import trace_format  # noqa: E402
import envs  # noqa: E402
import llm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MOVES = ["north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest"]
MAP_CELLS = 79 * 21  # a level has at most this many keyed map lines
FILE_CAP = 190_000  # under memory_fs.MemoryFS's default max_file_chars (200,000)


def memory_at(step, files):
    """The v0 files as they would stand after `step` steps of the replies below."""
    files = dict(files)
    files["actions_log.txt"] = "".join(f"Step {i} '{MOVES[i % 8]}': moved, nothing new here\n" for i in range(step))
    files["dungeon_map.txt"] = "".join(f"({i % 79},{i // 79 % 21}): floor, seen at step {i}\n"
                                       for i in range(min(step, MAP_CELLS)))
    files["monster_encounters.txt"] = "".join(f"Step {i}: jackal to the east, killed it\n" for i in range(0, step, 10))
    # a file at the memory cap refuses further appends, so it holds at most its newest ~FILE_CAP chars
    return {name: text[-FILE_CAP:].partition("\n")[2] if len(text) > FILE_CAP else text for name, text in files.items()}


def policy(seed):
    rng = random.Random(seed)

    def reply(messages):
        prompt = messages[-1]["content"]
        if len(messages) == 1 and "<|DONE|>" in prompt:  # LOG's first prompt (its prompts offer <|DONE|>)
            x, y = rng.randrange(79), rng.randrange(21)
            return (f"<|SEARCH|>dungeon_map.txt|({x},{y})<|END|>\n<|APPEND|>dungeon_map.txt|({x},{y}): floor, corridor north<|END|>\n"
                    f"<|APPEND|>actions_log.txt|Step {rng.randrange(10**4)} moved, nothing new<|END|>\n<|DONE|>")
        if len(messages) == 1:  # PLAN's first prompt
            return "I should check the rules for moving.\n<|SEARCH|>game_rules.txt|move<|END|>"
        return f"<|ACTION|>{rng.choice(MOVES)}<|END|>"
    return reply


def measure(at, steps, out_dir):
    scaffold = scaffold_spec.load_scaffold(ROOT / "scaffolds" / "nethack" / "v0")
    scaffold["files"] = memory_at(at, scaffold["files"])
    game = envs.make("nethack", max_steps=steps)
    backend = llm.load("scripted", replies=policy(at))
    agent = automem.Agent(scaffold, backend, game, out_dir / f"mem{at}")
    trace = out_dir / f"trace{at}.jsonl"
    t0 = time.perf_counter()
    end = automem.run_episode(agent, game, seed=42, trace_path=trace, max_steps=steps)
    wall = time.perf_counter() - t0
    header, recs, _ = trace_format.read_trace(trace)
    llm_seconds = sum(t["seconds"] for r in recs for ph in ("log", "plan") for t in (r.get(ph) or {}).get("turns", []))
    lines = trace.read_text().splitlines()
    step_bytes = sum(len(line.encode()) + 1 for line in lines[1:-1])  # step lines; header and end once per episode
    game.close()
    return {"at_step": at, "steps": end["steps"], "memory_lines": sum(v.count("\n") for v in scaffold["files"].values()),
            "overhead_ms_per_step": 1000 * (wall - llm_seconds) / end["steps"],
            "trace_bytes_per_step": step_bytes / end["steps"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--at", type=int, nargs="+", default=[10, 1000, 10000])
    p.add_argument("--steps", type=int, default=200, help="steps timed at each memory size")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "agent_overhead.json"))
    args = p.parse_args()
    work = Path(args.out).parent / "agent_overhead_work"
    work.mkdir(parents=True, exist_ok=True)
    rows = [measure(at, args.steps, work) for at in args.at]
    print("| at step | memory lines | overhead ms/step | trace bytes/step |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['at_step']} | {r['memory_lines']} | {r['overhead_ms_per_step']:.2f} | {r['trace_bytes_per_step']:.0f} |")
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
