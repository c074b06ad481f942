"""
meta_loop.py: loop 1 of AutoMem. A meta-LLM revises the agent's scaffold (prompts, memory files,
op vocabulary, hooks.py); each revision is validated, evaluated on the fixed seeds and kept as
scaffolds/<env>/vN only if it beats the current scaffold.

    python meta_loop.py --env minihack --iterations 2 --quick            # offline: embedded SmolLM2 as agent and meta-LLM
    python meta_loop.py --env crafter --iterations 5 --meta-backend claude-cli --meta-model opus \\
        --backend openai --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-32B-Instruct --workers 8
    python meta_loop.py --env crafter --meta-backend anthropic --meta-model claude-opus-4-1 ...   # needs `pip install anthropic`
    python meta_loop.py --env crafter --meta-backend openai --meta-base-url http://host:8000/v1 --meta-model Qwen/Qwen2.5-72B-Instruct
    python meta_loop.py --env crafter --scaffold scaffolds/crafter/v3 --iterations 3   # start from another version
    python meta_loop.py --report [--env crafter]                         # version history and every candidate's verdict

Flags that meta_loop.py does not know go to eval.py unchanged: the agent's --backend, --model,
--base-url, --seeds, --episodes, --max-steps, --workers, --task, ... (--quick goes to both).

One iteration:
  1. the incumbent is evaluated with eval.py (once; eval.py resumes an interrupted run);
  2. the meta-LLM gets, within --meta-budget characters: the rules of the scaffold format, the
     incumbent's files, its results and memory-behaviour metrics, the earlier candidates and their
     verdicts, and a digest of the traces (lowest progression first: stretches without a new game
     state, invalid actions, fallbacks, actions sent back, empty searches, redundant writes, progress,
     the final memory, one step verbatim; every line cites its step);
  3. it answers with a rationale and whole files in fenced blocks, "```yaml scaffold.yaml" and
     optionally "```python hooks.py" (left out: the incumbent's hooks.py is kept);
  4. validation: scaffold_spec.load_scaffold on scaffold.yaml alone, every prompt filled with every
     placeholder, limits within the protocol's (scaffold_spec.LIMITS); jail.check_source on hooks.py; then
     hooks.py is imported in the jail (jail.py) and every hook runs there on observations rebuilt here
     by replaying the incumbent's recorded actions, then in a short smoke episode (scripted backend);
  5. evaluation on the same seeds and settings; ACCEPTANCE RULE: the candidate replaces the
     incumbent iff its mean progression > the incumbent's mean + --min-margin (default 0: strictly
     higher, as the authors). An accepted candidate is copied to a temp folder in scaffolds/<env>/
     and renamed to the next free vN (an existing version is never overwritten), with meta.json.
Every candidate stays in <run>/candidates/iterK/ (prompt.txt, reply.txt, scaffold/, sandbox/,
eval/, verdict.json). A rejected candidate costs one iteration; the loop goes on. Unlike the
authors' loop (up to 3 attempts per iteration, nothing validated before evaluation), an
iteration here is one candidate, and invalid ones never reach evaluation.

Run directory runs/meta-<env>-<start>-<agent model>-<meta model>[-quick]/, laid out, written and
resumed by loop.py (the machinery loop 2's engine shares): config.json, state.json (incumbent, every
finished iteration), evals/<start>/ (the first incumbent's eval.py run), candidates/iterK/.
Re-running the same command continues: finished iterations are kept, the meta reply of an
unfinished one is reused (reply.txt), its validation re-runs and its evaluation resumes.
The meta-LLM is an llm.py backend (claude-cli: a Claude Code session that may read the loop's traces).
Errors that are not the candidate's (meta-LLM or agent model unreachable) stop the loop; re-run.

Hook policy (what a revision's hooks.py may do):
  - the static check (jail.check_source: allowed imports, no open/eval/getattr/..., no "_" names, no
    game stepping) rejects a breach early with its line; it is a filter, not the guard.
  - the guard is the jail (jail.py): a candidate's hooks.py is never imported in this process or in
    eval's. The loop writes `trusted: false` into every candidate's scaffold.yaml (so into an accepted
    vN too), and eval.py runs such hooks in the jail: no network, no file but its scratch tmpfs, no
    environment, no fork/exec, CPU/memory/file/process limits, HOOK_SECONDS per call in validation.
    Set `trusted: true` in an accepted version after reviewing its hooks.py to run them in-process.
"""
import argparse
import itertools
import json
import os
import re
import shutil
import time
from pathlib import Path

