"""
automem.py: the inner agent of AutoMem. Memory is a directory of text files; memory
operations share the action space with game actions.

Each env step of the memory agent:
  1. hooks `observe` (derived text such as a map analysis) and a stuck notice when the
     observation did not change;
  2. LOG (skipped on the first step): the model sees what its last action did and issues
     read/write ops, up to `log_turns` calls, until <|DONE|> or a reply with no op;
  3. PLAN: read-only ops, up to `plan_turns` calls, until <|ACTION|>; the hook
     `check_action` may send the action back to PLAN (at most `gate_retries` times);
     if PLAN never commits, the scaffold's fallback action (a valid one) runs.
With `grammar: true` in scaffold.yaml every call is constrained to the op syntax
(memory_fs.grammar: the routine's ops on the current files, PLAN's actions by name, PLAN's last
call an action), for models too small to follow the format (the embedded 135M one).
Two-model split (loop 2): `memory_llm` (+ `memory_adapter`) runs LOG and the memory
consultation of PLAN; when it proposes an action the action is dropped and the base
`llm` continues the same PLAN chat and commits the world action.

The baselines of the paper's table run on the same runner: "window" (the last 16
messages of observations and actions) and "cot" (think, then "ACTION: <name>").

Usage (normally through eval.py):
    scaffold = load_scaffold("scaffolds/crafter/v0")
    agent = Agent(scaffold, llm.load(), game, memory_dir="runs/x/memory/ep0")
    run_episode(agent, game, seed=42, trace_path="runs/x/traces/ep0.jsonl")
"""
import hashlib
import importlib.util
import json
import shutil
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import memory_fs

PLACEHOLDERS = {  # what each prompt template may use
    "system": {"instruction", "actions"},
    "log": {"step", "file_index", "notices", "prev_action", "observation"},
    "log_continue": {"results", "file_index"},
    "plan": {"step", "file_index", "notices", "observation"},
    "plan_continue": {"results", "file_index"},
}
HOOKS = ("observe", "before_log", "before_plan", "after_log", "check_action")
LIMITS = {"log_turns": 10, "plan_turns": 10, "max_tokens": 4096, "search_max_lines": 1000,
          "gate_retries": 2}
OBS_REF = "\u27e6observation\u27e7"  # stands for the step's observation in stored messages (read_trace expands it)
WINDOW_MESSAGES = 16  # sliding-window baseline: last 16 messages (BALROG's max_text_history)


# ----------------------------------------------------------------------------- scaffolds

def load_scaffold(path):
    """Read scaffolds/<env>/vN/{scaffold.yaml, hooks.py}; raise ValueError naming what is wrong."""
    path = Path(path)
    yaml_path = path / "scaffold.yaml"
    if not yaml_path.is_file():
        raise FileNotFoundError(f"no scaffold at {path}: expected {yaml_path} (see scaffolds/<env>/v0)")
    text = yaml_path.read_text()
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ValueError(f"{yaml_path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{yaml_path}: expected a mapping with name, env, prompts, files, ops")
    for key in ("name", "env", "prompts", "files", "ops"):
        if key not in spec:
            raise ValueError(f"{yaml_path}: missing key '{key}'")
    prompts, ops = spec["prompts"], spec["ops"]
    for key, value in (("prompts", prompts), ("ops", ops)):
        if not isinstance(value, dict):
            raise ValueError(f"{yaml_path}: {key} must be a mapping (see scaffolds/<env>/v0/scaffold.yaml)")
    for name, allowed in PLACEHOLDERS.items():
        if not isinstance(prompts.get(name), str):
            raise ValueError(f"{yaml_path}: prompts.{name} must be a string")
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(prompts[name]) if f is not None}
        except ValueError as e:
            raise ValueError(f"{yaml_path}: prompts.{name}: {e} (write a literal brace as {{{{ or }}}})") from None
        unknown = used - allowed
        if unknown:
            raise ValueError(f"{yaml_path}: prompts.{name} uses unknown placeholder(s) {sorted(unknown)}; "
                             f"allowed: {sorted(allowed)}")
    aliases = spec.get("aliases") or {}
    known = set(memory_fs.OPS) | set(aliases)
    for routine in ("log", "plan"):
        bad = set(ops.get(routine) or []) - known
        if not ops.get(routine) or bad:
            raise ValueError(f"{yaml_path}: ops.{routine} must list known ops; unknown: {sorted(bad)}")
    if "ACTION" not in ops["plan"]:
        raise ValueError(f"{yaml_path}: ops.plan must include ACTION")
    if not isinstance(spec["files"], dict):
        raise ValueError(f"{yaml_path}: files must map file names to initial contents")
    if not isinstance(spec.get("grammar", False), bool):
        raise ValueError(f"{yaml_path}: grammar must be true or false")
    hooks_path = path / "hooks.py"
    hooks = load_hooks(hooks_path) if hooks_path.is_file() else {}
    digest = hashlib.sha256(text.encode() + (hooks_path.read_bytes() if hooks_path.is_file() else b""))
    return {**spec, "aliases": aliases, "grammar": spec.get("grammar", False),
            "limits": {**LIMITS, **(spec.get("limits") or {})},
            "files": {k: v or "" for k, v in spec["files"].items()},
            "hooks": hooks, "hash": digest.hexdigest()[:12], "path": str(path)}


