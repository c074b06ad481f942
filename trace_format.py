"""
trace_format.py: the episode trace, the kit's central record, defined once. automem.run_episode writes
it; metrics, replay, report, eval, digest (loop 1's view of the episodes), sft_data (loop 2's candidates)
and llm's scripted backend read it through read_trace, model_calls and routine_runs.

A trace is JSONL, one record a line, flushed as the episode plays:
  Header  {"type": "episode", "version": 2, ...}   the game, seed, agent, scaffold, system prompt, files
  Step    {"type": "step", ...}                    one per env step: hooks, LOG and PLAN chats, action, writes
  End     {"type": "end", ...}                     the outcome and the final memory
Each chat call stores only the messages it added (the first one's observation as OBS_REF, since the
step holds it once; the system prompt sits in the header): read_trace and routine_runs rebuild what
was sent. A memory step stores its writes (each [op, args]), and a full snapshot of the memory when
the writes since the last one add up to its size, so any step's memory rebuilds from little.

Versions: 1 is the format before it carried a version (no "version" key): baseline steps lacked
hooks and gate, their calls model, ops and results, and LOG held an empty gate. read_trace upgrades
such steps, so every reader sees version 2's fields (the header keeps the file's version). A trace
from a newer kit is refused.

Usage:
    header, steps, end = trace_format.read_trace("runs/x/traces/crafter/default__00.jsonl")
    for routine, call, messages in trace_format.model_calls(header, steps[0]): ...
"""
import contextlib
import json
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

VERSION = 2
OBS_REF = "\u27e6observation\u27e7"  # stands for the step's observation in stored messages (read_trace expands it)


class OpResult(TypedDict):
    text: str             # what the model was shown
    ok: bool
    wrote: bool           # the memory changed
    redundant: bool       # a write whose content already stood in the file
    matches: int | None   # lines a SEARCH/COUNT found (None for other ops)


class Call(TypedDict):
    reply: str
    seed: int             # the sampling seed of this call (Agent.call_seed)
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    model: Literal["base", "memory"]  # "memory": the two-model split's memory model (LOG, PLAN consultation)
    messages: list        # the messages this call added to the chat ({"role", "content"})
    ops: list             # [op name or alias, args] of every op the reply wrote
    results: list[OpResult]  # one per op run, in order (PLAN stops at its ACTION, which has none)
    dropped_action: NotRequired[str]  # two-model: the action the memory model proposed, dropped
    kept: NotRequired[str]  # two-model: the reply as the base model sees it (the dropped action cut)


class Routine(TypedDict):
    turns: list[Call]
    ended: Literal["action", "done", "no_op", "limit"]
    action: str | None    # PLAN's committed action (None: it never committed)
    template: NotRequired[str]  # the PLAN template a before_plan hook picked, when not the routine's own
    consult_error: NotRequired[str]  # two-model PLAN: the memory model's call that failed and ended its consultation


class Gate(TypedDict):
    action: str           # what PLAN committed
    reason: str           # why check_action sent it back
    turn: int             # the PLAN call that committed it


class Header(TypedDict):
    type: Literal["episode"]
    version: int
    env: str
    task: str
    seed: int
    agent: Literal["memory", "window", "cot"]
    scaffold: str
    scaffold_hash: str
    system: str | None    # the system prompt (memory agent; "" sends none)
    text_mode: str
    context: str          # "full" or "memory-only"
    files: dict           # the scaffold's initial memory files (memory agent; {} for baselines)
    actions: list[str]
    max_steps: int
    # ... and what the caller adds (eval.py: episode, run)


class Step(TypedDict):
    type: Literal["step"]
    step: int
    hooks: dict           # hook name -> what it returned, each call (str, else its repr)
    log: NotRequired[Routine]  # none on the first step and for the baselines
    plan: Routine
    gate: list[Gate]      # PLAN actions check_action sent back
    fallback: bool        # PLAN never committed: the fallback action ran
    repaired: NotRequired[list[str]]  # [action, what repair_action made of it]
    writes: list          # [op, args] of every memory write of the step, the model's and the hooks'
    observation: str      # what the agent saw
    action: str
    valid: bool
    executed: str         # what the env ran (its default action after an invalid one)
    reward: float
    done: bool
    progression: float
    seconds: float
    agent_seconds: float
    snapshot: NotRequired[dict]  # the whole memory after this step, {file name: text}