import automem
import cli
import digest
import envs
import eval as evaluation
import jail
import llm
import loop
import metrics
import scaffold_spec
import trace_format
from digest import line
from jail import ALLOWED_IMPORTS, BANNED_NAMES, check_source
from loop import model_tag, rel, score_text, write_json

ROOT = Path(__file__).resolve().parent
META_BUDGET = 60_000       # characters of meta-LLM input (about 15k tokens)
META_MAX_TOKENS = 8192     # tokens of its reply (whole files)
QUICK = {"meta_budget": 16_000, "meta_max_tokens": 2048}  # --quick: fits the embedded model's 8192-token context

HOOK_SECONDS = 2.0         # one hook call in validation (the jail kills its worker past it)
MAX_HOOK_TEXT = 20_000     # characters one hook call may return
REPLAY_EPISODES, REPLAY_STEPS, SMOKE_STEPS = 2, 30, 5
SLOT_HOOKS = ("before_log", "before_plan")  # they may return {slot: text} (automem.Agent.fill)
TRUSTED_LINE = r"(?m)^trusted\s*:.*(\n|$)"
UNTRUSTED = "trusted: false  # hooks.py runs in the jail (jail.py); set true only after reviewing it\n"
STATE_KEYS = {  # what ctx.obs.state holds, per env (see envs.py)
    "crafter": '{"pos": [x, y], "facing": [dx, dy], "inventory": {item: n}, "achievements": [names], '
               '"status": {"health", "food", "drink", "energy": 0..9, "sleeping", "dead"}}',
    "minihack": '{"map": [21 dungeon rows, map[y][x]], "cursor": (x, y), "blstats": {"x", "y", "hitpoints", '
                '"depth", "hunger", ...}, "message": str}',
}
STATE_KEYS["nethack"] = STATE_KEYS["minihack"]


# ----------------------------------------------------------------------------- arguments and run directory

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any other flag goes to eval.py (see python eval.py --help).")
    p.add_argument("--env", help=", ".join(envs.ENVS))
    p.add_argument("--iterations", type=int, default=5, help="candidates to try in total (default %(default)s, as the paper)")
    p.add_argument("--scaffold", help="starting incumbent (default scaffolds/<env>/v0)")
    loop.add_meta_args(p, META_MAX_TOKENS)
    p.add_argument("--meta-budget", type=int, help=f"characters of meta-LLM input (default {META_BUDGET}, about 4 "
                                                   "per token); the trace digest gets what the rest leaves")
    p.add_argument("--min-margin", type=float, default=0.0, help="accept iff mean progression (%%) > incumbent's + this (default %(default)s)")
    p.add_argument("--validate-timeout", type=float, default=180, help="seconds for the validation subprocess (default %(default)s)")
    p.add_argument("--scaffolds-dir", default=str(ROOT / "scaffolds"), help="where versions live: <dir>/<env>/vN")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--run-name", help="runs/<run-name> (default: derived from env, start, agent and meta models)")
    p.add_argument("--quick", action="store_true", help=f"tiny settings for eval.py (its --quick) and the meta-LLM {QUICK}")
    p.add_argument("--report", action="store_true", help="print the version history and every candidate's verdict")
    return p.parse_known_args(argv)


