"""
loop.py: the machinery of AutoMem's two meta-LLM loops, loop 1 (meta_loop.py: scaffold revisions) and
loop 2's training engine (train_lora.py engine: data selection + LoRA recipes). Each loop decides what
a candidate is, how it is checked and how it is judged; both run on this:

    run_dir = loop.prepare_run_dir(config, runs_dir)      # runs/<name>/config.json: a resumed run must match
    meta_llm = loop.load_meta(config["meta"])             # an llm.py backend, from the --meta-* flags
    state = loop.run(run_dir, iterations, first, iterate)  # state.json: start, incumbent, one record per iteration
    reply, proposal = loop.ask(meta_llm, it_dir, seed, make_prompt)   # prompt.txt, reply.txt, proposal.json
    files, rationale = loop.parse_files(reply, ["select.py", "recipe.json"], required=["select.py"])
    results = loop.evaluate(eval_argv, env, eval_dir)     # eval.py in this process (it resumes a run)

Run folder runs/<name>/: config.json, state.json ({"start", "incumbent", "iterations": [record, ...]},
rewritten atomically after every iteration), evals/ (the start's evaluation) and candidates/iterK/
(prompt.txt, reply.txt, proposal.json, verdict.json and the loop's own files). Re-running the same
command continues: finished iterations are kept; an unfinished one reuses its reply (proposal.json
marks it complete) and re-runs the rest. A record holds at least iteration, verdict, stage, reason.

A meta-LLM replies with whole files in fenced blocks whose first line names the file
("```python select.py"), the rest of the reply being its rationale. Tests put a scripted backend at
META["llm"] (load_meta returns it).
"""
import json
import os
import re
import sys
import time
from pathlib import Path

import eval as evaluation
import llm

ROOT = Path(__file__).resolve().parent
META_BACKENDS = [b for b in llm.BACKENDS if b != "scripted"]
META = {}  # the loaded meta-LLM backend (one per process); tests put a scripted one at META["llm"]
LANGUAGES = {"yaml": "yaml", "py": "python", "json": "json"}  # a file block's language tag, by suffix


# ----------------------------------------------------------------------------- the meta-LLM

def add_meta_args(p, max_tokens):
    """The --meta-* flags of a loop's command line (max_tokens: its default reply length)."""
    p.add_argument("--meta-backend", default="llamacpp", choices=META_BACKENDS)
    p.add_argument("--meta-model", help="llamacpp: GGUF path (default: embedded SmolLM2, a weak one); openai/anthropic: "
                                        "model name; claude-cli: model alias (default opus)")
    p.add_argument("--meta-base-url", help="openai meta backend: server URL")
    p.add_argument("--meta-max-tokens", type=int, help=f"reply tokens of the meta-LLM (default {max_tokens})")
    p.add_argument("--meta-temperature", type=float, default=llm.TEMPERATURE, help="default %(default)s")
    p.add_argument("--meta-seed", type=int, default=0, help="iteration K samples with seed meta-seed + K (default %(default)s)")
    p.add_argument("--meta-n-ctx", type=int, default=llm.N_CTX, help="llamacpp meta backend: context tokens (default %(default)s)")
    p.add_argument("--meta-timeout", type=float, default=3600, help="seconds for one anthropic/claude-cli call (default %(default)s)")


def meta_config(args, max_tokens):
    """The meta-LLM's settings from the --meta-* flags (part of a loop's config.json)."""
    model = args.meta_model or {"llamacpp": llm.DEFAULT_MODEL, "transformers": llm.DEFAULT_MODEL,
                                "claude-cli": "opus"}.get(args.meta_backend)
    if model is None:
        raise ValueError(f"--meta-backend {args.meta_backend} needs --meta-model")
    return {"backend": args.meta_backend, "model": str(model), "base_url": args.meta_base_url,
            "max_tokens": args.meta_max_tokens or max_tokens, "temperature": args.meta_temperature,
            "seed": args.meta_seed, "n_ctx": args.meta_n_ctx, "timeout": args.meta_timeout}


def load_meta(meta, cwd=None, read_dirs=()):
    """The meta-LLM backend, loaded once per process; a claude-cli session runs in cwd and may read read_dirs."""
    if "llm" not in META:
        options = {"llamacpp": {"n_ctx": meta["n_ctx"]}, "openai": {"base_url": meta["base_url"]},
                   "anthropic": {"timeout": meta["timeout"]},
                   "claude-cli": {"timeout": meta["timeout"], "cwd": cwd, "read_dirs": read_dirs}}
        META["llm"] = llm.load(meta["backend"], meta["model"], temperature=meta["temperature"], seed=meta["seed"],
                               max_tokens=meta["max_tokens"], **options.get(meta["backend"], {}))
    return META["llm"]


