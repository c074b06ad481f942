"""
automem.py: the inner agent of AutoMem. Memory is a directory of text files; memory
operations share the action space with game actions. The agent runs a scaffold (scaffold_spec.py
reads and checks it); run_episode records every step in a trace (trace_format.py defines it).

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
model's writes); `custom_op` runs ops the scaffold declares in `custom_ops`. The shipped hooks share
hook_helpers.py (the v0 map analysis and action repair). Each hook gets a Context (below).
With `grammar: true` in scaffold.yaml every call is constrained to the op syntax
(memory_fs.grammar: the routine's ops on the current files, PLAN's actions by name, PLAN's last
call an action), for models too small to follow the format (the embedded 135M one).
Two-model split (loop 2, the authors' *_twomodel): `memory_llm` (+ `memory_adapter`) runs LOG and the
memory consultation of PLAN (up to `plan_turns` calls); an action it proposes is dropped, a hand-off message
closes the consultation (a failed call ends it without one), and the base `llm` continues the same PLAN chat
(up to `plan_turns` more calls, gates apply) and commits the world action.
`context="memory-only"` (the ablation) runs a scaffold with its programmatic context off: no observe,
before_*/after_log or check_action hooks; its prompts, files, ops, repair and custom ops stay.

The baselines of the paper's table run on the same runner: "window" (the last 16
messages of observations and actions) and "cot" (think, then "ACTION: <name>").

Usage (normally through eval.py):
    scaffold = scaffold_spec.load_scaffold("scaffolds/crafter/v0")
    agent = Agent(scaffold, llm.load(), game, memory_dir="runs/x/memory/ep0")
    run_episode(agent, game, seed=42, trace_path="runs/x/traces/ep0.jsonl")
    header, steps, end = trace_format.read_trace("runs/x/traces/ep0.jsonl")
"""
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import llm_core
import memory_fs
import scaffold_spec
import trace_format
from hook_context import Context

CONTEXTS = ("full", "memory-only")
CONTEXT_HOOKS = ("observe", "before_log", "before_plan", "after_log", "check_action")  # off in memory-only runs
WINDOW_MESSAGES = 16  # sliding-window baseline: last 16 messages (BALROG's max_text_history)


# ----------------------------------------------------------------------------- agent

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
        scaffold = scaffold_spec.for_task(scaffold, game.task)
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
        turns, consult_error = [], None
        if self.two_model and name == "plan":  # stage 1 of the split: the memory model consults memory first
            turns, messages, consult_error = self.consult(messages, step)
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
                **({"template": template} if template and template != name else {}),
                **({"consult_error": consult_error} if consult_error else {})}, gate

    def consult(self, messages, step):
        """Stage 1 of the two-model split: the memory model reads memory in the PLAN chat, up to plan_turns calls,
        until it proposes an action (dropped: the base model commits) or writes no op PLAN allows. A failed call
        (e.g. the specialist's own server down, after the backend's retries) ends it, as in the authors' split.
        Returns its calls, the chat the base model takes over (with a hand-off message, or as it stands once the
        calls are spent or one failed) and the failure's text (None)."""
        turns, n_turns = [], self.limits["plan_turns"]
        for k in range(n_turns):
            try:
                turn = self.call("plan", messages, step, k, memory_model=True, last=False)
            except llm_core.BackendError as e:
                return turns, messages, str(e)
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
        return turns, messages, None

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
