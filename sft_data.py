"""
sft_data.py: loop 2's data engine, the agent's traces -> the chat JSONL that LoRA SFT trains on.

Every LOG/PLAN turn of a memory-agent trace becomes a candidate example (its exact chat rebuilt,
the reply post-processed into the training target, the FIELDS below computed from the step);
`select` keeps the turns worth reinforcing, duplicates are dropped, and the kept chats are written
with a summary beside them (x.summary.json). A select() written by a meta-LLM runs in jail.py's jail.

    python train_lora.py data --runs runs/train-crafter --out data/crafter.jsonl [--select my_select.py [--jail]]

    import sft_data
    summary = sft_data.build_dataset(["runs/train-crafter"], "data/crafter.jsonl")   # select_fn=sft_data.select
    rows = sft_data.read_jsonl("data/crafter.jsonl")
"""
import hashlib
import itertools
import json
import re
from pathlib import Path

import jail
import memory_fs
import metrics
import trace_format

FIELDS = {  # what select() sees for each candidate turn (also shown to the meta-LLM)
    "env": "crafter | minihack | nethack", "task": "task id", "seed": "episode seed", "source": "trace file",
    "step": "env step", "routine": "'log' or 'plan'", "turn": "call index in the routine (0 first)",
    "turns": "calls the routine made this step", "model": "'base' or 'memory' (who wrote the reply)",
    "sent_back": "a PLAN turn whose committed action the scaffold's check_action hook sent back",
    "target": "the reply after post-processing (what is trained)", "reply": "the raw reply",
    "messages": "the chat: system, user, ..., assistant=target", "observation": "the step's observation text",
    "ops": "[[name, args], ...] memory ops the reply ran (DONE/ACTION excluded)",
    "reads": "READ/SEARCH/TAIL/COUNT ops in this turn", "found": "reads that returned something",
    "empty": "SEARCH/COUNT ops that matched nothing", "writes": "successful non-redundant writes in this turn",
    "redundant": "writes whose content already stood in the file", "failed": "ops refused or in error",
    "reads_before": "reads in earlier turns of this routine (their results were seen before this reply)",
    "writes_after": "successful non-redundant writes in later turns of this routine",
    "action": "the action committed this step", "valid": "the action was a valid game action",
    "fallback": "PLAN never committed; the scaffold's fallback action ran",
    "productive": "the action moved the game to a state not among the last 8 (metrics.unproductive_rate)",
    "stuck_run": "length of the run of unproductive steps this step is in (0 when productive)",
    "step_progressed": "progression rose on this step", "episode_progression": "final progression 0..1",
}


def select(ex):
    """Keep a turn worth reinforcing? Returns (keep, rule); the first rule that matches decides."""
    if ex["fallback"]:
        return False, "drop:fallback"  # PLAN never committed: nothing to reinforce in this step
    if ex["sent_back"]:
        return False, "drop:sent_back"  # this consultation ended in an action the scaffold refused
    if ex["failed"]:
        return False, "drop:failed_op"  # malformed or refused op
    if ex["stuck_run"] >= 3:
        return False, "drop:stuck"  # inside a stuck or oscillating stretch
    if ex["redundant"]:
        return False, "drop:redundant_write"
    if ex["writes"]:  # a write is worth learning only once memory was consulted first
        return (True, "keep:write_after_retrieval") if ex["reads_before"] else (False, "drop:write_without_retrieval")
    if ex["routine"] == "log" and ex["reads"] and ex["writes_after"]:
        return True, "keep:retrieval_before_write"  # even an empty search: it checked before writing
    if ex["empty"] and not ex["found"]:
        return False, "drop:empty_search"
    if ex["found"] and ex["valid"] and ex["productive"]:
        return True, "keep:search_then_productive_action"
    if ex["episode_progression"] > 0 and ex["valid"]:
        return True, "keep:episode_progressed"
    return False, "drop:no_evidence"


FENCE = re.compile(r"^[ \t]*```[^\n]*(\n|$)", re.M)


def postprocess(routine, reply):
    """The training target: fences unwrapped; LOG cut after <|DONE|>; PLAN cut before its action."""
    text = FENCE.sub("", reply)
    pos = 0
    for op in memory_fs.parse_ops(text):
        start = text.find(op.raw, pos)
        pos = start + len(op.raw)
        if routine == "log" and op.name == "DONE":
            return text[:pos].strip()
        if routine == "plan" and op.name == "ACTION":
            return text[:start].strip()
    return text.strip()


