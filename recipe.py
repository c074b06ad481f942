"""
recipe.py: loop 2's training recipe (the LoRA config, from the authors' per-env priors within bounds, and the
data selection) and the training engine that evolves it: a meta-LLM proposes select() + a LoRA config, each
recipe is trained (train_lora.py sft) and scored by the two-model evaluation (specialist for LOG and memory
consultation, base model for the world action). Its command line is `train_lora.py engine`:

    python train_lora.py engine --env crafter --iterations 5 --meta-backend openai --meta-model <name> \\
        --model <base> --eval-backend transformers [--eval-args="--quick"]

The engine runs on loop 1's machinery (loop.py): runs/<name>/ holds config.json, state.json (the
baseline, the best recipe as incumbent, one record per recipe; re-running resumes), evals/base/ and
candidates/iterK/ (prompt.txt, reply.txt, select.py, data, adapter, sft.log, eval run, verdict.json).
The meta-LLM answers with whole files, "```python select.py" and "```json recipe.json" (the LoRA
config). A proposed select() must pass the static hook policy (jail.check_source) and runs only in
the jail (jail.py, as `data --jail` runs it), all of it within --select-timeout; evaluations run
eval.py in this process, SFT runs as a subprocess (its GPU memory is freed when it ends).
"""
import gc
import hashlib
import inspect
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cli
import eval as evaluation
import jail
import llm
import loop
import sft_data
import trace_format

ROOT = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- the LoRA config

# The authors' LoRA settings per env (PROTOCOL.md). batch is the effective batch (micro_batch x accumulation).
PRIORS = {
    "crafter": {"rank": 256, "alpha": 512, "lr": 5e-5, "epochs": 4, "batch": 32, "targets": "attention"},
    "minihack": {"rank": 128, "alpha": 256, "lr": 5e-5, "epochs": 3, "batch": 16, "targets": "all-linear"},
    "nethack": {"rank": 256, "alpha": 512, "lr": 5e-5, "epochs": 1, "batch": 32, "targets": "all-linear"},
}
COMMON = {"dropout": 0.0, "max_len": 16384, "warmup": 0.05, "micro_batch": 1}  # cutoff 16384, cosine schedule
BOUNDS = {  # what a recipe may set: (type, low, high)
    "rank": (int, 1, 1024), "alpha": (float, 0.01, 8192), "dropout": (float, 0.0, 0.5), "lr": (float, 1e-7, 1e-2),
    "epochs": (float, 0.01, 20), "batch": (int, 1, 1024), "micro_batch": (int, 1, 64),
    "max_len": (int, 128, 131072), "warmup": (float, 0.0, 0.5), "targets": (str, None, None),
}


def lora_config(env, overrides):
    """The env's priors with the given keys replaced; ValueError names a bad key or value."""
    cfg = {**COMMON, **PRIORS[env]}
    for key, value in overrides.items():
        if key not in BOUNDS:
            raise ValueError(f"unknown LoRA config key {key!r}: use {', '.join(BOUNDS)}")
        kind, low, high = BOUNDS[key]
        if kind is str:
            if not isinstance(value, str) or not re.fullmatch(r"attention|all-linear|[a-z_0-9]+(,[a-z_0-9]+)*", value):
                raise ValueError(f"targets {value!r}: use 'attention', 'all-linear' or module names like 'q_proj,v_proj'")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ValueError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        elif not low <= value <= high:
            raise ValueError(f"{key}={value} is outside [{low}, {high}]")
        cfg[key] = kind(value) if kind is not str else value
    if cfg["batch"] % cfg["micro_batch"]:
        raise ValueError(f"batch {cfg['batch']} must be a multiple of micro_batch {cfg['micro_batch']}")
    return cfg


# ----------------------------------------------------------------------------- training engine

