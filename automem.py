"""
automem.py: the inner agent of AutoMem. Memory is a directory of text files; memory
operations share the action space with game actions.

Each env step of the memory agent (the authors' v0 step, with their converged scaffolds' hook points):
  1. hook `observe` (derived text such as a map analysis, the prompts' {analysis}) and a stuck notice
     when the observation did not change (a warning, then a critical notice from `stuck_after` steps);
  2. LOG (skipped on the first step): a fresh chat whose first message shows what the last action did; the
     model issues read/write ops, up to `log_turns` calls, until <|DONE|> (the reply's ops all run) or a
     reply with no op LOG allows; then hook `after_log` (file maintenance: pruning, auto-logging);
  3. PLAN: a fresh chat, read-only ops, up to `plan_turns` calls, until <|ACTION|>; hook `check_action` may
     refuse a committed action (at most `gate_retries` times a step: the reason goes back into the same chat
     and costs a call); if PLAN never commits, the scaffold's fallback action runs (the env's default
     where the task lacks it); hook `repair_action` may rewrite the final action (`eat d` -> `eat`).
Prompts are the scaffold's templates (scaffold.yaml); an empty `system` prompt sends no system message
(the authors' v0: every message is a user or assistant turn). Hooks `before_log`/`before_plan` return
text for {notices}, or a dict that fills the scaffold's declared `slots` (and may pick another PLAN
template with "prompt"). Hooks change memory only through ctx.write (recorded in the trace like the
model's writes); `custom_op` runs ops the scaffold declares in `custom_ops`.
With `grammar: true` in scaffold.yaml every call is constrained to the op syntax
(memory_fs.grammar: the routine's ops on the current files, PLAN's actions by name, PLAN's last
call an action), for models too small to follow the format (the embedded 135M one).
Two-model split (loop 2, the authors' *_twomodel): `memory_llm` (+ `memory_adapter`) runs LOG and the
memory consultation of PLAN (up to `plan_turns` calls); an action it proposes is dropped, a hand-off message
closes the consultation, and the base `llm` continues the same PLAN chat (up to `plan_turns` more calls,
gates apply) and commits the world action.
`context="memory-only"` (the ablation) runs a scaffold with its programmatic context off: no observe,
before_*/after_log or check_action hooks; its prompts, files, ops, repair and custom ops stay.

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
import re
import shutil
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml

import memory_fs
import trace_format

PLACEHOLDERS = {  # what each prompt template may use (plus the scaffold's declared slots in log and plan)
    "system": {"instruction", "actions"},
    "log": {"step", "file_index", "notices", "prev_action", "analysis", "observation", "instruction", "actions"},
    "log_continue": {"results", "file_index"},
    "plan": {"step", "file_index", "notices", "analysis", "observation", "instruction", "actions"},
    "plan_continue": {"results", "file_index"},
}
TEXTS = {  # short templates the agent fills; a scaffold's `texts` override these defaults
    "prev_action": "Your previous action (step {step}): {action}",
    "prev_invalid": "Your previous action (step {step}) was {action!r}, not a valid action: the game ran {executed!r} "
                    "instead. Log this failure.",
    "unchanged": "NOTICE: the observation is identical to the previous one: your last action had no effect.",
    "stuck": "NOTICE: the observation has not changed for {count} steps: you are stuck. Try something different.",
    "repeat": "Your last action was {action!r}: do not repeat it.",
    "sent_back": "Your action {action!r} was sent back: {reason}. Choose another action and commit it.",
    "handoff": "Memory consultation is over. Now commit one game action with <|ACTION|>name<|END|> (you may read more first).",
    "handoff_results": "Results:\n{results}\n\nMemory consultation is over. Now commit one game action with "
                       "<|ACTION|>name<|END|> (you may read more first).",
    "consult_done": "(memory consultation complete)",
}
TEXT_FIELDS = {"prev_action": {"step", "action"}, "prev_invalid": {"step", "action", "executed"},
               "unchanged": {"count"}, "stuck": {"count"}, "repeat": {"action"}, "sent_back": {"action", "reason"},
               "handoff": set(), "handoff_results": {"results"}, "consult_done": set()}
HOOKS = ("observe", "before_log", "before_plan", "after_log", "check_action", "repair_action", "custom_op")
CONTEXT_HOOKS = ("observe", "before_log", "before_plan", "after_log", "check_action")  # off in memory-only runs
CONTEXTS = ("full", "memory-only")
LIMITS = {"log_turns": 10, "plan_turns": 10, "max_tokens": 4096, "search_max_lines": 1000,
          "result_max_chars": None, "gate_retries": 2, "stuck_after": 3}
SCAFFOLD_KEYS = {"name", "env", "prompts", "files", "ops", "aliases", "limits", "grammar", "fallback_action",
                 "search_all", "texts", "slots", "custom_ops", "tasks", "description", "trusted"}
WINDOW_MESSAGES = 16  # sliding-window baseline: last 16 messages (BALROG's max_text_history)
SLOT = re.compile(r"[a-z][a-z0-9_]{0,39}")
OP_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,39}")


# ----------------------------------------------------------------------------- scaffolds

def load_scaffold(path, jailed=False):
    """Read scaffolds/<env>/vN/{scaffold.yaml, hooks.py}; raise ValueError naming what is wrong.
    hooks.py is imported here unless the scaffold says `trusted: false` (the loops write that into their
    candidates) or jailed=True (eval --untrusted-hooks): then its hooks run in jail.py's jail."""
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
    check_spec(spec, yaml_path)
    tasks = spec.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise ValueError(f"{yaml_path}: tasks must map a task-id substring to overrides")
    for key, override in tasks.items():
        bad = set(override) - TASK_KEYS if isinstance(override, dict) else None
        if bad is None or bad:
            raise ValueError(f"{yaml_path}: tasks.{key} must be a mapping of {sorted(TASK_KEYS)}"
                             + (f"; unknown: {sorted(bad)}" if bad else ""))
        check_spec(merge_task(spec, override), f"{yaml_path} (tasks.{key})")
    hooks_path = path / "hooks.py"
    if not hooks_path.is_file():
        hooks = {}
    elif spec.get("trusted", True) and not jailed:
        hooks = load_hooks(hooks_path)
    else:
        import jail  # here: trusted scaffolds never start a jail
        hooks = jail.JailedHooks(hooks_path, names=HOOKS)
    digest = hashlib.sha256(text.encode() + (hooks_path.read_bytes() if hooks_path.is_file() else b""))
    return {**normalize(spec), "tasks": tasks, "hooks": hooks, "hash": digest.hexdigest()[:12], "path": str(path)}


