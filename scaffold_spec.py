"""
scaffold_spec.py: a scaffold as data, read and checked. A scaffold is a folder, scaffolds/<env>/vN/:
scaffold.yaml (prompts, texts, initial memory files, op vocabulary, limits, slots, custom ops, per-task
overrides) and optionally hooks.py (functions named after the hook points in HOOKS; automem.py's
docstring says when each runs). Loop 1 writes new versions beside v0; a scaffold it wrote says
`trusted: false`, and its hooks then run in jail.py's jail.

load_scaffold raises ValueError naming the first problem (key, type, placeholder, op, action) and the
fix; the agent gets the spec with every default filled (LIMITS, TEXTS) and a hash of the two files.

Usage:
    scaffold = scaffold_spec.load_scaffold("scaffolds/crafter/v0")
    scaffold = scaffold_spec.for_task(scaffold, "MiniHack-Corridor-R3-v0")   # its `tasks` overrides applied
"""
import hashlib
import importlib.util
import re
import string
from pathlib import Path

import yaml

import memory_fs

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
LIMITS = {"log_turns": 10, "plan_turns": 10, "max_tokens": 4096, "search_max_lines": 1000,
          "result_max_chars": None, "gate_retries": 2, "stuck_after": 3}
SCAFFOLD_KEYS = {"name", "env", "prompts", "files", "ops", "aliases", "limits", "grammar", "fallback_action",
                 "search_all", "texts", "slots", "custom_ops", "tasks", "description", "trusted"}
SLOT = re.compile(r"[a-z][a-z0-9_]{0,39}")
OP_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,39}")


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
    check_prompts(spec, slots, where)
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


def check_prompts(spec, slots, where):
    """Raise ValueError naming the first unknown or missing prompt or text, or a placeholder it may not use."""
    prompts = spec["prompts"]
    for name, text in prompts.items():
        base = name if name in PLACEHOLDERS else "plan" if re.fullmatch(r"plan_[a-z0-9_]+", name) else None
        if base is None:
            raise ValueError(f"{where}: prompts.{name}: unknown prompt (known: {sorted(PLACEHOLDERS)}, or "
                             "plan_<name> for a PLAN template a hook can pick)")
        allowed = PLACEHOLDERS[base] | (set(slots) if base in ("log", "plan") else set())
        check_template(text, allowed, f"{where}: prompts.{name}")
    missing = [name for name in PLACEHOLDERS if name not in prompts and name != "system"]
    if missing:
        raise ValueError(f"{where}: prompts.{missing[0]} is missing")
    for name, text in (spec.get("texts") or {}).items():
        if name not in TEXT_FIELDS:
            raise ValueError(f"{where}: texts.{name}: unknown text (known: {sorted(TEXT_FIELDS)})")
        check_template(text, TEXT_FIELDS[name], f"{where}: texts.{name}")


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