META_MAX_TOKENS = 4096  # tokens of the meta-LLM's reply (its default; --meta-max-tokens)
RECIPE_FILES = ("select.py", "recipe.json")  # what a proposal holds, as fenced files (loop.parse_files)
META_PROMPT = """You improve the training recipe of a "memory specialist": a LoRA adapter trained on an LLM agent's own turns in {env}.
The agent keeps a folder of text files as memory. Each game step it runs LOG (it sees what its last action did and records what is worth
remembering with SEARCH/READ/TAIL/COUNT and APPEND/WRITE/CREATE/UPSERT ops, then <|DONE|>) and PLAN (it consults memory with read-only
ops, then commits one game action). A selection function picks which recorded turns to train on; after training, the specialist runs LOG
and the memory consultation of PLAN while the base model commits the action. Score: game progression (%) on fixed evaluation seeds;
the baseline is the base model alone.

Each candidate turn reaches select(example) as a dict with these keys:
{fields}

The current best selection function{best_note}:
```python
{source}
```
What it keeps from the training traces: {stats}

LoRA config keys, with the defaults for {env}: {defaults}
Bounds: {bounds}; targets is "attention", "all-linear" or module names like "q_proj,v_proj"; batch is the effective batch.

Recipes tried so far (iteration 0: the baseline):
{ledger}

Propose one new recipe that you expect to score higher than every recipe above. Reply in exactly this format (a program
parses it; whole files):
RATIONALE: what you change and why.
```python select.py
def select(example):
    ...
    return keep, "rule name"
```
```json recipe.json
{{"rank": 64, "lr": 0.0001}}
```
select must be deterministic plain Python and return (bool, str); it may import only {imports}, and touches no file,
process or network. recipe.json is a JSON object with any of the LoRA config keys above (missing keys keep the defaults)."""


def parse_proposal(text, env):
    """(select source, LoRA config, rationale) from a meta-LLM reply; ValueError '<stage>: <what is wrong>'
    (stage parse, static check, select or config). The source passed the static hook policy; it then runs only in the jail."""
    try:
        files, rationale = loop.parse_files(text, RECIPE_FILES, required=RECIPE_FILES)
    except ValueError as e:
        raise ValueError(f"parse: {e}") from None
    source = files["select.py"]
    try:
        jail.check_source(source, name="select.py")  # syntax, allowed imports, no file/process access, no "_" names
    except ValueError as e:
        raise ValueError(f"static check: {e}") from None
    if not re.search(r"^def select\s*\(", source, re.M):
        raise ValueError("select: select.py defines no top-level def select(example)")
    try:
        overrides = json.loads(files["recipe.json"])
    except json.JSONDecodeError as e:
        raise ValueError(f"config: recipe.json is not JSON ({e.msg} at char {e.pos})") from None
    try:
        if not isinstance(overrides, dict):
            raise ValueError("recipe.json holds no JSON object")
        return source, lora_config(env, overrides), rationale
    except ValueError as e:
        raise ValueError(f"config: {e}") from None