TASK_KEYS = {"files", "prompts", "texts", "limits", "ops", "fallback_action"}


def merge_task(spec, override):
    """The scaffold for one task: mappings (prompts, texts, limits, ops) merged key by key, files and
    fallback_action replaced."""
    return {**spec, **{k: {**(spec.get(k) or {}), **v} if k in ("prompts", "texts", "limits", "ops") else v
                       for k, v in override.items()}}


def for_task(scaffold, task):
    """The scaffold with the overrides of every `tasks` key that the task id contains (in file order)."""
    for key, override in scaffold.get("tasks", {}).items():
        if key in task:
            scaffold = {**scaffold, **normalize(merge_task(scaffold, override))}
    return scaffold


def normalize(spec):
    return {**spec, "aliases": spec.get("aliases") or {}, "grammar": spec.get("grammar", False),
            "search_all": spec.get("search_all", True), "limits": {**LIMITS, **(spec.get("limits") or {})},
            "texts": {**TEXTS, **(spec.get("texts") or {})}, "files": {k: v or "" for k, v in spec["files"].items()},
            "slots": list(spec.get("slots") or []), "custom_ops": list(spec.get("custom_ops") or []),
            "fallback_action": spec.get("fallback_action")}


def check_spec(spec, where):
    """Raise ValueError naming the first problem of a scaffold spec (types, names, placeholders, ops, actions)."""
    def need(ok, message):
        if not ok:
            raise ValueError(f"{where}: {message}")
    for key in ("name", "env", "prompts", "files", "ops"):
        need(key in spec, f"missing key '{key}'")
    unknown = set(spec) - SCAFFOLD_KEYS
    need(not unknown, f"unknown key(s) {sorted(unknown)}; known: {sorted(SCAFFOLD_KEYS)}")
    need(isinstance(spec["name"], str) and spec["name"].strip(), "name must be a non-empty string")
    import envs  # here, not at the top: loading a scaffold needs only its action names
    need(spec["env"] in envs.ENVS, f"env must be one of {', '.join(envs.ENVS)}, not {spec['env']!r}")
    for key in ("prompts", "ops", "files"):
        need(isinstance(spec[key], dict), f"{key} must be a mapping (see scaffolds/<env>/v0/scaffold.yaml)")
    for key in ("texts", "limits", "aliases"):
        need(isinstance(spec.get(key) or {}, dict), f"{key} must be a mapping")
    for key in ("grammar", "search_all", "trusted"):
        need(isinstance(spec.get(key, False), bool), f"{key} must be true or false")
    slots, custom = spec.get("slots") or [], spec.get("custom_ops") or []
    need(isinstance(slots, list) and all(isinstance(s, str) and SLOT.fullmatch(s) for s in slots)
         and not set(slots) & set().union(*PLACEHOLDERS.values()), "slots must be a list of new lower-case names")
    prompts = spec["prompts"]
    for name, text in prompts.items():
        base = name if name in PLACEHOLDERS else "plan" if re.fullmatch(r"plan_[a-z0-9_]+", name) else None
        need(base is not None, f"prompts.{name}: unknown prompt (known: {sorted(PLACEHOLDERS)}, or plan_<name> "
                               "for a PLAN template a hook can pick)")
        allowed = PLACEHOLDERS[base] | (set(slots) if base in ("log", "plan") else set())
        check_template(text, allowed, f"{where}: prompts.{name}")
    for name in PLACEHOLDERS:
        need(name in prompts or name == "system", f"prompts.{name} is missing")
    for name, text in (spec.get("texts") or {}).items():
        need(name in TEXT_FIELDS, f"texts.{name}: unknown text (known: {sorted(TEXT_FIELDS)})")
        check_template(text, TEXT_FIELDS[name], f"{where}: texts.{name}")
    limits = spec.get("limits") or {}
    for name, value in limits.items():
        need(name in LIMITS, f"limits.{name}: unknown limit (known: {sorted(LIMITS)})")
        lowest = 0 if name == "gate_retries" else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= lowest
        need(ok or (name == "result_max_chars" and value is None),
             f"limits.{name} must be a whole number >= {lowest}, not {value!r}")
    try:
        aliases = memory_fs._check_aliases(spec.get("aliases"))
    except ValueError as e:
        raise ValueError(f"{where}: aliases: {e}") from None
    need(isinstance(custom, list) and all(isinstance(o, str) and OP_NAME.fullmatch(o) for o in custom)
         and not set(custom) & (set(memory_fs.OPS) | set(aliases)), "custom_ops must list new upper-case op names")
    known = set(memory_fs.OPS) | set(aliases) | set(custom)
    for routine in ("log", "plan"):
        ops = spec["ops"].get(routine)
        bad = set(ops) - known if isinstance(ops, list) and all(isinstance(o, str) for o in ops) else {repr(ops)}
        need(ops and not bad, f"ops.{routine} must list known ops; unknown: {sorted(bad)}")
    need("ACTION" in spec["ops"]["plan"], "ops.plan must include ACTION")
    for name, content in spec["files"].items():
        need(isinstance(name, str) and memory_fs.valid_name(name),
             f"files: bad file name {name!r} (letters, digits, . _ -; no folders, no '..')")
        need(content is None or isinstance(content, str), f"files.{name} must be text, not {type(content).__name__}")
    fallback = spec.get("fallback_action")
    if fallback is not None:
        names = envs.action_names(spec["env"])
        need(isinstance(fallback, str) and (names is None or fallback in names),
             f"fallback_action {fallback!r} is not a {spec['env']} action")