def make_config(args, eval_argv):
    """Everything that defines the loop (written to config.json; a resumed run must match)."""
    if args.env not in envs.ENVS:
        raise ValueError(f"--env {args.env or '(missing)'}: choose one of {', '.join(envs.ENVS)}")
    for flag in ("--env", "--scaffold", "--run-name", "--runs-dir", "--agent"):
        if any(a == flag or a.startswith(flag + "=") for a in eval_argv):
            raise ValueError(f"{flag} is set by meta_loop.py (the loop evaluates memory-agent scaffolds in its run folder)")
    agent = evaluation.parse_args(eval_argv + (["--quick"] if args.quick else []))  # exits on a bad eval flag
    agent_model = agent.model or (llm.DEFAULT_MODEL if agent.backend in ("llamacpp", "transformers") else agent.backend)
    quick = QUICK if args.quick else {}
    meta = loop.meta_config(args, quick.get("meta_max_tokens") or META_MAX_TOKENS)
    usable, why = jail.available()
    if not usable:
        raise ValueError(f"the hook jail does not work here ({why}): candidates' hooks.py run only in it")
    start = Path(args.scaffold or Path(args.scaffolds_dir) / args.env / "v0").resolve()
    if scaffold_spec.load_scaffold(start)["env"] != args.env:  # the starting incumbent is trusted code (v0 or an accepted version)
        raise ValueError(f"scaffold {start} is not a {args.env} scaffold")
    name = "-".join(["meta", args.env, start.name, model_tag(agent_model), model_tag(meta["model"])]
                    + (["quick"] if args.quick else []))
    return {
        "run_name": args.run_name or name, "env": args.env, "start": str(start),
        "scaffolds_dir": str(Path(args.scaffolds_dir).resolve()),
        "eval_argv": eval_argv + (["--quick"] if args.quick else []),
        "meta": {**meta, "budget": args.meta_budget or quick.get("meta_budget") or META_BUDGET},
        "min_margin": args.min_margin, "validate_timeout": args.validate_timeout,
    }


def versions(env_dir):
    """{N: folder} of the versions vN in scaffolds/<env>/."""
    found = {}
    for d in Path(env_dir).glob("v*"):
        if re.fullmatch(r"v\d+", d.name) and d.is_dir():
            found[int(d.name[1:])] = d
    return found


# ----------------------------------------------------------------------------- the meta-LLM's input

RULES = """You improve the scaffold of an LLM agent that plays {env}. The agent's memory is a folder of text files.

How the agent works. Every game step runs two routines, each a fresh chat. LOG (from the second step on) shows
the model what its previous action did; the model writes memory ops such as <|APPEND|>file.txt|text<|END|> and
ends with <|DONE|> (every op of that reply runs). PLAN shows the current observation; the model may read memory
(read-only ops) and must commit one game action with <|ACTION|>name<|END|>. A routine is at most
limits.log_turns / limits.plan_turns model calls, with op results shown between calls; a reply with no op the
routine allows ends it. If PLAN never commits, fallback_action (default: the env's) runs.

scaffold.yaml keys: name, env ({env}), limits, ops (log: [...], plan: [... including ACTION]), aliases, files
(initial memory files, name: text), prompts (system: "" sends no system message; log, log_continue, plan,
plan_continue; plan_<name>: another PLAN template a before_plan hook may pick), texts (short notices: {texts}),
slots (extra placeholder names that before_log/before_plan fill), custom_ops (new op names run by the custom_op
hook), tasks (overrides of files, prompts, texts, limits, ops, fallback_action for task ids containing a key),
search_all (SEARCH file * looks through every file), optional fallback_action, optional grammar (true: every reply
is constrained to well-formed ops and valid action names, with no free text; helps weak models, removes room to
reason). Prompts are Python str.format templates: write a literal brace as {{{{ or }}}}. Placeholders allowed in
each prompt (log and plan also take the declared slots): {placeholders}.
Ops: READ, SEARCH, TAIL, COUNT, APPEND, WRITE, CREATE, UPSERT, DONE, ACTION. An alias names a shortcut, e.g.
aliases: {{UPSERT_MAP: {{op: UPSERT, file: dungeon_map.txt, key: "({{0}}):"}}}} makes <|UPSERT_MAP|>3,4|door<|END|>
write the line "(3,4): door". limits may not exceed: {limits}.

hooks.py (optional) defines any of these functions, called at fixed points of every step:
  observe(ctx) -> str or None        before LOG: text for the prompts' {{analysis}} (e.g. a map analysis)
  before_log(ctx) -> str, dict or None   text added to LOG's {{notices}}, or {{slot: text}} for declared slots
  after_log(ctx) -> None             after LOG (only when LOG ran): file upkeep, e.g. prune or auto-log;
                                     ctx.log_ops lists the ops LOG ran
  before_plan(ctx) -> str, dict or None  as before_log for PLAN; the dict may also hold "prompt": "plan_<name>"
  check_action(ctx, action) -> str or None   a reason refuses the committed action; it goes back into the same
                                     PLAN chat (at most limits.gate_retries times a step)
  repair_action(ctx, action) -> str or None  rewrites the final action (also the fallback), e.g. 'eat d' -> 'eat'
  custom_op(ctx, op) -> str          runs an op named in custom_ops (op.name, op.args); returns its result text,
                                     or raises ValueError(reason) to refuse it (an error result)
ctx.step (int); ctx.obs.text / .long / .short (str); ctx.obs.state = {state}; ctx.memory: read(name) -> str,
names(), snapshot() -> {{name: text}}; ctx.write(op, *args) writes memory (APPEND, WRITE, CREATE, UPSERT) and is
recorded; ctx.game.actions (valid action names); ctx.episode (a dict kept for the whole episode); ctx.actions
(the actions returned so far); ctx.prev_action / ctx.prev_executed / ctx.prev_valid (last step's action, what the env
ran, whether it was valid). hook_helpers.nle_map_analysis(text) is the v0 map analysis; hook_helpers.repair_two_step(action)
the v0 repair.
Hook rules, enforced by a static check, then by the OS jail the hooks run in (jail.py: no network, no
processes, a read-only file system; a violation rejects the revision): import only {imports}; never call
{names}; no name or attribute starting with "_"; no file, process or network access (files only through
ctx.memory and ctx.write); printing goes nowhere; each call returns within {seconds} s and at most {text}
characters; never step the game.

Goal: raise the mean progression over the fixed evaluation episodes. Your revision is evaluated once on the
same seeds and replaces the current scaffold only if its mean progression is strictly higher{margin}.
Change how the memory system works (files, ops, hooks, what the prompts ask for), not only the wording, and
keep memory operations in the model's hands. Study the digest below: fix what made the agent fail.

Reply in exactly this format (a program parses it; whole files, not diffs):
RATIONALE: what you change and why, citing trace steps.
```yaml scaffold.yaml
<the complete new scaffold.yaml>
```
```python hooks.py
<the complete new hooks.py>
```
Leave out the hooks.py block to keep the current hooks.py; an empty hooks.py block removes all hooks."""