def run_logged(cmd, log, timeout=None):
    """Run a command with its output in `log`; return (ok, reason: its last error line)."""
    with open(log, "w") as f:
        f.write(" ".join(map(shlex.quote, cmd)) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout} s"
    if rc == 0:
        return True, ""
    lines = [ln for ln in Path(log).read_text().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return False, (errors or lines or [f"exit code {rc}"])[-1][:300]


def select_data(config, select_path, out):
    """The training data a proposed select() keeps, the function running in the jail, all of it within
    select_timeout s; returns the data's summary (kept: a resumed iteration reuses the data)."""
    if sft_data.summary_path(out).is_file():
        return json.loads(sft_data.summary_path(out).read_text())
    jailed, deadline = sft_data.load_select(select_path, jailed=True), time.monotonic() + config["select_timeout"]

    def timed(example):
        if time.monotonic() > deadline:
            raise ValueError(f"not finished after {config['select_timeout']:g} s")
        return jailed(example)
    return sft_data.build_dataset(config["runs"], out, timed)


def evaluate_recipe(config, eval_dir, adapter=None):
    """The two-model evaluation in this process (the base model alone when adapter is None): progression and
    the memory metrics the meta-LLM sees. SystemExit (a model that fails) stops the engine: re-run to resume."""
    argv = ["--backend", config["eval_backend"], "--model", config["eval_model"], "--no-replay",
            *shlex.split(config["eval_args"])]
    if adapter:  # the adapter folder: eval.py finds the GGUF LoRA that sft writes there when llama.cpp needs it
        argv += ["--memory-adapter", str(adapter)]
    try:
        result = loop.evaluate(argv, config["env"], eval_dir)
    finally:  # let the models go: the next SFT subprocess needs the GPU memory they hold
        evaluation.WORKER.clear()
        gc.collect()
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            sys.modules["torch"].cuda.empty_cache()
    keys = ("log_writes_per_search", "empty_search_rate", "redundant_write_rate", "unproductive_rate", "invalid_action_rate")
    return {**result["progression"], "episodes": result["episodes"],
            "behaviour": {k: result["behaviour"].get(k) for k in keys}}


def ledger_table(state):
    """The recipes as a Markdown table, the baseline first; * marks the best evaluated recipe."""
    base, best = state["start"], state["incumbent"]
    rows = []
    for r in [base] + state["iterations"]:
        score, cfg, tr = r.get("score"), r.get("config") or {}, r.get("train") or {}
        rows.append([("*" if best and r["iteration"] == best["iteration"] else "") + str(r["iteration"]), r["verdict"],
                     f"{score['mean']:.2f}±{score['se']:.2f}" if score else "",
                     f"{score['mean'] - base['score']['mean']:+.2f}" if score and r is not base else "",
                     (r.get("data") or {}).get("examples", ""), cfg.get("rank", ""), cfg.get("lr", ""),
                     cfg.get("epochs", ""), cfg.get("targets", ""),
                     f"{tr['loss_before']:.3f}->{tr['loss_after']:.3f}" if tr else "", r.get("reason", "")[:90]])
    return cli.markdown_table(["iter", "verdict", "progression", "vs base", "examples", "rank", "lr", "epochs", "targets",
                               "loss before->after", "reason"], rows)


def meta_prompt(env, state, default_stats):
    """The meta-LLM's input: the select() fields, the best recipe so far (or the hand-written one) and every recipe tried."""
    best = state["incumbent"]
    source = Path(best["select"]).read_text() if best else inspect.getsource(sft_data.select)
    stats = best["data"] if best else default_stats
    ledger = [json.dumps({**{k: r.get(k) for k in ("iteration", "verdict", "score", "reason", "config", "train")},
                          "data": {k: (r.get("data") or {}).get(k) for k in ("examples", "rules", "routines")}})
              for r in [state["start"]] + state["iterations"]]
    return META_PROMPT.format(
        env=env, fields="\n".join(f"  {k}: {v}" for k, v in sft_data.FIELDS.items()),
        best_note=f" (iteration {best['iteration']}, progression {best['score']['mean']:.2f})" if best else " (the hand-written default)",
        source=source.rstrip(), stats=json.dumps({k: stats.get(k) for k in ("examples", "rules", "envs", "routines")}),
        defaults=json.dumps(lora_config(env, {})), bounds=json.dumps({k: v[1:] for k, v in BOUNDS.items() if v[0] is not str}),
        ledger="\n".join(ledger), imports=", ".join(jail.ALLOWED_IMPORTS))


def recipe_iteration(config, state, k, it_dir, meta_llm, default_stats):
    """Recipe k: propose (meta-LLM) -> check -> data (select() in the jail) -> SFT (a subprocess) -> two-model
    evaluation; returns its record, carrying it as the incumbent when it beats the best so far."""
    t0 = time.time()
    reply, proposal = loop.ask(meta_llm, it_dir, config["meta"]["seed"] + k,
                               lambda: meta_prompt(config["env"], state, default_stats))
    record = {"iteration": k, "date": proposal["date"], "select": str(it_dir / "select.py")}

    def verdict(name, stage, reason):
        record.update(verdict=name, stage=stage, reason=reason, seconds=round(time.time() - t0, 1))
        loop.write_json(it_dir / "verdict.json", record)
        return record

    try:
        source, record["config"], record["rationale"] = parse_proposal(reply, config["env"])
    except ValueError as e:
        return verdict("rejected", str(e).split(":")[0], str(e))
    record["selector_sha256"] = hashlib.sha256(source.encode()).hexdigest()[:12]
    (it_dir / "select.py").write_text(source + "\n")
    try:
        record["data"] = select_data(config, it_dir / "select.py", it_dir / "data.jsonl")
    except ValueError as e:  # select() raised, timed out or kept nothing (a HookError is a ValueError)
        return verdict("rejected", "select", f"select: {e}")
    adapter = it_dir / "adapter"
    flags = [f"--{key.replace('_', '-')}={v}" for key, v in record["config"].items()]
    ok, reason = run_logged([sys.executable, str(ROOT / "train_lora.py"), "sft", "--data", str(it_dir / "data.jsonl"),
                             "--out", str(adapter), "--env", config["env"], "--model", config["model"], *flags,
                             *shlex.split(config["sft_args"])], it_dir / "sft.log")
    if not ok:
        return verdict("failed", "sft", f"sft: {reason}")
    card = json.loads((adapter / "card.json").read_text())
    record["train"] = {key: card[key] for key in ("loss_before", "loss_after", "steps", "examples", "seconds")}
    record.update(adapter=str(adapter), score=evaluate_recipe(config, it_dir / "eval", adapter))
    verdict("evaluated", "eval", f"{record['score']['mean'] - state['start']['score']['mean']:+.2f} vs baseline")
    best = state["incumbent"]
    if best is None or record["score"]["mean"] > best["score"]["mean"]:
        return {**record, "incumbent": dict(record)}
    return record


def engine_config(args):
    """Everything that defines an engine run (config.json: a resumed run must match)."""
    model = str(args.model or llm.embedded_model())
    if args.eval_backend == "llamacpp" and not model.endswith(".gguf"):
        raise ValueError("--eval-backend llamacpp runs the adapter.gguf that sft writes for a GGUF base only: pass a .gguf "
                         "--model, or --eval-backend transformers")
    return {"run_name": args.name, "loop": "engine", "env": args.env, "runs": [str(Path(r).resolve()) for r in args.runs],
            "model": model, "eval_backend": args.eval_backend, "eval_model": str(args.eval_model or model),
            "eval_args": args.eval_args, "sft_args": args.sft_args, "seeds": str(Path(args.seeds).resolve()),
            "select_timeout": args.select_timeout, "meta": loop.meta_config(args, META_MAX_TOKENS)}


def run_engine(args):
    """The engine on loop.py's machinery: the baseline evaluated once, then recipes until args.iterations are done."""
    config = engine_config(args)
    run_dir = loop.prepare_run_dir(config, args.runs_dir)
    traces = [trace_format.read_trace(p)[0] for p in sft_data.trace_paths(config["runs"])]
    leaked = sorted({h["seed"] for h in traces if h and h.get("env") == args.env}
                    & set(evaluation.read_seeds(config["seeds"]).get(args.env, [])))
    if leaked:
        raise ValueError(f"training traces use evaluation seeds {leaked} of {args.seeds}: record training episodes "
                         f"with eval.py --seeds <a file of other seeds>")
    default = run_dir / "default_recipe.jsonl"  # what the hand-written select() keeps: shown to the meta-LLM
    default_summary = sft_data.summary_path(default)
    default_stats = json.loads(default_summary.read_text()) if default_summary.is_file() else \
        sft_data.build_dataset(config["runs"], default)
    meta_llm = loop.load_meta(config["meta"], cwd=run_dir, read_dirs=[run_dir, *config["runs"]])

    def first():
        score = evaluate_recipe(config, run_dir / "evals" / "base")
        return {"start": {"iteration": 0, "verdict": "baseline", "stage": "eval", "score": score,
                          "reason": "base model alone"}, "incumbent": None}
    state = loop.run(run_dir, args.iterations, first,
                     lambda state, k, it_dir: recipe_iteration(config, state, k, it_dir, meta_llm, default_stats))
    print(ledger_table(state), flush=True)
    return state


def cmd_engine(args):
    usable, why = jail.available()
    if not usable:
        raise ValueError(f"the jail does not work here ({why}): the meta-LLM's select() runs only in it")
    try:
        state = run_engine(args)
    except llm.BackendError as e:  # state.json keeps every finished iteration: re-running resumes
        raise ValueError(f"meta-LLM call failed ({e}); re-run the same command to resume") from None
    best = state["incumbent"]
    print(f"engine: best recipe: iteration {best['iteration']} ({best['adapter']})" if best else "engine: no recipe evaluated yet")