def check_template(text, allowed, where):
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string")
    try:
        used = {f.split(".")[0].split("[")[0].split("!")[0] for _, f, _, _ in string.Formatter().parse(text)
                if f is not None}
    except ValueError as e:
        raise ValueError(f"{where}: {e} (write a literal brace as {{{{ or }}}})") from None
    unknown = used - allowed
    if unknown:
        raise ValueError(f"{where} uses unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def load_hooks(hooks_path):
    """Import hooks.py and return {hook name: function} for the hook points it defines."""
    module_spec = importlib.util.spec_from_file_location(f"hooks_{abs(hash(str(hooks_path)))}", hooks_path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # SystemExit: a sys.exit(0) at import must not end eval.py as a success
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
    actions: list = field(default_factory=list)  # the actions the agent returned so far (after repair)
    prev_action: str | None = None    # what the agent returned last step (after repair)
    prev_executed: str | None = None  # what the env ran (its default action after an invalid one)
    prev_valid: bool = True
    log_ops: list = field(default_factory=list)  # [name, args] of the ops this step's LOG ran

    def write(self, op, *args):
        """A memory write by a hook (APPEND, WRITE, CREATE, UPSERT), recorded like the model's; returns its OpResult."""
        return self.memory.execute(memory_fs.Op(op, list(args), ""), memory_fs.WRITE_OPS)


class Turn(NamedTuple):
    """One model call of a routine, its ops run (Agent.call)."""
    call: dict          # its trace record (trace_format.Call)
    ops: list           # the memory_fs.Op of the reply, in order
    results: list       # the memory_fs.OpResult of the ops that ran (PLAN stops at its ACTION)
    stop: str | None    # PLAN's committed action, "" for LOG's DONE; None when the reply has neither
    allowed_op: bool    # the reply wrote an op the routine allows
    shown: str          # the results as the model sees them next


def chat(llm, messages, adapter, max_tokens, seed, grammar=None):
    """One model call, timed; returns (reply text, call record)."""
    reply = llm.chat(messages, adapter=adapter, max_tokens=max_tokens, seed=seed, grammar=grammar)
    return reply.text, {"reply": reply.text, "seed": seed, "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens, "seconds": round(reply.seconds, 4)}


class Agent:
    """The memory agent ('memory') or a baseline ('window', 'cot') for one game."""

    def __init__(self, scaffold, llm, game, memory_dir, *, kind="memory", memory_llm=None,
                 memory_adapter=None, seed=0, context="full"):
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}: choose one of {', '.join(CONTEXTS)}")
        scaffold = for_task(scaffold, game.task)
        self.scaffold, self.llm, self.game, self.kind, self.seed = scaffold, llm, game, kind, seed
        self.context = context
        self.memory_llm = memory_llm or llm
        self.memory_adapter = memory_adapter
        self.two_model = memory_llm is not None or memory_adapter is not None
        self.limits, self.texts = scaffold["limits"], scaffold["texts"]
        self.hooks = {k: f for k, f in scaffold["hooks"].items() if context == "full" or k not in CONTEXT_HOOKS}
        self.memory_dir = Path(memory_dir)
        # The scaffold's fallback where this task has it (the authors' `search` is missing from some MiniHack tasks,
        # where their agent sent it anyway and the env ran its default as an invalid action), else the env default.
        wanted = scaffold.get("fallback_action") or game.default_action
        self.fallback = wanted if wanted in game.actions else game.default_action
        values = {"instruction": game.instruction, "actions": ", ".join(game.actions)}
        self.system = scaffold["prompts"].get("system", "").format(**values)
        self.fixed = {**values, **{slot: "" for slot in scaffold["slots"]}}  # what every template gets
        if kind != "memory" and scaffold["grammar"]:  # the baselines' grammar is the same every call
            # the thought line stays within the token budget (a token holds at least one character)
            thought = max(1, min(1000, self.limits["max_tokens"] - 16))
            self.baseline_grammar = (BASELINE_GRAMMAR[kind].format(thought=thought) + "\naction ::= "
                                     + memory_fs.choice(game.actions) + "\n")
        else:
            self.baseline_grammar = None

    def reset(self):
        if self.memory_dir.is_symlink():  # rmtree refuses a link silently (ignore_errors), then we would write through it
            raise ValueError(f"{self.memory_dir} is a symbolic link: the memory folder must be a real folder")
        shutil.rmtree(self.memory_dir, ignore_errors=True)  # this episode's own directory: a restart begins clean
        self.memory = memory_fs.MemoryFS(self.memory_dir, self.scaffold["files"],
                                         max_result_lines=self.limits["search_max_lines"],
                                         max_result_chars=self.limits["result_max_chars"],
                                         search_all=self.scaffold["search_all"])
        self.ctx = Context(0, None, self.memory, self.game)
        self.prev_text = None
        self.unchanged = 0
        self.history = []  # baselines: (role, text) events

    def call_seed(self, step, routine, turn):
        # A seed per call, so a resumed or re-run episode samples the same replies.
        key = f"{self.seed}/{step}/{routine}/{turn}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")

    # -- one env step -----------------------------------------------------------------
    def act(self, step, obs, prev_action, prev_valid, prev_executed=None):
        """Choose the action for this step; return (action text, the step's trace record: trace_format.Step
        less what the env adds)."""
        if self.kind != "memory":
            return self.act_baseline(step, obs, prev_action)
        ctx = self.ctx
        ctx.step, ctx.obs, ctx.log_ops = step, obs, []
        ctx.prev_action, ctx.prev_valid, ctx.prev_executed = prev_action, prev_valid, prev_executed or prev_action
        self.hook_outputs = {}    # what each hook returned this step: the trace keeps it, so its effect can be ablated
        self.memory.journal = []  # the memory records every write of this step in it, the model's and the hooks'
        analysis = self.hook("observe") or ""
        stuck = self.stuck_notice(obs.text)
        values = {**self.fixed, "step": step, "analysis": analysis, "observation": obs.text}
        log = self.log(step, values, stuck) if step > 0 else None
        plan, gate = self.plan(step, values, stuck)
        chosen = self.fallback if plan["action"] is None else plan["action"]
        action = self.hook("repair_action", chosen) or chosen
        ctx.actions.append(action)
        record = {"hooks": self.hook_outputs, **({"log": log} if log else {}), "plan": plan, "gate": gate,
                  "fallback": plan["action"] is None, **({"repaired": [chosen, action]} if action != chosen else {}),
                  "writes": self.memory.journal}
        self.memory.journal = None
        return action, record

    def stuck_notice(self, text):
        """The authors' stuck notice: a warning when the observation (its invalid-action line included) equals
        the previous one, a critical notice from `stuck_after` such steps in a row; "" when it changed."""
        text = text.strip()
        self.unchanged = self.unchanged + 1 if self.prev_text is not None and text == self.prev_text else 0
        self.prev_text = text
        if not self.unchanged:
            return ""
        return self.texts["stuck" if self.unchanged >= self.limits["stuck_after"] else "unchanged"].format(
            count=self.unchanged)

    def log(self, step, values, stuck):
        """LOG: a fresh chat that opens with what the last action did; then hook after_log. Returns its record."""
        ctx = self.ctx
        line = (self.texts["prev_action"].format(step=step - 1, action=ctx.prev_action) if ctx.prev_valid else
                self.texts["prev_invalid"].format(step=step - 1, action=ctx.prev_action, executed=ctx.prev_executed))
        text, _ = self.fill("log", values, stuck, self.hook("before_log"), prev_action=line)
        log, _ = self.routine("log", text, step)
        ctx.log_ops = [op for call in log["turns"] for op, result in zip(call["ops"], call["results"])
                       if result["ok"]]  # results align with ops (only PLAN's ACTION has none)
        self.hook("after_log")
        return log

    def plan(self, step, values, stuck):
        """PLAN: a fresh chat that commits the action (None if it never does). Returns its record and the
        gate's refusals."""
        repeat = self.texts["repeat"].format(action=self.ctx.prev_executed) if stuck and self.ctx.prev_executed else ""
        text, template = self.fill("plan", values, "\n".join(t for t in (stuck, repeat) if t), self.hook("before_plan"))
        return self.routine("plan", text, step, template=template)

    def hook(self, name, *args, record=True):
        """Call one scaffold hook (None when the scaffold has none); record what it returned unless told not to
        (check_action's reasons are recorded in the gate)."""
        fn = self.hooks.get(name)
        if fn is None:
            return None
        out = fn(self.ctx, *args)
        if out is not None and record:
            self.hook_outputs.setdefault(name, []).append(out if isinstance(out, str) else repr(out))
        return out

    def fill(self, name, values, notices, extra, **more):
        """A routine's first message: the template (or the one a hook picked) filled; returns (text, template)."""
        slots = extra if isinstance(extra, dict) else {"notices": extra}
        template = slots.get("prompt") or name
        if template not in self.scaffold["prompts"] or template == f"{name}_continue" or not (
                template == name or template.startswith(name + "_")):
            raise ValueError(f"hook before_{name} picked prompt {template!r}: pick one of the scaffold's {name} "
                             f"templates ({name} or {name}_<name>, not {name}_continue)")
        notices = "\n".join(t for t in (notices, slots.get("notices")) if t)
        extra_slots = {k: v for k, v in slots.items() if k in self.scaffold["slots"] and v is not None}
        text = self.scaffold["prompts"][template].format(**{**values, **more, **extra_slots, "notices": notices,
                                                             "file_index": self.memory.index()})
        return text, template

    def grammar(self, name, last):
        """GBNF for one call of a routine: its ops on the current files; PLAN's last call may only commit."""
        ops = ["ACTION"] if name == "plan" and last else self.scaffold["ops"][name]
        return memory_fs.grammar(ops, self.scaffold["aliases"], self.memory.names(),
                                 self.game.actions if name == "plan" else None, search_all=self.scaffold["search_all"],
                                 custom=self.scaffold["custom_ops"])

    def routine(self, name, user_text, step, template=None):
        """Run LOG or PLAN: one chat of model calls with memory ops between them (see the module docstring).
        Returns (its trace_format.Routine, the gate's refusals: PLAN actions check_action sent back)."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": user_text}]
        turns = []
        if self.two_model and name == "plan":  # stage 1 of the split: the memory model consults memory first
            turns, messages = self.consult(messages, step)
        action, ended, gate, n_turns = None, "limit", [], self.limits[f"{name}_turns"]
        for k in range(n_turns):
            turn = self.call(name, messages, step, len(turns), memory_model=self.two_model and name == "log",
                             last=k == n_turns - 1)
            turns.append(turn.call)
            reply, stop = turn.call["reply"], turn.stop
            if stop is not None and name == "plan":
                reason = (self.hook("check_action", stop, record=False)
                          if len(gate) < self.limits["gate_retries"] else None)
                if not reason:
                    action, ended = stop, "action"
                    break
                gate.append({"action": stop, "reason": reason, "turn": len(turns) - 1})
                answer = self.texts["sent_back"].format(action=stop, reason=reason)
            elif stop is not None:
                ended = "done"
                break
            elif not turn.allowed_op:
                ended = "no_op"
                break
            else:
                answer = self.fill_continue(name, turn.shown)
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": answer}]
        return {"turns": turns, "ended": ended, "action": action,
                **({"template": template} if template and template != name else {})}, gate

    def consult(self, messages, step):
        """Stage 1 of the two-model split: the memory model reads memory in the PLAN chat, up to plan_turns calls,
        until it proposes an action (dropped: the base model commits) or writes no op PLAN allows. Returns its
        calls and the chat the base model takes over: with a hand-off message, or as it stands once the calls
        are spent."""
        turns, n_turns = [], self.limits["plan_turns"]
        for k in range(n_turns):
            turn = self.call("plan", messages, step, k, memory_model=True, last=False)
            turns.append(turn.call)
            reply = turn.call["reply"]
            if turn.stop is None and turn.allowed_op:
                messages += [{"role": "assistant", "content": reply},
                             {"role": "user", "content": self.fill_continue("plan", turn.shown)}]
                continue
            if turn.stop is not None:  # what the base model sees: the reply without the action
                turn.call["dropped_action"] = turn.stop
                kept = reply.replace(turn.ops[len(turn.results)].raw, "").strip()
                reply = turn.call["kept"] = kept or self.texts["consult_done"]
            handoff = (self.texts["handoff_results"].format(results=turn.shown) if turn.results
                       else self.texts["handoff"])
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": handoff}]
            break
        return turns, messages

    def call(self, name, messages, step, turn, memory_model, last):
        """One model call of a routine, then the ops of its reply, in the order written: PLAN stops at its ACTION,
        LOG runs every op of a reply with DONE. Returns a Turn: the call's trace record and what the routine
        decides on."""
        allowed, custom = set(self.scaffold["ops"][name]), set(self.scaffold["custom_ops"])
        llm, adapter = (self.memory_llm, self.memory_adapter) if memory_model else (self.llm, None)
        grammar = self.grammar(name, last) if self.scaffold["grammar"] else None
        reply, call = chat(llm, messages, adapter, self.limits["max_tokens"], self.call_seed(step, name, turn), grammar)
        call["model"] = "memory" if memory_model else "base"
        # store only what this call added; the system prompt is in the header, the observation in the step
        added = messages[-1]["content"]
        call["messages"] = [{"role": "user", "content": added.replace(self.ctx.obs.text, trace_format.OBS_REF, 1)
                             if turn == 0 else added}]
        ops = memory_fs.parse_ops(reply, self.scaffold["aliases"], custom)
        call["ops"] = [[op.alias or op.name, op.args] for op in ops]
        results, stop = [], None
        for op in ops:
            if op.name == "ACTION" and name == "plan":
                stop = op.args[0].strip() if op.args else ""
                break
            results.append(self.custom_op(op, allowed) if op.name in custom else self.memory.execute(op, allowed))
            if op.name == "DONE" and name == "log" and stop is None:
                stop = ""
        call["results"] = [{"text": r.text, "ok": r.ok, "wrote": r.wrote, "redundant": r.redundant,
                            "matches": r.matches} for r in results]
        return Turn(call, ops, results, stop, any(op.name in allowed or op.alias in allowed for op in ops),
                    memory_fs.format_results(results) or "(no results)")

    def fill_continue(self, name, results):
        return self.scaffold["prompts"][f"{name}_continue"].format(results=results, file_index=self.memory.index())

    def custom_op(self, op, allowed):
        """A scaffold's own op (custom_ops), run by its hook; its writes go through ctx.write. The hook refuses an
        op by raising ValueError(reason): an error result, as memory_fs gives for its own ops."""
        def result(text, ok, wrote=False):
            return memory_fs.OpResult(op, text, ok=ok, wrote=wrote, redundant=False, matches=None)
        if op.name not in allowed:
            return result(f"[{op.name}] error: {op.name} is not allowed here; allowed: {', '.join(sorted(allowed))}", False)
        if "custom_op" not in self.hooks:
            return result(f"[{op.name}] error: no custom_op hook runs {op.name}", False)
        before = len(self.memory.journal)
        try:
            text = self.hooks["custom_op"](self.ctx, op)
        except ValueError as e:
            return result(f"[{op.name}] error: {e}", False)
        return result(str(text), True, wrote=len(self.memory.journal) > before)

    # -- baselines ----------------------------------------------------------------------
    def act_baseline(self, step, obs, prev_action):
        """BALROG-style naive agent over the last 16 messages, or chain-of-thought."""
        if prev_action is not None:  # naive: the raw reply; cot: the action (its plan is shown once, below)
            self.history.append({"role": "assistant", "content": self.last_reply if self.kind == "window" else prev_action})
        long = obs.long  # after an invalid action BALROG's invalid-action line opens it
        self.history.append({"role": "user", "content": "Observation:\n" + long})
        window = [dict(m) for m in self.history[-WINDOW_MESSAGES:]]
        if self.kind == "cot" and prev_action is not None and len(window) > 1:
            window[-2]["content"] = "Previous plan:\n" + self.last_reply
        window[-1]["content"] = f"Current Observation:\n{obs.short}\n{long}\n\n" + BASELINE_ASK[self.kind]
        messages = [{"role": "user", "content": self.game.instruction}] + window
        reply, call = chat(self.llm, messages, None, self.limits["max_tokens"], self.call_seed(step, self.kind, 0),
                           self.baseline_grammar)
        call.update(model="base", messages=messages, ops=[], results=[])  # a baseline runs no memory op
        answer = reply.rsplit("ACTION:", 1)[-1] if self.kind == "cot" else reply
        # Unlike BALROG's letters-only filter, keep digits (NetHack answers) and strip only edge punctuation.
        action = (answer.strip().splitlines() or [""])[0].strip(" \t.,;:!\"'`*")
        self.last_reply = reply
        return action, {"hooks": {}, "plan": {"turns": [call], "ended": "action", "action": action}, "gate": [],
                        "fallback": False, "writes": []}


BASELINE_GRAMMAR = {  # with grammar on: an action name alone, or a line of thought and then the action line
    "window": "root ::= action",
    "cot": 'root ::= ([^\\n]{{1,{thought}}} "\\n")? "ACTION: " action',
}
BASELINE_ASK = {
    "window": "Reply with exactly one of the valid action names and nothing else.",
    "cot": "Think step by step about the best action, then end your reply with one line: ACTION: <valid action name>",
}


# ----------------------------------------------------------------------------- episode

def run_episode(agent, game, seed, trace_path, max_steps=None, header=None, progress=None):
    """Play one episode, writing its trace (trace_format: a header, a line per step, flushed; the end);
    return the end record."""
    max_steps = max_steps or game.max_steps
    agent.reset()
    obs = game.reset(seed)
    memory_agent = agent.kind == "memory"
    with trace_format.writing(trace_path) as write:
        write({"type": "episode", "version": trace_format.VERSION, "env": game.env, "task": game.task, "seed": seed,
               "agent": agent.kind, "scaffold": agent.scaffold["name"], "scaffold_hash": agent.scaffold["hash"],
               "system": agent.system if memory_agent else None, "text_mode": game.text_mode,
               "context": agent.context, "files": agent.scaffold["files"] if memory_agent else {},
               "actions": game.actions, "max_steps": max_steps, **(header or {})})
        prev_action, prev_valid, prev_executed, total_reward, info, step = None, True, None, 0.0, {}, 0
        # A full memory snapshot once the writes since the last one add up to the memory's size: snapshots
        # then cost no more than the writes they sum up, and any step rebuilds from one memory's worth of ops.
        snapshot_budget, written = max(4096, len(json.dumps(agent.scaffold["files"]))), 0
        t_episode = time.time()
        for step in range(max_steps):
            t0 = time.time()
            observation = obs.text
            action, record = agent.act(step, obs, prev_action, prev_valid, prev_executed)
            t_agent = time.time() - t0
            obs, reward, done, info = game.step(action)
            total_reward += reward
            record.update({"type": "step", "step": step, "observation": observation,
                           "action": action, "valid": info["valid"], "executed": info["executed"],
                           "reward": reward, "done": done, "progression": info["progression"],
                           "seconds": round(time.time() - t0, 4), "agent_seconds": round(t_agent, 4)})
            written += len(json.dumps(record["writes"])) if record["writes"] else 0
            if memory_agent and written >= snapshot_budget:
                record["snapshot"] = agent.memory.snapshot()
                snapshot_budget, written = max(4096, len(json.dumps(record["snapshot"]))), 0
            write(record)
            prev_action, prev_valid, prev_executed = action, info["valid"], info["executed"]
            if progress:
                progress(1)
            if done:
                break
        end = {"type": "end", "steps": step + 1, "progression": info.get("progression", 0.0),
               "success": info.get("success"), "success_balrog": info.get("success_balrog"),
               "end_reason": info.get("end_reason"), "achievements": info.get("achievements"),
               "return": total_reward, "seconds": round(time.time() - t_episode, 2),
               "final_observation": obs.text, "memory": agent.memory.snapshot() if memory_agent else {}}
        write(end)
    return end


# ----------------------------------------------------------------------------- hook helpers
# The authors' v0 helpers, re-expressed: their MAP ANALYSIS of the text map and their action repair.

NEIGHBOURS = {"north": (-1, 0), "south": (1, 0), "east": (0, 1), "west": (0, -1),  # (row, column) steps, their order
              "northeast": (-1, 1), "northwest": (-1, -1), "southeast": (1, 1), "southwest": (1, -1)}
ITEMS = set("$)[!?/=\"(*%~")


def tile_kind(ch):
    """What a map character is to the v0 map analysis: stairs, door, wall, rock, danger, passable, item, monster, unknown."""
    if ch in "><":
        return {">": "stairs down", "<": "stairs up"}[ch]
    if ch == "+":
        return "door"
    return ("wall" if ch in "-|" else "rock" if ch == " " else "danger" if ch in "}^" else "passable" if ch in ".#{_"
            else "item" if ch in ITEMS else "monster" if ch.isalpha() and ch != "@" else "unknown")


def letter_share(line):
    return sum(c.isalpha() and c != "@" for c in line) / max(len(line), 1)


def compass(drow, dcol):
    return ("north" if drow < 0 else "south" if drow > 0 else "") + ("east" if dcol > 0 else "west" if dcol < 0 else "") or "here"


def read_nle_map(text):
    """The map around '@' in a MiniHack/NetHack observation text, by the authors' v0 rules: the player's row is the
    first line with '@' (3+ characters, under half letters); the map is the non-blank lines 15 above to 14 below it
    that are under 55% letters (blank lines are skipped, so a blank row shifts north/south as in their code).
    Returns {"around": {direction: character, or None off the map}, "far_stairs" / "far_doors": [(Chebyshev
    distance, compass direction)] of the '>' / '+' more than 1 tile away, row by row}, or None without a player row."""
    lines = text.split("\n")
    me = next((i for i, line in enumerate(lines) if "@" in line and len(line.rstrip()) >= 3
               and letter_share(line.rstrip()) < 0.5), None)
    if me is None:
        return None
    col = lines[me].find("@")
    kept = [(i, lines[i].rstrip()) for i in range(max(0, me - 15), min(len(lines), me + 15))
            if lines[i].rstrip() and (letter_share(lines[i].rstrip()) < 0.55 or i == me)]
    at, rows = [i for i, _ in kept].index(me), [row for _, row in kept]
    around = {}
    for name, (drow, dcol) in NEIGHBOURS.items():
        r, c = at + drow, col + dcol
        around[name] = rows[r][c] if 0 <= r < len(rows) and 0 <= c < len(rows[r]) else None
    far = {">": [], "+": []}
    for j, row in enumerate(rows):
        for c, ch in enumerate(row):
            if ch in far and max(abs(j - at), abs(c - col)) > 1:
                far[ch].append((max(abs(j - at), abs(c - col)), compass(j - at, c - col)))
    return {"around": around, "far_stairs": far[">"], "far_doors": far["+"]}


def map_analysis_text(facts, kind=tile_kind, doors_on_map=0):
    """The MAP ANALYSIS text of read_nle_map's facts, each neighbour classified by `kind`: stairs, monsters and doors
    next to you, up to 3 stairs in view, optionally up to `doors_on_map` doors farther away, danger, CAN MOVE and
    BLOCKED (in the authors' order). "" for None."""
    if facts is None:
        return ""
    found = {"stairs": [], "monsters": [], "doors": [], "danger": [], "move": [], "blocked": []}
    for name, ch in facts["around"].items():
        k = "off the map" if ch is None else kind(ch)
        if k.startswith("stairs"):
            found["stairs"].append(f"{name}: '{ch}' {k}" + (", step onto it!" if ch == ">" else ""))
            found["move"].append(f"{name} ({k} '{ch}')")
        elif k == "door":
            found["doors"].append(f"{name}: '+' closed door ('open' it)")
            found["move"].append(f"{name} (door '+')")
        elif k == "monster":
            found["monsters"].append(f"{name}: '{ch}' (attack by moving into it)")
            found["move"].append(f"{name} (monster '{ch}')")
        elif k in ("passable", "item"):
            found["move"].append(f"{name} ('{ch}')")
        elif k == "danger":
            found["danger"].append(f"{name}: '{ch}' dangerous")
        else:
            found["blocked"].append(f"{name} ({k})" if ch in (None, " ") else f"{name} ({k} '{ch}')")
    far = lambda symbol, places, n: [f"'{symbol}' about {d} tiles {where}" for d, where in places[:n]]
    out = ["MAP ANALYSIS (computed from the map):"]
    for label, items, sep in (("STAIRS NEXT TO YOU", found["stairs"], "; "),
                              ("STAIRS IN VIEW", far(">", facts["far_stairs"], 3), "; "),
                              ("MONSTERS NEXT TO YOU", found["monsters"], "; "), ("DOORS", found["doors"], "; "),
                              ("DOORS ON MAP", far("+", facts["far_doors"], doors_on_map), "; "),
                              ("DANGER", found["danger"], "; "), ("CAN MOVE", found["move"], ", "),
                              ("BLOCKED", found["blocked"], ", ")):
        if items:
            out.append(f"{label}: " + sep.join(items))
    return "\n".join(out)


def nle_map_analysis(text):
    """The v0 MAP ANALYSIS of a MiniHack/NetHack observation text ("" when no player row is found)."""
    return map_analysis_text(read_nle_map(text))


TWO_STEP = {"close", "fight", "fire", "kick", "open", "zap",  # the game asks for a direction next
            "apply", "cast", "dip", "drop", "eat", "force", "invoke", "loot", "offer", "pickup", "puton", "quaff",
            "quiver", "read", "remove", "rub", "takeoff", "throw", "wear", "wield"}  # ... or for an item letter


def repair_two_step(action):
    """The authors' v0 repair: a two-step command written with its argument ('eat d', 'open north') becomes the
    command alone, as the game asks for the argument next; 'far <direction>' is a real action and stays."""
    words = action.split(None, 1)
    if len(words) < 2:
        return action.strip()
    command = words[0].lower()
    if command == "far" and words[1].strip().lower() in NEIGHBOURS:
        return action.strip()
    return command if command in TWO_STEP else action.strip()