def build_prompt(config, state):
    """The meta-LLM's input: rules, incumbent files, results, history, then a trace digest in what is left."""
    env, inc = config["env"], state["incumbent"]
    margin = f" by more than {config['min_margin']} points" if config["min_margin"] else ""
    parts = [RULES.format(env=env, placeholders="; ".join(f"{k}: {', '.join(sorted(v))}"
                                                          for k, v in scaffold_spec.PLACEHOLDERS.items()),
                          limits=scaffold_spec.LIMITS, state=STATE_KEYS[env], texts=", ".join(scaffold_spec.TEXT_FIELDS), imports=", ".join(ALLOWED_IMPORTS),
                          names=", ".join(sorted(BANNED_NAMES)), seconds=HOOK_SECONDS, text=MAX_HOOK_TEXT,
                          margin=margin)]
    scaffold_dir = ROOT / inc["path"]
    files = f"\n\n## Current scaffold {inc['version']}: mean progression {score_text(inc['score'])} %\n"
    files += f"```yaml scaffold.yaml\n{(scaffold_dir / 'scaffold.yaml').read_text().rstrip()}\n```\n"
    hooks = scaffold_dir / "hooks.py"
    files += f"```python hooks.py\n{hooks.read_text().rstrip()}\n```\n" if hooks.is_file() else "(no hooks.py)\n"
    parts.append(files)
    parts.append("\n## Its results on the evaluation seeds\n" + results_text(inc["results"]))
    parts.append("\n## Earlier candidates of this loop\n" + history_text(state))
    head = "".join(parts)
    digest_head = "\n## Trace digest (lowest progression first; 'step N' is the step's number in its trace)\n"
    if config["meta"]["backend"] == "claude-cli":  # an agentic session may read the whole traces too
        digest_head += f"The full traces (JSONL, one line per step) are in {(ROOT / inc['eval']).resolve() / 'traces'}.\n"
    budget = config["meta"]["budget"] - len(head) - len(digest_head)
    return head + digest_head + digest.trace_digest(ROOT / inc["eval"], budget)