def ask(meta_llm, it_dir, seed, make_prompt, facts=None):
    """The meta-LLM's reply for the iteration in it_dir, asked once: prompt.txt, reply.txt, then proposal.json
    (which marks it complete: `facts`, sizes, seconds, date); a resumed iteration reuses it. (reply, proposal)."""
    path = Path(it_dir) / "proposal.json"
    if not path.is_file():
        prompt = make_prompt()
        (it_dir / "prompt.txt").write_text(prompt)
        print(f"{it_dir.name}: asking the meta-LLM ({len(prompt)} characters in)", flush=True)
        t0 = time.time()
        reply = meta_llm.chat([{"role": "user", "content": prompt}], seed=seed).text
        (it_dir / "reply.txt").write_text(reply)
        write_json(path, {**(facts or {}), "prompt_chars": len(prompt), "reply_chars": len(reply),
                          "seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M:%S")})
    return (it_dir / "reply.txt").read_text(), json.loads(path.read_text())


def parse_files(text, names, required):
    """({file name: text}, rationale) from a reply holding whole files in fenced blocks whose first line names
    the file ("```yaml scaffold.yaml"); the rest is the rationale. ValueError naming what is missing."""
    block = re.compile(rf"^```(?:[\w+-]+[ \t]+)?({'|'.join(map(re.escape, names))})[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
    files = {}
    for name, body in block.findall(text):
        if name in files:
            raise ValueError(f"two {name} blocks: give each file once")
        files[name] = body
    for name in required:
        if name not in files:
            raise ValueError(f"no ```{LANGUAGES[name.rsplit('.', 1)[-1]]} {name} block "
                             "(a fenced block whose first line names the file)")
    return files, re.sub(r"^RATIONALE:\s*", "", block.sub("", text).strip())


# ----------------------------------------------------------------------------- run folder, state, evaluation

def prepare_run_dir(config, runs_dir):
    """Create runs/<run_name>/ or check that an existing one holds the same loop (then continue it)."""
    run_dir = Path(runs_dir) / config["run_name"]
    path = run_dir / "config.json"
    if path.is_file():
        old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("started", "command")}
        if old != config:
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise ValueError(f"{run_dir} holds a different loop ({', '.join(changed)} differ); "
                             f"pass another --run-name or delete that folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        write_json(path, {**config, "command": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return run_dir


def run(run_dir, iterations, first, iterate):
    """Start the loop (state = first(): {"start", "incumbent"}) or resume it from state.json, then run
    iterate(state, k, it_dir) -> record until `iterations` are finished. A record that carries an
    "incumbent" replaces the state's; state.json is rewritten after every iteration."""
    state_path = Path(run_dir) / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
    else:
        state = {**first(), "iterations": []}
        write_json(state_path, state)
    while len(state["iterations"]) < iterations:
        k = len(state["iterations"]) + 1
        it_dir = Path(run_dir) / "candidates" / f"iter{k}"
        it_dir.mkdir(parents=True, exist_ok=True)
        record = iterate(state, k, it_dir)
        if "incumbent" in record:
            state["incumbent"] = record.pop("incumbent")
        state["iterations"].append(record)
        write_json(state_path, state)
        print(f"iter{k}: {record['verdict']} ({record['stage']}): {record['reason']}", flush=True)
    return state


def evaluate(argv, env, eval_dir):
    """Run (or resume) eval.py in this process with `argv` into eval_dir; its results for `env`, with the
    scaffold's hash. A model that fails exits (SystemExit): not the candidate's fault, the loop stops."""
    eval_dir = Path(eval_dir)
    evaluation.main(argv + ["--env", env, "--runs-dir", str(eval_dir.parent), "--run-name", eval_dir.name])
    results = json.loads((eval_dir / "results.json").read_text())["envs"][env]
    if results["episodes"] < results["expected_episodes"]:
        raise ValueError(f"{eval_dir}: {results['episodes']} of {results['expected_episodes']} episodes finished")
    return {**results, "hash": json.loads((eval_dir / "config.json").read_text())["scaffolds"][env]["hash"]}


def write_json(path, obj):
    """Write atomically: a killed loop leaves the old file or the new one, never half of one."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    tmp.replace(path)


# ----------------------------------------------------------------------------- names and scores in records

def rel(path):
    """A path as records keep it: relative to the kit."""
    return os.path.relpath(path, ROOT)


def model_tag(model):
    """A model as run names show it: a GGUF file's name without .gguf, a hub id's last part."""
    return Path(str(model)).name.removesuffix(".gguf")


def score_text(score):
    """Mean ± standard error (%), or - for none."""
    return f"{score['mean']:.2f} ± {score['se']:.2f}" if score else "-"