def has_memory_op(text):
    return any(op.name not in ("DONE", "ACTION") for op in memory_fs.parse_ops(text))


def step_flags(steps, end):
    """Per step: productive (as metrics.unproductive_rate counts it: the game state moved to one not among
    the last OSCILLATION_WINDOW) and the length of the run of unproductive steps it is in."""
    bad = [f is True for f in metrics.unproductive_steps(steps, end)]
    runs = []
    for unproductive, group in itertools.groupby(bad):
        n = len(list(group))
        runs += [n if unproductive else 0] * n
    return [not b for b in bad], runs


def turn_counts(turn):
    """Counts over the memory ops a turn ran (DONE/ACTION excluded)."""
    ran = [(name, r) for (name, _), r in zip(turn["ops"], turn["results"])
           if name not in ("DONE", "ACTION")]
    return {
        "reads": sum(name in memory_fs.READ_OPS for name, _ in ran),
        "found": sum(name in memory_fs.READ_OPS and r["ok"] and (r["matches"] is None or r["matches"] > 0) for name, r in ran),
        "empty": sum(name in ("SEARCH", "COUNT") and r["ok"] and r["matches"] == 0 for name, r in ran),
        "writes": sum(name in memory_fs.WRITE_OPS and r["ok"] and not r["redundant"] for name, r in ran),
        "redundant": sum(name in memory_fs.WRITE_OPS and bool(r["redundant"]) for name, r in ran),
        "failed": sum(not r["ok"] for _, r in ran),
        "ops": [op for op in turn["ops"][:len(turn["results"])] if op[0] not in ("DONE", "ACTION")],
    }


def candidates(path):
    """Every LOG/PLAN turn of one trace as a candidate example, or None if it is no memory-agent trace."""
    header, steps, end = trace_format.read_trace(path)
    if not header or header["agent"] != "memory":
        return None
    productive, runs = step_flags(steps, end)
    final = end["progression"] if end else (steps[-1]["progression"] if steps else 0.0)
    out, before = [], 0.0
    for t, s in enumerate(steps):
        refused = {g["turn"] for g in s["gate"]}  # PLAN turns whose action check_action sent back
        for routine, mine in trace_format.routine_runs(header, s):
            counts = [turn_counts(turn) for turn, _ in mine]
            for k, (turn, chat) in enumerate(mine):
                sent_back = routine == "plan" and k in refused
                target = postprocess(routine, turn["reply"])
                out.append({
                    "env": header["env"], "task": header["task"], "seed": header["seed"], "source": str(path),
                    "step": s["step"], "routine": routine, "turn": k, "turns": len(mine), "sent_back": sent_back,
                    "model": turn["model"], "target": target, "reply": turn["reply"],
                    "messages": chat + [{"role": "assistant", "content": target}], "observation": s["observation"],
                    **counts[k],
                    "reads_before": sum(c["reads"] for c in counts[:k]),
                    "writes_after": sum(c["writes"] for c in counts[k + 1:]),
                    "action": s["action"], "valid": s["valid"], "fallback": s["fallback"],
                    "productive": productive[t], "stuck_run": runs[t],
                    "step_progressed": s["progression"] > before, "episode_progression": final,
                })
        before = s["progression"]
    return out


def trace_paths(runs):
    paths = []
    for run in runs:
        p = Path(run)
        if p.is_file():
            paths.append(p)
        elif p.is_dir():
            paths += sorted((p / "traces" if (p / "traces").is_dir() else p).rglob("*.jsonl"))
        else:
            raise FileNotFoundError(f"no run directory or trace at {run}: pass runs/<name> folders written by eval.py")
    return paths


def build_dataset(runs, out, select_fn=select):
    """Write the kept, post-processed, de-duplicated examples of the traces under `runs` to `out` (JSONL,
    one trace in memory at a time) and the summary beside it (x.summary.json); return the summary."""
    summary = {"traces": 0, "skipped_traces": 0, "candidates": 0, "examples": 0, "rules": {}, "envs": {},
               "routines": {}, "seeds": {}}
    write_jsonl(out, kept_rows(runs, select_fn, summary))
    summary["seeds"] = {env: sorted(s) for env, s in summary["seeds"].items()}
    summary_path(out).write_text(json.dumps(summary, indent=1))
    return summary