def results_text(results):
    lines = [f"progression {score_text(results['progression'])} % over {results['episodes']} episodes"]
    if len(results["tasks"]) > 1:
        lines += [f"  {task}: {score_text(s)} %" for task, s in results["tasks"].items()]
    lines.append("memory behaviour and cost: " + ", ".join(
        f"{k} {'n/a' if v is None else round(v, 3)}" for k, v in results["behaviour"].items()))
    lines.append("(unproductive: share of steps that left the game state unchanged or went back to one of the last "
                 f"{metrics.OSCILLATION_WINDOW}; redundant write: it repeated what the file held; empty search: "
                 "SEARCH found nothing; fallback: PLAN committed no action)")
    return "\n".join(lines) + "\n"


def history_text(state):
    if not state["iterations"]:
        return "(none yet)\n"
    lines = []
    for it in state["iterations"]:
        lines.append(f"- iter{it['iteration']} (from {it['parent']}): {it['verdict']}, progression "
                     f"{score_text(it['score'])} vs {score_text(it['parent_score'])}; {it['reason']}. "
                     f"Rationale: {line(it['rationale'], 300) or '-'}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- validation

def check_schema(scaffold_dir, env):
    """automem's schema check of scaffold.yaml (imports no model code: hooks.py is not written yet),
    plus: the right env, every prompt filled with every placeholder, limits within the protocol's."""
    spec = scaffold_spec.load_scaffold(scaffold_dir)
    if spec["env"] != env:
        raise ValueError(f"env is {spec['env']!r}, not {env!r}")
    for name, text in spec["prompts"].items():
        allowed = scaffold_spec.PLACEHOLDERS.get(name, scaffold_spec.PLACEHOLDERS["plan"]) | set(spec["slots"])
        try:
            text.format(**{k: "x" for k in allowed})
        except (ValueError, IndexError, KeyError, AttributeError) as e:
            raise ValueError(f"prompts.{name} cannot be filled: {e}") from None
    # result_max_chars: None is the protocol's (no cap); a number only tightens it
    over = {k: v for k, v in spec["limits"].items()
            if v is not None and scaffold_spec.LIMITS[k] is not None and not v <= scaffold_spec.LIMITS[k]}
    if over:
        raise ValueError(f"limits {over} unknown or outside 1..the protocol's {scaffold_spec.LIMITS} "
                         f"(a revision may not win by spending more)")


def validate_hooks(scaffold_dir, work, env, replay, timeout):
    """Run a candidate's hooks in the jail (never in this process): every hook on observations rebuilt
    here by replaying the recorded actions, then a smoke episode with the scripted backend; each call
    within HOOK_SECONDS, all within `timeout` s. ValueError with the reason; returns {"calls": n}."""
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    scaffold = scaffold_spec.load_scaffold(scaffold_dir, jailed=True)
    jailed = scaffold["hooks"]
    if not isinstance(jailed, jail.JailedHooks):  # no hooks.py
        return {"calls": 0}
    jailed.limits["call_seconds"] = HOOK_SECONDS
    deadline = time.monotonic() + timeout

    def checked(name):  # what the agent calls: the jailed hook, within the time left, its result checked
        def call(ctx, *args):
            if time.monotonic() > deadline:
                raise ValueError(f"not finished after {timeout:g} s (hooks too slow)")
            out = jailed[name](ctx, *args)
            if isinstance(out, dict) and name in SLOT_HOOKS:
                texts = list(out.values())
                ok = all(isinstance(k, str) for k in out) and all(t is None or isinstance(t, str) for t in texts)
            else:
                texts, ok = [out], out is None or isinstance(out, str)
            if not ok or sum(len(t or "") for t in texts) > MAX_HOOK_TEXT:
                raise ValueError(f"{name} returned {type(out).__name__} {line(repr(out), 80)}: hooks return None or a "
                                 f"str ({', '.join(SLOT_HOOKS)}: or {{slot: str}}), at most {MAX_HOOK_TEXT} characters")
            return out
        return call
    hooks = {name: checked(name) for name in jailed}
    try:
        jailed.start()  # imports hooks.py, in the jail
        for ep in replay:
            replay_episode({**scaffold, "hooks": hooks}, env, ep, work / f"replay_{ep['task']}_{ep['seed']}")
        smoke_episode({**scaffold, "hooks": hooks}, env, replay[0], work)
    finally:
        jailed.close()
    return {"calls": jailed.calls}


def replay_episode(scaffold, env, ep, memory_dir):
    """The hooks on one recorded episode: its actions replayed in the game, every hook called as in an evaluation."""
    game = envs.make(env, ep["task"])
    obs = game.reset(ep["seed"])
    agent = automem.Agent(scaffold, None, game, memory_dir)
    agent.reset()  # no model: the episode's memory and hook context, as in an evaluation
    ctx, hooks = agent.ctx, scaffold["hooks"]
    try:
        for t, (action, executed) in enumerate(ep["steps"]):
            ctx.step, ctx.obs, ctx.log_ops = t, obs, []
            for name in ("observe",) + (("before_log", "after_log") if t else ()) + ("before_plan", "check_action"):
                try:
                    if name in hooks:
                        hooks[name](ctx, *([action] if name == "check_action" else []))
                except ValueError as e:
                    raise ValueError(f"{e} on the recorded {ep['task']} seed {ep['seed']} step {t}") from None
            ctx.actions.append(action)
            ctx.prev_action, ctx.prev_executed, ctx.prev_valid = action, executed, action == executed
            obs, _, done, _ = game.step(executed)
            if done:
                break
    finally:
        game.close()


def smoke_episode(scaffold, env, ep, work):
    """The hooks in SMOKE_STEPS live steps of the agent with a scripted model that commits a different action each step."""
    game = envs.make(env, ep["task"])
    actions = itertools.cycle(game.actions)  # a different action each step, for check_action
    smoke = llm.load("scripted", replies=lambda messages: f"<|DONE|> <|ACTION|>{next(actions)}<|END|>")
    agent = automem.Agent(scaffold, smoke, game, work / "smoke_memory")
    try:
        automem.run_episode(agent, game, ep["seed"], work / "smoke.jsonl", max_steps=SMOKE_STEPS)
    except ValueError as e:
        raise ValueError(f"smoke episode ({SMOKE_STEPS} steps, scripted model): {e}") from None
    finally:
        game.close()


def replay_request(eval_dir):
    """The first REPLAY_STEPS recorded steps of REPLAY_EPISODES episodes of an eval run (episode 0 of each task first)."""
    paths = sorted(Path(eval_dir, "traces").rglob("*.jsonl"), key=lambda p: (p.stem.split("__")[-1], p.name))
    chosen = []
    for path in paths[:REPLAY_EPISODES]:
        header, steps, _ = trace_format.read_trace(path)
        chosen.append({"task": header["task"], "seed": header["seed"],
                       "steps": [[s["action"], s["executed"]] for s in steps[:REPLAY_STEPS]]})
    return chosen


# ----------------------------------------------------------------------------- the loop

class Rejected(Exception):
    """A candidate rejected before its evaluation: args (stage, reason)."""


def run_loop(config, run_dir, iterations):
    """Evaluate the starting incumbent once, then run iterations until `iterations` are finished."""
    start = Path(config["start"])
    meta_llm = loop.load_meta(config["meta"], cwd=run_dir,  # a claude-cli session may read every version and trace
                              read_dirs=[run_dir, Path(config["scaffolds_dir"]) / config["env"], start])

    def first():
        eval_dir = run_dir / "evals" / start.name
        results = loop.evaluate(config["eval_argv"] + ["--scaffold", str(start)], config["env"], eval_dir)
        incumbent = {"version": start.name, "path": rel(start), "eval": rel(eval_dir), "score": results["progression"],
                     "results": results}
        return {"start": incumbent, "incumbent": incumbent}
    return loop.run(run_dir, iterations, first, lambda state, k, it_dir: run_iteration(config, state, k, it_dir, meta_llm))


def run_iteration(config, state, k, it_dir, meta_llm):
    """Propose, validate, evaluate and judge candidate k; return its record (verdict, reason, scores)."""
    env, inc = config["env"], state["incumbent"]
    env_dir = Path(config["scaffolds_dir"]) / env
    reply, proposal = loop.ask(meta_llm, it_dir, config["meta"]["seed"] + k, lambda: build_prompt(config, state),
                               {"name": f"{env}-v{max(versions(env_dir), default=0) + 1}"})  # the version it may become
    record = {"iteration": k, "parent": inc["version"], "parent_path": inc["path"], "parent_score": inc["score"],
              "score": None, "version": None, "rationale": "", "date": proposal["date"]}

    def reject(stage, reason):
        record.update(verdict="rejected", stage=stage, reason=reason)
        write_json(it_dir / "verdict.json", record)
        return record

    try:
        files, record["rationale"] = loop.parse_files(reply, ("scaffold.yaml", "hooks.py"), required=["scaffold.yaml"])
    except ValueError as e:
        return reject("parse", str(e))
    cand = it_dir / "scaffold"
    try:
        write_candidate(files, proposal["name"], ROOT / inc["path"], cand, env)
    except Rejected as e:
        return reject(*e.args)
    try:
        validate_hooks(cand, it_dir / "sandbox", env, replay_request(ROOT / inc["eval"]), config["validate_timeout"])
    except ValueError as e:
        return reject("sandbox", str(e))
    try:  # SystemExit (the agent's model failed) stops the loop
        results = loop.evaluate(config["eval_argv"] + ["--scaffold", str(cand)], env, it_dir / "eval")
    except jail.JailError:
        raise  # the machine's fault, not the candidate's: stop the loop
    except Exception as e:  # e.g. a hook that failed in a state the validation did not reach
        return reject("evaluation", f"{type(e).__name__}: {line(e, 300)}")
    record["score"] = score = results["progression"]
    margin = config["min_margin"]
    if not score["mean"] > inc["score"]["mean"] + margin:
        return reject("score", f"not better: {score['mean']:.2f} <= {inc['score']['mean']:.2f} (incumbent) + {margin:g}")
    version = publish(cand, env_dir, version_meta(config, proposal["name"], record, results, it_dir))
    record.update(verdict="accepted", stage="score", version=version.name,
                  reason=f"better: {score['mean']:.2f} > {inc['score']['mean']:.2f} (incumbent) + {margin:g}")
    write_json(it_dir / "verdict.json", record)
    return {**record, "incumbent": {"version": version.name, "path": rel(version), "eval": rel(it_dir / "eval"),
                                    "score": score, "results": results}}


def write_candidate(files, name, inc_dir, cand, env):
    """The candidate's folder from the reply's files: named `name`, marked untrusted, schema-checked, its
    hooks.py (or the incumbent's, when the reply has none) through the static check. Rejected otherwise."""
    shutil.rmtree(cand, ignore_errors=True)
    cand.mkdir()
    yaml_text = re.sub(r"(?m)^name:.*$", f"name: {name}", files["scaffold.yaml"], count=1)
    inc_files = {n: (inc_dir / n).read_text() for n in ("scaffold.yaml", "hooks.py") if (inc_dir / n).is_file()}
    hooks = files.get("hooks.py", inc_files.get("hooks.py"))  # no hooks.py block: the incumbent's stays
    unnamed = lambda text: re.sub(TRUSTED_LINE, "", re.sub(r"(?m)^name:.*$", "", text, count=1))
    if unnamed(yaml_text) == unnamed(inc_files["scaffold.yaml"]) and hooks == inc_files.get("hooks.py"):
        raise Rejected("parse", "no change: the files are the incumbent's")
    (cand / "scaffold.yaml").write_text(re.sub(TRUSTED_LINE, "", yaml_text).rstrip("\n") + "\n" + UNTRUSTED)
    try:
        check_schema(cand, env)  # before hooks.py exists, so loading imports no model code
        if scaffold_spec.load_scaffold(cand).get("trusted") is not False:
            raise ValueError(f"scaffold.yaml sets trusted itself: the loop writes {UNTRUSTED.strip()}")
    except Exception as e:  # a ValueError naming the problem, or whatever a malformed shape raised
        raise Rejected("schema", str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}") from None
    if hooks is not None:
        try:
            check_source(hooks)
        except ValueError as e:
            raise Rejected("static check", str(e)) from None
        (cand / "hooks.py").write_text(hooks)


def version_meta(config, name, record, results, it_dir):
    """meta.json of an accepted version: its lineage, scores, rule, rationale and how it was made."""
    margin = config["min_margin"]
    return {"name": name, "hash": results["hash"], "parent": record["parent"], "parent_path": record["parent_path"],
            "score": record["score"], "parent_score": record["parent_score"],
            "rule": f"mean progression > incumbent's + {margin:g} on the same seeds and settings",
            "rationale": record["rationale"], "meta_model": {k: config["meta"][k] for k in ("backend", "model")},
            "agent": json.loads((it_dir / "eval" / "config.json").read_text())["backend"],
            "eval_argv": config["eval_argv"], "run": config["run_name"], "iteration": record["iteration"],
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def publish(cand, env_dir, meta):
    """Copy an accepted candidate to scaffolds/<env>/vN (the next free N) through a temp folder and one rename."""
    for d in versions(env_dir).values():  # published before an interruption: the same version again
        m = d / "meta.json"
        if m.is_file() and {k: json.loads(m.read_text()).get(k) for k in ("run", "iteration")} == \
                {"run": meta["run"], "iteration": meta["iteration"]}:
            return d
    tmp = Path(env_dir) / f".tmp-{meta['run']}-iter{meta['iteration']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("scaffold.yaml", "hooks.py"):
        if (cand / name).is_file():
            shutil.copyfile(cand / name, tmp / name)
    n = int(meta["name"].rsplit("-v", 1)[1])
    while True:
        target = Path(env_dir) / f"v{n}"
        if not target.exists():
            write_json(tmp / "meta.json", {**meta, "version": target.name})
            try:
                os.rename(tmp, target)  # fails if another process created a non-empty v{n} meanwhile
                return target
            except OSError:
                pass
        n += 1


# ----------------------------------------------------------------------------- report

def made_by(meta):
    """Who made a version: a loop-1 iteration, or (shipped versions) where it comes from."""
    return f"{meta['run']} iter{meta['iteration']}" if meta.get("run") else meta.get("source") or "hand-written"


def report(runs_dir, scaffolds_dir, env=None):
    """Markdown: the versions of each env with their lineage, then every loop run's candidates and verdicts."""
    out = []
    for env_name in [env] if env else envs.ENVS:
        found = versions(Path(scaffolds_dir) / env_name)
        if not found:
            continue
        rows = []
        for _, d in sorted(found.items()):
            meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").is_file() else None
            rows.append([d.name, meta["parent"], score_text(meta["score"]), score_text(meta["parent_score"]),
                         made_by(meta), line(meta["rationale"], 120)] if meta else
                        [d.name, "-", "-", "-", "hand-written", ""])
        out += [f"## {env_name}: versions in {rel(Path(scaffolds_dir) / env_name)}", "",
                cli.markdown_table(["version", "parent", "progression %", "parent's %", "made by", "rationale"], rows)]
        for state_path in sorted(Path(runs_dir).glob("*/state.json")):
            config_path = state_path.parent / "config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            if config.get("env") != env_name or "meta" not in config:
                continue
            state = json.loads(state_path.read_text())
            start = state["start"]
            rows = [["start", start["version"], "-", score_text(start["score"]), "-", "incumbent", "evaluated first"]]
            rows += [[f"iter{it['iteration']}", it["version"] or "-", it["parent"], score_text(it["score"]),
                      score_text(it["parent_score"]), f"{it['verdict']} ({it['stage']})", line(it["reason"], 200)]
                     for it in state["iterations"]]
            out += ["", f"### loop {state_path.parent.name} (meta-LLM {config['meta']['backend']} "
                        f"{model_tag(config['meta']['model'])}): incumbent now {state['incumbent']['version']}", "",
                    cli.markdown_table(["candidate", "version", "parent", "progression %", "parent's %", "verdict", "why"],
                                       rows)]
        out.append("")
    return "\n".join(out) if out else f"no scaffold versions under {scaffolds_dir}"


def main(argv=None):
    args, eval_argv = parse_args(argv)
    if args.report:
        if eval_argv:
            cli.fail(f"--report takes only --env, --runs-dir and --scaffolds-dir, not {' '.join(eval_argv)}")
        print(report(args.runs_dir, args.scaffolds_dir, args.env))
        return
    try:
        config = make_config(args, eval_argv)
        run_dir = loop.prepare_run_dir(config, args.runs_dir)
        print(f"loop {run_dir}: {args.iterations} iterations")
        run_loop(config, run_dir, args.iterations)
    except (ValueError, FileNotFoundError, llm.BackendError, jail.JailError) as e:
        cli.fail(e)
    print(report(args.runs_dir, config["scaffolds_dir"], config["env"]))


if __name__ == "__main__":
    llm.preload_cuda_llama()
    main()