def load_hooks(hooks_path):
    """Import hooks.py and return {hook name: function} for the hook points it defines."""
    module_spec = importlib.util.spec_from_file_location(f"hooks_{abs(hash(str(hooks_path)))}", hooks_path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ValueError(f"{hooks_path}: import failed: {type(e).__name__}: {e}") from None
    return {name: getattr(module, name) for name in HOOKS if callable(getattr(module, name, None))}


# ----------------------------------------------------------------------------- agent

@dataclass
class Context:
    """What hooks see at a step. `episode` is a dict the hooks may keep state in."""
    step: int
    obs: object  # envs.Observation: text, long, short, state
    memory: memory_fs.MemoryFS
    game: object
    episode: dict = field(default_factory=dict)
    actions: list = field(default_factory=list)  # executed actions so far


def chat(llm, messages, adapter, max_tokens, seed, grammar=None):
    """One model call, timed; returns (reply text, call record)."""
    reply = llm.chat(messages, adapter=adapter, max_tokens=max_tokens, seed=seed, grammar=grammar)
    return reply.text, {"reply": reply.text, "seed": seed, "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens, "seconds": round(reply.seconds, 4)}


class Agent:
    """The memory agent ('memory') or a baseline ('window', 'cot') for one game."""

    def __init__(self, scaffold, llm, game, memory_dir, *, kind="memory", memory_llm=None,
                 memory_adapter=None, seed=0):
        self.scaffold, self.llm, self.game, self.kind, self.seed = scaffold, llm, game, kind, seed
        self.memory_llm = memory_llm or llm
        self.memory_adapter = memory_adapter
        self.two_model = memory_llm is not None or memory_adapter is not None
        self.limits = scaffold["limits"]
        self.memory_dir = Path(memory_dir)
        self.fallback = scaffold.get("fallback_action") or game.default_action
        if self.fallback not in game.actions:
            raise ValueError(f"scaffold fallback_action {self.fallback!r} is not a valid {game.env} action")
        self.system = scaffold["prompts"]["system"].format(instruction=game.instruction,
                                                           actions=", ".join(game.actions))
        if kind != "memory" and scaffold["grammar"]:  # the baselines' grammar is the same every call
            # the thought line stays within the token budget (a token holds at least one character)
            thought = max(1, min(1000, self.limits["max_tokens"] - 16))
            self.baseline_grammar = (BASELINE_GRAMMAR[kind].format(thought=thought) + "\naction ::= "
                                     + memory_fs.choice(game.actions) + "\n")
        else:
            self.baseline_grammar = None

    def reset(self):
        shutil.rmtree(self.memory_dir, ignore_errors=True)  # this episode's own directory: a restart begins clean
        self.memory = memory_fs.MemoryFS(self.memory_dir, self.scaffold["files"],
                                         max_result_lines=self.limits["search_max_lines"])
        self.ctx = None
        self.prev_text = None
        self.unchanged = 0
        self.history = []  # baselines: (role, text) events

    def call_seed(self, step, routine, turn):
        # A seed per call, so a resumed or re-run episode samples the same replies.
        key = f"{self.seed}/{step}/{routine}/{turn}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")

    # -- one env step -----------------------------------------------------------------
    def act(self, step, obs, prev_action, prev_valid):
        """Choose the action for this step; return (action text, step record for the trace)."""
        if self.kind != "memory":
            return self.act_baseline(step, obs, prev_action)
        hooks = self.scaffold["hooks"]
        if self.ctx is None:
            self.ctx = Context(step, obs, self.memory, self.game)
        ctx = self.ctx
        ctx.step, ctx.obs = step, obs
        self.seen = obs.text
        record = {"hooks": {}}
        observation = obs.text
        extra = run_hook(hooks, "observe", record, ctx)
        if extra:
            observation += "\n\n" + extra
        self.unchanged = self.unchanged + 1 if obs.text == self.prev_text else 0
        self.prev_text = obs.text
        notices = []
        if self.unchanged:
            notices.append(f"NOTICE: the observation is identical to the previous step ({self.unchanged} step(s) "
                           f"in a row): your last action had no effect. Try something different.")
        writes = []
        if step > 0:
            prev = prev_action if prev_valid else f"{prev_action!r} (not a valid action: the default action ran)"
            text = self.fill("log", step=step, notices=join_notices(notices, run_hook(hooks, "before_log", record, ctx)),
                             prev_action=prev, observation=observation)
            record["log"] = self.routine("log", text, step, writes)
            before = self.memory.snapshot() if "after_log" in hooks else None
            run_hook(hooks, "after_log", record, ctx)
            if before is not None:  # hook-maintained files are recorded as whole-file writes
                after = self.memory.snapshot()
                writes += [["WRITE", [n, after[n]]] for n in after if before.get(n) != after[n]]
        plan_notices = join_notices(notices, run_hook(hooks, "before_plan", record, ctx))
        record["gate"] = []  # PLAN attempts sent back by check_action, with their calls
        for attempt in range(self.limits["gate_retries"] + 1):
            sent_back = "".join(f"Your action {g['action']!r} was sent back: {g['reason']}. Choose again.\n"
                                for g in record["gate"])
            text = self.fill("plan", step=step, notices=plan_notices + sent_back, observation=observation)
            record["plan"] = self.routine("plan", text, step, writes, attempt=attempt)
            action = record["plan"]["action"]
            last = attempt == self.limits["gate_retries"]  # the final attempt's action stands
            reason = run_hook(hooks, "check_action", record, ctx, action) if action is not None and not last else None
            if not reason:
                break
            record["gate"].append({"action": action, "reason": reason, "turns": record["plan"]["turns"]})
        record["fallback"] = action is None
        action = self.fallback if action is None else action
        ctx.actions.append(action)
        record["writes"] = writes
        return action, record

    def fill(self, name, **values):
        values.setdefault("file_index", self.memory.index())
        return self.scaffold["prompts"][name].format(**values)

    def grammar(self, name, last):
        """GBNF for one call of a routine: its ops on the current files; PLAN's last call may only commit."""
        ops = ["ACTION"] if name == "plan" and last else self.scaffold["ops"][name]
        return memory_fs.grammar(ops, self.scaffold["aliases"], self.memory.names(),
                                 self.game.actions if name == "plan" else None)

    def routine(self, name, user_text, step, writes, attempt=0):
        """Run LOG or PLAN: a chat of up to N calls with memory ops between them."""
        allowed = set(self.scaffold["ops"][name])
        aliases = self.scaffold["aliases"]
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": user_text}]
        turns, action, ended = [], None, "limit"
        consulting = True  # two-model: the memory model speaks until it proposes an action
        n_turns = self.limits[f"{name}_turns"]
        for turn in range(n_turns):
            use_memory = self.two_model and (name == "log" or consulting)
            llm, adapter = (self.memory_llm, self.memory_adapter) if use_memory else (self.llm, None)
            grammar = self.grammar(name, last=turn == n_turns - 1) if self.scaffold["grammar"] else None
            reply, call = chat(llm, messages, adapter, self.limits["max_tokens"],
                               self.call_seed(step, name, attempt * 100 + turn), grammar)
            call["model"] = "memory" if use_memory else "base"
            # store only what this call added; the system prompt is in the header, the observation in the step
            call["messages"] = ([{"role": "user", "content": user_text.replace(self.seen, OBS_REF, 1)}]
                                if turn == 0 else messages[-1:])
            ops = memory_fs.parse_ops(reply, aliases)
            call["ops"] = [[op.name, op.args] for op in ops]
            results, stop = [], None
            for op in ops:  # in the order written; ACTION ends PLAN, DONE ends LOG
                if (op.name, name) in (("ACTION", "plan"), ("DONE", "log")):
                    stop = op.args[0].strip() if op.args else ""
                    break
                result = self.memory.execute(op, allowed)
                results.append(result)
                if result.wrote:
                    writes.append([op.name, op.args])
            call["results"] = [{"text": r.text, "ok": r.ok, "wrote": r.wrote, "redundant": r.redundant,
                                "matches": r.matches} for r in results]
            turns.append(call)
            if use_memory and name == "plan" and (stop is not None or not ops):
                consulting = False  # consultation over: the base model continues the chat and commits
                if stop is not None:
                    call["dropped_action"] = stop
            elif stop is not None:
                action, ended = (stop, "action") if name == "plan" else (None, "done")
                break
            elif not ops:
                ended = "no_op"
                break
            messages.append({"role": "assistant", "content": reply})
            messages.append({"role": "user", "content": self.fill(
                f"{name}_continue", results=memory_fs.format_results(results) or "(no results)")})
        return {"turns": turns, "ended": ended, "action": action}

    # -- baselines ----------------------------------------------------------------------
    def act_baseline(self, step, obs, prev_action):
        """BALROG-style naive agent over the last 16 messages, or chain-of-thought."""
        if prev_action is not None:  # naive: the raw reply; cot: the action (its plan is shown once, below)
            self.history.append({"role": "assistant", "content": self.last_reply if self.kind == "window" else prev_action})
        long = (obs.feedback + "\n\n" if obs.feedback else "") + obs.long  # BALROG puts the invalid-action line here
        self.history.append({"role": "user", "content": "Observation:\n" + long})
        window = [dict(m) for m in self.history[-WINDOW_MESSAGES:]]
        if self.kind == "cot" and prev_action is not None and len(window) > 1:
            window[-2]["content"] = "Previous plan:\n" + self.last_reply
        window[-1]["content"] = f"Current Observation:\n{obs.short}\n{long}\n\n" + BASELINE_ASK[self.kind]
        messages = [{"role": "user", "content": self.game.instruction}] + window
        reply, call = chat(self.llm, messages, None, self.limits["max_tokens"], self.call_seed(step, self.kind, 0),
                           self.baseline_grammar)
        call["messages"] = messages
        answer = reply.rsplit("ACTION:", 1)[-1] if self.kind == "cot" else reply
        # Unlike BALROG's letters-only filter, keep digits (NetHack answers) and strip only edge punctuation.
        action = (answer.strip().splitlines() or [""])[0].strip(" \t.,;:!\"'`*")
        self.last_reply = reply
        return action, {"plan": {"turns": [call], "ended": "action", "action": action}, "fallback": False, "writes": []}


BASELINE_GRAMMAR = {  # with grammar on: an action name alone, or a line of thought and then the action line
    "window": "root ::= action",
    "cot": 'root ::= ([^\\n]{{1,{thought}}} "\\n")? "ACTION: " action',
}
BASELINE_ASK = {
    "window": "Reply with exactly one of the valid action names and nothing else.",
    "cot": "Think step by step about the best action, then end your reply with one line: ACTION: <valid action name>",
}


def join_notices(notices, extra):
    parts = [n for n in notices if n] + ([extra] if extra else [])
    return "\n".join(parts) + "\n" if parts else ""


def run_hook(hooks, name, record, ctx, *args):
    """Call one scaffold hook; record what it returned so its effect can be ablated."""
    fn = hooks.get(name)
    if fn is None:
        return None
    out = fn(ctx, *args)
    if out is not None:
        record["hooks"].setdefault(name, []).append(out if isinstance(out, str) else repr(out))
    return out


# ----------------------------------------------------------------------------- episode

def run_episode(agent, game, seed, trace_path, max_steps=None, header=None, progress=None):
    """Play one episode, writing one JSONL line per step (flushed) to trace_path; return the end record."""
    max_steps = max_steps or game.max_steps
    agent.reset()
    obs = game.reset(seed)
    trace_path = Path(trace_path)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = trace_path.with_suffix(".part")
    with open(tmp, "w") as f:
        write_line(f, {"type": "episode", "env": game.env, "task": game.task, "seed": seed,
                       "agent": agent.kind, "scaffold": agent.scaffold["name"], "scaffold_hash": agent.scaffold["hash"],
                       "system": agent.system if agent.kind == "memory" else None,
                       "files": agent.scaffold["files"] if agent.kind == "memory" else {},
                       "actions": game.actions, "max_steps": max_steps, **(header or {})})
        prev_action, prev_valid, total_reward, info, step = None, True, 0.0, {}, 0
        # A full memory snapshot once the writes since the last one add up to the memory's size: snapshots
        # then cost no more than the writes they sum up, and any step rebuilds from one memory's worth of ops.
        snapshot_budget, written = max(4096, len(json.dumps(agent.scaffold["files"]))), 0
        t_episode = time.time()
        for step in range(max_steps):
            t0 = time.time()
            seen = obs.text
            action, record = agent.act(step, obs, prev_action, prev_valid)
            t_agent = time.time() - t0
            obs, reward, done, info = game.step(action)
            total_reward += reward
            record.update({"type": "step", "step": step, "observation": seen,
                           "action": action, "valid": info["valid"], "executed": info["executed"],
                           "reward": reward, "done": done, "progression": info["progression"],
                           "seconds": round(time.time() - t0, 4), "agent_seconds": round(t_agent, 4)})
            written += len(json.dumps(record["writes"])) if record["writes"] else 0
            if agent.kind == "memory" and written >= snapshot_budget:
                record["snapshot"] = agent.memory.snapshot()
                snapshot_budget, written = max(4096, len(json.dumps(record["snapshot"]))), 0
            write_line(f, record)
            prev_action, prev_valid = action, info["valid"]
            if progress:
                progress(1)
            if done:
                break
        end = {"type": "end", "steps": step + 1, "progression": info.get("progression", 0.0),
               "success": info.get("success"), "success_balrog": info.get("success_balrog"),
               "end_reason": info.get("end_reason"), "achievements": info.get("achievements"),
               "return": total_reward, "seconds": round(time.time() - t_episode, 2),
               "final_observation": obs.text,
               "memory": agent.memory.snapshot() if agent.kind == "memory" else {}}
        write_line(f, end)
    tmp.replace(trace_path)  # a finished trace appears atomically; a .part file is an interrupted episode
    return end


def write_line(f, obj):
    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    f.flush()


def read_trace(path):
    """Load a trace: (header, steps, end or None). A half-written last line is ignored."""
    header, steps, end = None, [], None
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # only the last line of a killed run can be partial
            kind = rec.get("type")
            if kind == "episode":
                header = rec
            elif kind == "step":
                for routine in ("log", "plan"):
                    for turn in (rec.get(routine) or {}).get("turns", []):
                        for m in turn.get("messages", []):
                            m["content"] = m["content"].replace(OBS_REF, rec.get("observation") or "", 1)
                steps.append(rec)
            elif kind == "end":
                end = rec
    return header, steps, end


def model_calls(header, step):
    """(routine, turn record, the exact messages sent) for every model call of one trace step, in order."""
    routines = [("log", step.get("log"))] + [("plan", g) for g in step.get("gate", [])] + [("plan", step.get("plan"))]
    for routine, calls in routines:
        chat = [{"role": "system", "content": header["system"]}] if header.get("system") else []
        for turn in (calls or {}).get("turns", []):
            chat = chat + turn.get("messages", [])
            yield routine, turn, chat
            chat = chat + [{"role": "assistant", "content": turn["reply"]}]


# ----------------------------------------------------------------------------- hook helpers

DIRECTIONS = {"north": (0, -1), "northeast": (1, -1), "east": (1, 0), "southeast": (1, 1),
              "south": (0, 1), "southwest": (-1, 1), "west": (-1, 0), "northwest": (-1, -1)}
PASSABLE = set(".#<>{_$)[!?/=\"(*%`+") | set(string.ascii_letters)


def nle_map_analysis(rows, x, y):
    """Passable/blocked neighbours and visible stairs around '@' at column x, row y of the map rows."""
    def at(cx, cy):
        return rows[cy][cx] if 0 <= cy < len(rows) and 0 <= cx < len(rows[cy]) else " "
    passable, blocked = [], []
    for name, (dx, dy) in DIRECTIONS.items():
        ch = at(x + dx, y + dy)
        (passable if ch in PASSABLE else blocked).append(f"{name} '{ch}'")
    lines = ["MAP ANALYSIS (computed from the map):",
             "can move: " + (", ".join(passable) or "nowhere"),
             "blocked: " + (", ".join(blocked) or "nothing")]
    for symbol, label in ((">", "stairs down"), ("<", "stairs up")):
        for cy, row in enumerate(rows):
            for cx, ch in enumerate(row):
                if ch == symbol:
                    dx, dy = cx - x, cy - y
                    where = ("south" if dy > 0 else "north" if dy < 0 else "") + ("east" if dx > 0 else "west" if dx < 0 else "")
                    dist = max(abs(dx), abs(dy))
                    lines.append(f"{label} '{symbol}' {dist} tile(s) {where or 'here'}"
                                 + (f" (dx={dx}, dy={dy})" if dist else ""))
    return "\n".join(lines)