def kept_rows(runs, select_fn, summary):
    """The rows to train on, counted into `summary` as they go; ValueError if none is kept."""
    seen = set()
    for path in trace_paths(runs):
        cands = candidates(path)
        if cands is None:
            summary["skipped_traces"] += 1
            continue
        summary["traces"] += 1
        for ex in cands:
            summary["candidates"] += 1
            summary["seeds"].setdefault(ex["env"], set()).add(ex["seed"])
            if not ex["target"]:
                keep, rule = False, "post:empty"
            elif not has_memory_op(ex["target"]):
                keep, rule = False, "post:no_memory_op"
            else:
                try:
                    verdict = select_fn(ex)
                except Exception as e:
                    raise ValueError(f"select() raised {type(e).__name__}: {e} on {path} step {ex['step']} "
                                     f"{ex['routine']} turn {ex['turn']}") from None
                if not (isinstance(verdict, tuple) and len(verdict) == 2 and isinstance(verdict[1], str)):
                    raise ValueError(f"select() must return (keep: bool, rule: str), got {verdict!r}")
                keep, rule = bool(verdict[0]), verdict[1]
            if keep:
                key = hashlib.sha256(json.dumps(ex["messages"]).encode()).digest()
                if key in seen:
                    keep, rule = False, "dedup:duplicate"
                seen.add(key)
            summary["rules"][rule] = summary["rules"].get(rule, 0) + 1
            if keep:
                summary["examples"] += 1
                summary["envs"][ex["env"]] = summary["envs"].get(ex["env"], 0) + 1
                summary["routines"][ex["routine"]] = summary["routines"].get(ex["routine"], 0) + 1
                yield {"messages": ex["messages"], "meta": {k: ex[k] for k in (
                    "env", "task", "seed", "step", "routine", "turn", "source")} | {"rule": rule}}
    if not summary["examples"]:
        raise ValueError(f"no example kept from {summary['candidates']} turns of {summary['traces']} memory-agent traces "
                         f"under {', '.join(map(str, runs))} (rules: {summary['rules'] or 'none'}): "
                         "record more training episodes with eval.py, or loosen select()")


def print_summary(summary, out=None):
    print(f"data: {summary['traces']} traces ({summary['skipped_traces']} not memory-agent traces, skipped), "
          f"{summary['candidates']} turns -> {summary['examples']} examples" + (f" -> {out}" if out else ""))
    for rule, n in sorted(summary["rules"].items(), key=lambda kv: (kv[0].split(":")[0] != "keep", -kv[1])):
        print(f"  {rule:40s} {n:6d}")
    print("  kept per env: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["envs"].items())))
    print("  kept per routine: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["routines"].items())))


def load_select(path, jailed=False):
    """select() from a Python file: run in this process, or with jailed=True (the engine's recipes, written by
    a meta-LLM) in jail.py's jail, where it cannot touch files, processes, the network or the environment."""
    if jailed:
        jailed_select = jail.JailedHooks(path, names=["select"])
        if "select" not in jailed_select:
            raise ValueError(f"{path} defines no function select(example) -> (keep, rule)")
        jailed_select.start()  # imports the file in the jail: HookError (a ValueError) if that fails
        return jailed_select["select"]
    namespace = {"__name__": "recipe"}
    code = Path(path).read_text()
    try:
        exec(compile(code, str(path), "exec"), namespace)
    except Exception as e:
        raise ValueError(f"{path}: {type(e).__name__}: {e}") from None
    if not callable(namespace.get("select")):
        raise ValueError(f"{path} defines no function select(example) -> (keep, rule)")
    return namespace["select"]


def write_jsonl(path, rows):
    """Write rows (any iterable) to a .part file, renamed to `path` only once all were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    try:
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def summary_path(data):
    return Path(data).with_suffix(".summary.json")


def read_jsonl(path):
    if not Path(path).is_file():
        raise FileNotFoundError(f"no data at {path}: make it with python train_lora.py data --runs ... --out {path}")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for n, row in enumerate(rows, 1):
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"{path} line {n}: expected {{\"messages\": [..., {{\"role\": \"assistant\", ...}}]}}")
    if not rows:
        raise ValueError(f"{path} holds no examples: rerun python train_lora.py data")
    return rows