End = TypedDict("End", {  # functional form: "return" is a keyword
    "type": Literal["end"], "steps": int, "progression": float, "success": bool | None, "success_balrog": bool | None,
    "end_reason": str | None, "achievements": list | None, "return": float, "seconds": float,
    "final_observation": str, "memory": dict})


@contextlib.contextmanager
def writing(path):
    """Write a trace: yields write(record), which appends one line and flushes it. The trace is written as
    <path>.part and renamed to path once the block ends (a .part file is an interrupted episode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    with open(part, "w") as f:
        def write(record):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
        yield write
    part.replace(path)


def read_trace(path):
    """Load a trace as version 2: (header, steps, end or None). A half-written last line is ignored."""
    header, steps, end, version = None, [], None, 1
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # only the last line of a killed run can be partial
            kind = rec.get("type")
            if kind == "episode":
                header, version = rec, rec.get("version", 1)
                if version > VERSION:
                    raise ValueError(f"{path}: trace version {version}, newer than this kit's {VERSION}: update the kit")
                header.setdefault("version", version)
                header.setdefault("system", None)  # hand-written version-1 headers may lack these two
                header.setdefault("files", {})
            elif kind == "step":
                steps.append(upgrade_step(rec) if version < 2 else rec)
                for routine in ("log", "plan"):
                    for call in rec[routine]["turns"] if routine in rec else []:
                        for m in call["messages"]:
                            if OBS_REF in m["content"]:
                                m["content"] = m["content"].replace(OBS_REF, rec["observation"], 1)
            elif kind == "end":
                end = rec
    return header, steps, end


def upgrade_step(step):
    """A version-1 step as version 2: a baseline's step had no hooks or gate, its call no model, ops or results;
    LOG had an empty gate (and hand-written steps may lack more, or hold "log": null)."""
    if "log" in step and step["log"] is None:
        del step["log"]
    if "log" in step:
        step["log"].pop("gate", None)  # always empty: only PLAN has a gate
    for key, empty in (("hooks", {}), ("gate", []), ("fallback", False), ("writes", [])):
        step.setdefault(key, empty)
    for routine in ("log", "plan"):
        for call in step[routine]["turns"] if routine in step else []:
            for key, empty in (("model", "base"), ("messages", []), ("ops", []), ("results", [])):
                call.setdefault(key, empty)
    return step


def routine_runs(header, step):
    """(routine, [(call record, the exact messages sent), ...]) for the LOG and PLAN chats of one step."""
    for routine in ("log", "plan"):
        calls = step[routine]["turns"] if routine in step else []
        if not calls:
            continue
        chat, sent = [{"role": "system", "content": header["system"]}] if header["system"] else [], []
        for call in calls:
            chat = chat + call["messages"]
            sent.append((call, chat))
            chat = chat + [{"role": "assistant", "content": call.get("kept", call["reply"])}]
        yield routine, sent


def model_calls(header, step):
    """(routine, call record, the exact messages sent) for every model call of one step, in order."""
    for routine, sent in routine_runs(header, step):
        for call, chat in sent:
            yield routine, call, chat


def damage(path, episode):
    """Why a finished trace of an episode ({"env", "task", "seed", ...}) cannot be counted (None when whole):
    every line a JSON record, this episode's header first, an end record with its progression last."""
    records = []
    try:
        for line in Path(path).read_text().splitlines():
            records.append(json.loads(line))
    except ValueError:  # bad JSON or bytes that are not UTF-8
        return f"line {len(records) + 1} is not JSON"
    if not records or not all(isinstance(r, dict) for r in records):
        return "empty, or a line is not a record"
    head, end = records[0], records[-1]
    if head.get("type") != "episode" or [head.get(k) for k in ("env", "task", "seed")] != [episode[k] for k in ("env", "task", "seed")]:
        return "no header of this episode"
    if end.get("type") != "end" or not isinstance(end.get("progression"), (int, float)):
        return "no end record"
    return None
