"""
eval.py: the main job. Runs the memory agent (or a baseline) on the fixed seeds, writes a
trace per episode, and prints the results table (progression mean ± s.e. per env and task,
memory-behaviour metrics, cost per step).

    python eval.py --env crafter --quick                 # smoke run: embedded model, CPU, minutes
    python eval.py --env all                             # the paper's protocol (seeds.txt)
    python eval.py --env minihack --agent cot            # a baseline of the paper's table
    python eval.py --env crafter --scaffold scaffolds/crafter/v3
    python eval.py --env nethack --backend openai --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-32B-Instruct --workers 8
    python eval.py --env crafter --backend transformers --model Qwen/Qwen2.5-32B-Instruct --load-4bit
    python eval.py --env minihack --quick --memory-adapter adapters/minihack   # two-model split (loop 2)
    python eval.py --env crafter --quick --grammar on     # replies constrained to the op syntax (small models)

Everything lands in runs/<run-name>/: config.json (all that reproduces the run), traces/
(one JSONL per episode, flushed every step), results.json and results.md. Re-running the
same command resumes: finished episodes are kept, an interrupted one restarts.
"""
import argparse
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

import automem
import cli
import envs
import jail
import llm
import metrics
import replay
import run_folder
import scaffold_spec
import trace_format

ROOT = Path(__file__).resolve().parent
QUICK = {"episodes": 1, "max_steps": 5, "log_turns": 2, "plan_turns": 2, "max_tokens": 64}
SERVER_BACKENDS = {"openai", "transformers"}  # these batch parallel calls (on the server; llm.Transformers in
# process, one model for all): parallel episodes run as threads
MIN_N_CTX = 512  # below it nothing useful fits: a v0 step's first prompt alone is 1,300-2,200 SmolLM2 tokens


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=None, help="crafter, minihack, nethack or all (default: the scaffold's env)")
    p.add_argument("--task", action="append", help="only these task ids (repeatable)")
    p.add_argument("--agent", default="memory", choices=["memory", "window", "cot"])
    p.add_argument("--scaffold", help="scaffold directory (default scaffolds/<env>/v0)")
    p.add_argument("--backend", default="llamacpp", choices=sorted(llm.AGENT_BACKENDS))
    p.add_argument("--model", help="GGUF path, hub id / local dir, or server model name (default: embedded SmolLM2)")
    p.add_argument("--base-url", action="append", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; "
                   "repeat it for replicas of one model (each worker thread keeps one, spread evenly)")
    p.add_argument("--load-4bit", action="store_true", help="transformers: bitsandbytes nf4 (CUDA)")
    p.add_argument("--memory-model", help="two-model split: model for LOG and memory consultation")
    p.add_argument("--memory-adapter", help="two-model split: LoRA adapter (path, or model name on a vLLM server)")
    p.add_argument("--memory-base-url", action="append", help="two-model split, openai: the specialist's own server "
                   "(repeatable, replicas); it serves --memory-model or --memory-adapter by name, else its first model")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (paper: 1.0; 0 = greedy)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (every call's seed derives from it)")
    p.add_argument("--episodes", type=int, help="episodes per task (default: all seeds in --seeds)")
    p.add_argument("--max-steps", type=int, help="steps per episode (default: the env's protocol limit)")
    p.add_argument("--log-turns", type=int, help="override the scaffold's LOG calls per step")
    p.add_argument("--plan-turns", type=int, help="override the scaffold's PLAN calls per step")
    p.add_argument("--max-tokens", type=int, help="override the scaffold's new tokens per call")
    p.add_argument("--grammar", choices=["on", "off"], help="constrain replies to the op syntax (GBNF; "
                   "llamacpp and openai backends); default: the scaffold's grammar setting")
    p.add_argument("--text", default="automem", choices=envs.TEXT_MODES, help="MiniHack/NetHack observation text: "
                   "automem (the authors' harness: distances as step counts) or balrog (BALROG's words, for its leaderboard)")
    p.add_argument("--context", default="full", choices=automem.CONTEXTS, help="memory-only: the scaffold's programmatic "
                   "context off (observe/before_*/after_log/check_action hooks), its memory ops, files and prompts on")
    p.add_argument("--n-ctx", type=int, default=8192, help="llama.cpp context length")
    p.add_argument("--gpu-layers", type=int, default=0, help="llama.cpp layers offloaded to the GPU (-1: all; "
                   "needs a CUDA build of llama-cpp-python)")
    p.add_argument("--threads", type=int, help="llama.cpp threads per worker (default: cores / workers); "
                   "replies are bit-identical only for the same thread count")
    p.add_argument("--seeds", default=str(ROOT / "seeds.txt"))
    p.add_argument("--workers", type=int, default=1, help="episodes in parallel (threads for servers and "
                   "transformers, whose calls then batch; else processes)")
    p.add_argument("--ray", metavar="ADDRESS", help="play the episodes as tasks on a Ray cluster, --workers at a time, "
                   "their traces landing here: 'auto' (the cluster `ray start` runs, or RAY_ADDRESS), "
                   "ray://head:10001, or 'local' (a cluster of this machine)")
    p.add_argument("--run-name", help="runs/<run-name> (default: derived from env, agent, scaffold, model)")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--boxoban-dir", help="Boxoban levels (or AUTOMEM_BOXOBAN_DIR); without it the 2 Boxoban tasks are skipped")
    p.add_argument("--no-replay", action="store_true", help="skip writing runs/<name>/replay.html")
    p.add_argument("--untrusted-hooks", action="store_true", help="run the scaffold's hooks.py in the jail (jail.py), "
                   "as for a scaffold marked trusted: false (the loops' candidates); default: in-process")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    return p.parse_args(argv)


def read_seeds(path):
    """seeds.txt: lines 'env: 42 43 ...'; '#' starts a comment. Seeds are 0 .. 2**32-1 (what the games take)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read seeds file {path} ({getattr(e, 'strerror', None) or e}): "
                         f"pass --seeds FILE with lines 'env: 42 43 ...'") from None
    seeds = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        env, sep, rest = line.partition(":")
        try:
            if not sep:
                raise ValueError
            values = [int(s) for s in rest.split()]
        except ValueError:
            raise ValueError(f"{path} line {n}: expected 'env: 42 43 ...', got {line!r}") from None
        if not values or not all(0 <= s < 2**32 for s in values):
            raise ValueError(f"{path} line {n}: {line!r} needs one or more seeds from 0 to {2**32 - 1}")
        seeds[env.strip()] = values
    return seeds


def make_config(args):
    """Resolve the arguments into the config that reproduces the run (written to config.json)."""
    for flag, value in (("--max-steps", args.max_steps), ("--episodes", args.episodes), ("--workers", args.workers),
                        ("--log-turns", args.log_turns), ("--plan-turns", args.plan_turns),
                        ("--max-tokens", args.max_tokens), ("--threads", args.threads)):
        if value is not None and value < 1:  # 0 would otherwise read as "not given"
            raise ValueError(f"{flag} {value}: must be at least 1 (leave it out for the default)")
    if args.n_ctx < MIN_N_CTX:  # was a traceback from the first model call, after the run folder was made
        raise ValueError(f"--n-ctx {args.n_ctx}: at least {MIN_N_CTX} tokens (a step's prompt is 1,300-2,200; "
                         f"leave it out for 8192)")
    scaffold_env = scaffold_spec.load_scaffold(args.scaffold, jailed=args.untrusted_hooks)["env"] if args.scaffold else None
    env = args.env or scaffold_env or "crafter"
    env_names = list(envs.ENVS) if env == "all" else [env]
    for name in env_names:
        if name not in envs.ENVS:
            raise ValueError(f"unknown env {name!r}: choose one of {', '.join(envs.ENVS)} or all")
    if args.scaffold and (len(env_names) > 1 or scaffold_env != env_names[0]):
        raise ValueError(f"scaffold {args.scaffold} is for {scaffold_env}; pass --env {scaffold_env}")
    seeds_file = read_seeds(args.seeds)
    quick = QUICK if args.quick else {}
    model = args.model or (llm.embedded_model() if args.backend in ("llamacpp", "transformers") else None)
    # The embedded 135M model cannot write the op syntax unaided (PLAN never commits): grammar on unless told otherwise
    grammar_auto = args.grammar is None and args.agent == "memory" and args.backend == "llamacpp" and model == llm.DEFAULT_MODEL
    jobs, scaffolds = [], {}
    for name in env_names:
        if name not in seeds_file:
            raise ValueError(f"{args.seeds} has no line for {name}: add '{name}: 42 43 ...'")
        scaffolds[name] = scaffold_entry(name, args, grammar_auto)
        if (args.episodes or 0) > len(seeds_file[name]):
            raise ValueError(f"--episodes {args.episodes}: {args.seeds} has {len(seeds_file[name])} seeds for {name}; "
                             f"add seeds there or ask for fewer episodes")
        seeds = seeds_file[name][:args.episodes or quick.get("episodes") or len(seeds_file[name])]
        tasks = selected_tasks(name, args, several_envs=len(env_names) > 1)
        jobs += [{"env": name, "task": t, "episode": i, "seed": s} for t in tasks for i, s in enumerate(seeds)]
    limits = {k: v for k, v in {"log_turns": args.log_turns or quick.get("log_turns"),
                                "plan_turns": args.plan_turns or quick.get("plan_turns"),
                                "max_tokens": args.max_tokens or quick.get("max_tokens")}.items() if v}
    if model is None:
        raise ValueError(f"--backend {args.backend} needs --model")
    if args.backend == "llamacpp":
        llm.gguf_path(model)  # checked here: process workers would each fail on it
    if args.memory_base_url and args.backend != "openai":
        raise ValueError("--memory-base-url is for --backend openai: pass --backend openai --base-url URL, "
                         "or drop --memory-base-url")
    if args.load_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--load-4bit needs bitsandbytes (nf4 on a CUDA GPU): pip install bitsandbytes")
    return {
        "run_name": args.run_name or run_tag(args, env, model, scaffolds),
        "env": env, "agent": args.agent, "scaffolds": scaffolds, "limits": limits, "grammar_auto": grammar_auto,
        "text": args.text, "context": args.context, "untrusted_hooks": args.untrusted_hooks,
        "max_steps": args.max_steps or quick.get("max_steps"),
        "backend": {"backend": args.backend, "model": model, "base_url": args.base_url, "load_4bit": args.load_4bit,
                    "temperature": args.temperature, "seed": args.seed, "n_ctx": args.n_ctx,
                    "n_threads": args.threads, "n_gpu_layers": args.gpu_layers},
        "memory_model": args.memory_model, "memory_adapter": args.memory_adapter, "memory_base_url": args.memory_base_url,
        "boxoban_dir": args.boxoban_dir, "seeds_file": args.seeds, "jobs": jobs, "workers": args.workers,
    }


BACKEND_ONLY = {"n_ctx": "llamacpp", "n_threads": "llamacpp", "n_gpu_layers": "llamacpp", "base_url": "openai",
                "load_4bit": "transformers"}  # options that one backend takes


def scaffold_entry(name, args, grammar_auto):
    """The env's scaffold as config.json records it, with the grammar setting the run uses."""
    scaffold = scaffold_spec.load_scaffold(args.scaffold or ROOT / "scaffolds" / name / "v0", jailed=args.untrusted_hooks)
    if isinstance(scaffold["hooks"], jail.JailedHooks) and not jail.available()[0]:
        raise ValueError(f"{scaffold['path']}: its hooks.py runs only in the jail, which does not work here: "
                         f"{jail.available()[1]}")
    grammar = {"on": True, "off": False}.get(args.grammar, grammar_auto or scaffold["grammar"])
    if grammar and not llm.BACKENDS[args.backend].GRAMMAR:
        raise ValueError(llm.NO_GRAMMAR.format(backend=args.backend))
    return {"path": os.path.relpath(scaffold["path"], ROOT), "name": scaffold["name"], "hash": scaffold["hash"],
            "grammar": grammar, "scaffold_grammar": scaffold["grammar"]}  # grammar: the scaffold's, or --grammar's


def selected_tasks(name, args, several_envs):
    """The env's tasks, or those --task names (for one env; Boxoban's need their level files)."""
    tasks = envs.tasks(name, boxoban_dir=args.boxoban_dir)
    if not args.task:
        return tasks
    known = envs.MINIHACK_TASKS if name == "minihack" else tasks  # Boxoban asked for by name needs its levels
    unknown = [t for t in args.task if t not in known]
    if unknown or several_envs:
        raise ValueError(f"--task {' '.join(unknown or args.task)}: pick one --env and tasks from {', '.join(known)}")
    missing = [t for t in args.task if t in envs.BOXOBAN_TASKS and t not in tasks]  # level files absent
    if missing:
        raise ValueError(f"--task {' '.join(missing)} needs the Boxoban level files: {envs.BOXOBAN_HELP}")
    return [t for t in known if t in args.task]


def run_tag(args, env, model, scaffolds):
    """The run's default name: env, agent, scaffold, model and what differs from the defaults."""
    return "-".join([env, args.agent] + ([next(iter(scaffolds.values()))["name"]] if args.agent == "memory" and env != "all" else [])
                    + [Path(model).stem.replace("/", "_")] + (["2model"] if args.memory_adapter or args.memory_model or args.memory_base_url else [])
                    + (["grammar"] if any(s["grammar"] > s["scaffold_grammar"] for s in scaffolds.values()) else [])
                    + (["nogrammar"] if any(s["grammar"] < s["scaffold_grammar"] for s in scaffolds.values()) else [])
                    + ([args.text] if args.text != "automem" else []) + ([args.context] if args.context != "full" else [])
                    + (["quick"] if args.quick else []))


def load_backend(spec):
    options = {k: v for k, v in spec.items() if k not in ("backend", "model") and v is not None
               and BACKEND_ONLY.get(k, spec["backend"]) == spec["backend"]}
    return llm.load(spec["backend"], spec["model"], **options)


WORKER = {}  # per-process (or shared, for threads) backends, loaded once per model setting


def load_models(config):
    memory_server = config.get("memory_base_url")
    key = json.dumps([config["backend"], config["memory_model"], config["memory_adapter"], memory_server])
    if WORKER.get("key", key) != key:  # another eval.main in this process asked for other models
        WORKER.clear()
    if "llm" not in WORKER:
        WORKER["key"] = key
        spec = dict(config["backend"])
        if spec["backend"] == "llamacpp" and not spec.get("n_threads"):  # workers share the cores, never oversubscribe
            spec["n_threads"] = max(1, (os.cpu_count() or 1) // config["workers"])
        if spec["backend"] == "transformers":  # one generate serves the calls of all worker threads
            spec["max_batch"] = config["workers"]
        adapter = config["memory_adapter"]
        WORKER["llm"] = load_backend({**spec, **({"adapters": {"memory": adapter}} if adapter and spec["backend"] == "transformers" else {})})
        if config["memory_model"] or memory_server or (adapter and spec["backend"] == "llamacpp"):
            # the specialist's own server: the model named, else the one it serves (an adapter goes by name per call)
            WORKER["memory_llm"] = load_backend({**spec, "model": config["memory_model"] or (None if memory_server else spec["model"]),
                                                 **({"base_url": memory_server} if memory_server else {}),
                                                 **({"lora_path": gguf_adapter(adapter)} if adapter and spec["backend"] == "llamacpp" else {})})
    adapter = config["memory_adapter"]
    memory_adapter = {"transformers": "memory", "openai": adapter}.get(config["backend"]["backend"]) if adapter else None
    return WORKER["llm"], WORKER.get("memory_llm"), memory_adapter


def gguf_adapter(path):
    """llama.cpp takes a GGUF LoRA: train_lora.py sft writes adapter.gguf beside the peft files."""
    path = Path(path)
    if path.is_dir():
        if not (path / "adapter.gguf").is_file():
            raise ValueError(f"{path} is a peft adapter without adapter.gguf: python train_lora.py gguf --adapter {path} "
                             f"--base <model>.gguf, or use --backend transformers")
        return str(path / "adapter.gguf")
    return str(path)


def failed_hook(error, hooks_path):
    """'<hook> (hooks.py line L)' when error came out of the scaffold's hooks.py (in this process), else None."""
    inside = [(frame.f_code.co_name, line) for frame, line in traceback.walk_tb(error.__traceback__)
              if Path(frame.f_code.co_filename) == hooks_path]
    return inside and f"{inside[0][0]} (hooks.py line {inside[-1][1]})"  # the hook called, the line that raised


def run_job(config, run_dir, job):
    """One episode in this worker; returns (job, end record). A failing scaffold hook is a jail.HookError naming
    it, whether the hook ran in this process or in the jail: the scaffold's fault, which meta_loop rejects."""
    name = f"{job['task']}__{job['episode']:02d}"
    memory_dir = run_folder.confined(run_dir, Path(run_dir) / "memory" / job["env"] / name)  # Agent.reset deletes it
    part = run_folder.confined(run_dir, run_folder.trace_path(run_dir, job).with_suffix(".part"))  # run_episode writes it
    base, memory_llm, memory_adapter = load_models(config)
    scaffold = scaffold_spec.load_scaffold(ROOT / config["scaffolds"][job["env"]]["path"], jailed=config["untrusted_hooks"])
    scaffold["limits"].update(config["limits"])
    scaffold["grammar"] = config["scaffolds"][job["env"]]["grammar"]
    game = envs.make(job["env"], job["task"], max_steps=config["max_steps"], boxoban_dir=config["boxoban_dir"],
                     text=config.get("text", "automem"))
    agent = automem.Agent(scaffold, base, game, memory_dir, kind=config["agent"],
                          memory_llm=memory_llm, memory_adapter=memory_adapter,
                          seed=hash_seed(config["backend"]["seed"], job), context=config.get("context", "full"))
    # this episode's steps with their rate and time left, on this worker's own line under the run's bar
    steps = tqdm(total=game.max_steps, unit="step", desc=f"{job['env']} {job['task'].removeprefix('MiniHack-')} "
                 f"#{job['episode']:02d}", position=getattr(SLOT, "line", 1), leave=False, dynamic_ncols=True)
    try:
        end = automem.run_episode(agent, game, job["seed"], run_folder.trace_path(run_dir, job),
                                  header={"episode": job["episode"], "run": config["run_name"]}, progress=steps.update)
    except (Exception, SystemExit) as e:  # SystemExit: a hook's sys.exit(0) must not end the run as a success
        hook = failed_hook(e, Path(scaffold["path"]) / "hooks.py")
        if not hook and not isinstance(e, jail.HookError):
            raise
        raise jail.HookError(f"hook {hook or '(jailed)'} of scaffold {config['scaffolds'][job['env']]['path']} failed "
                             f"in {part.stem}: {type(e).__name__}: {' '.join(str(e).split())[:300]}; the episode's steps "
                             f"so far are in {part}; fix hooks.py and run it under another --run-name (a changed "
                             f"scaffold is another run)") from None
    finally:
        steps.close()
        game.close()
        if config["untrusted_hooks"]:
            scaffold["hooks"].close()  # ends this episode's jail now, not whenever it is collected
    return job, end


def hash_seed(base, job):
    """The episode's sampling seed: fixed by the run's --seed and the episode, whatever the worker order."""
    key = f"{base}/{job['env']}/{job['task']}/{job['seed']}".encode()
    return int(hashlib.sha256(key).hexdigest()[:8], 16)


def summarize(config, run_dir):
    """Read every finished trace of the run; write results.json, results.md and BALROG's summary.json; return
    (results, markdown)."""
    by_env = {}
    for job in config["jobs"]:
        path = run_folder.trace_path(run_dir, job)
        if path.is_file():
            by_env.setdefault(job["env"], []).append(trace_format.read_trace(path))
    results = {"run": config["run_name"], "agent": config["agent"], "model": config["backend"]["model"], "envs": {}}
    for env, episodes in by_env.items():
        tasks = {}
        for ep in episodes:
            tasks.setdefault(ep[0]["task"], []).append(ep[2]["progression"])
        expected = sum(j["env"] == env for j in config["jobs"])
        results["envs"][env] = {
            "progression": metrics.progression_stats([ep[2]["progression"] for ep in episodes]),
            "tasks": {t: metrics.progression_stats(v) for t, v in tasks.items()},
            "episodes": len(episodes), "expected_episodes": expected,
            "per_episode": [{"task": ep[0]["task"], "seed": ep[0]["seed"], "progression": ep[2]["progression"],
                             "behaviour": metrics.behaviour([ep], timed=False)} for ep in episodes],
            "success_rule_disagreements": sum(ep[2]["success"] != ep[2]["success_balrog"]
                                              for ep in episodes if ep[2]["success"] is not None),
            "steps": sum(ep[2]["steps"] for ep in episodes),
            "behaviour": metrics.behaviour(episodes),
        }
    (Path(run_dir) / "results.json").write_text(json.dumps(results, indent=2))
    (Path(run_dir) / "summary.json").write_text(json.dumps(balrog_summary(config, by_env), indent=4))
    md = results_markdown(results)
    (Path(run_dir) / "results.md").write_text(md)
    return results, md


BALROG_ENVS = {"crafter": "crafter", "minihack": "minihack", "nethack": "nle"}  # BALROG's names


def balrog_summary(config, by_env):
    """The summary.json that BALROG's evaluator writes (balrog/utils.py, collect_and_summarize_results), from this
    run's episodes: per env the mean progression and its standard error in % (population std / sqrt(n); 0 for one
    episode) and the episodes played; overall the mean of the env means, with the standard error
    sqrt(sum of the env standard errors squared) / envs; prompt and completion tokens; its client and agent blocks
    hold our backend and agent under BALROG's key names where one exists."""
    envs = {}
    for env, episodes in by_env.items():
        stats = metrics.progression_stats([end["progression"] for _, _, end in episodes])
        envs[BALROG_ENVS[env]] = {"progression_percentage": stats["mean"], "standard_error": stats["se"],
                                  "episodes_played": stats["n"]}
    calls = [c for episodes in by_env.values() for _, steps, _ in episodes for c in metrics.calls(steps)]
    backend = config["backend"]
    return {
        "average_progress": sum(e["progression_percentage"] for e in envs.values()) / len(envs) if envs else 0.0,
        "standard_error": math.sqrt(sum(e["standard_error"] ** 2 for e in envs.values())) / len(envs) if envs else 0.0,
        "environments": envs,
        "total_input_tokens": sum(c["prompt_tokens"] for c in calls),
        "total_output_tokens": sum(c["completion_tokens"] for c in calls),
        "client": {"client_name": backend.get("backend"), "model_id": backend.get("model"), "base_url": backend.get("base_url"),
                   "generate_kwargs": {"temperature": backend.get("temperature")}},
        "agent": {"type": config["agent"], "scaffolds": {env: s["path"] for env, s in config["scaffolds"].items()}},
    }


def results_markdown(results):
    rows = []
    for env, r in results["envs"].items():
        p = r["progression"]
        rows.append([f"**{env}**", "all", f"**{p['mean']:.2f} ± {p['se']:.2f}**", f"{r['episodes']}/{r['expected_episodes']}"])
        if len(r["tasks"]) > 1:
            rows += [["", t, f"{s['mean']:.2f} ± {s['se']:.2f}", s["n"]] for t, s in r["tasks"].items()]
    names = list(next(iter(results["envs"].values()))["behaviour"]) if results["envs"] else []
    lines = [f"# {results['run']}", "", f"agent: {results['agent']}, model: {results['model']}", "",
             cli.markdown_table(["env", "task", "progression %", "episodes"], rows), "",
             cli.markdown_table(["metric"] + list(results["envs"]),
                                [[m] + [metrics.metric_text(r["behaviour"][m]) for r in results["envs"].values()]
                                 for m in names])]
    for env, r in results["envs"].items():
        if r["success_rule_disagreements"]:
            lines.append(f"\n{env}: {r['success_rule_disagreements']} episode(s) where BALROG's last-reward rule "
                         f"disagrees with the end status (we count the end status).")
    return "\n".join(lines) + "\n"


def outcomes(config, run_dir, todo, server):
    """Run the episodes here or in workers (threads for a server or transformers, else processes); yield (job, its
    end record or the error that stopped it) as each finishes. Closing the generator cancels the queued ones."""
    if config["workers"] == 1:
        for job in todo:
            yield job, attempt(run_job, config, run_dir, job)
        return
    # spawn, not fork: a forked child inherits OpenMP and CUDA state that hangs or fails in it
    spawn = multiprocessing.get_context("spawn")
    slots, bars_lock = spawn.Value("i", 0), spawn.RLock()
    tqdm.set_lock(bars_lock)  # one lock for every bar on the terminal, this process's and the workers'
    pool = (ThreadPoolExecutor(config["workers"], initializer=take_slot, initargs=(slots,)) if server else
            ProcessPoolExecutor(config["workers"], mp_context=spawn, initializer=process_worker,
                                initargs=(str(run_dir / ".lock"), slots, bars_lock)))
    try:
        futures = {pool.submit(run_job, config, run_dir, j): j for j in todo}
        for fut in as_completed(futures):
            yield futures[fut], attempt(fut.result)
    finally:
        pool.shutdown(cancel_futures=True)  # waits for the running ones


def cluster_outcomes(config, run_dir, todo, address):
    """outcomes() on a Ray cluster: --workers episodes in flight as Ray tasks, each played in a scratch run folder on
    the node that runs it; its trace comes back through Ray and lands in this run folder under its final name when
    the episode ends (half-done: as .part, which resume discards), so resume, results and reports are as for a
    local run. The kit's modules, scaffolds and data travel to the nodes (Ray's working_dir); nodes need its packages."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reports usage to its makers unless told not to
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray here and on the cluster's nodes: pip install -r requirements.txt "
                         "(it pins ray)") from None
    outside = [s["path"] for s in config["scaffolds"].values() if s["path"].startswith("..")]
    if outside:
        raise ValueError(f"--ray sends the kit's folder to the cluster, and scaffold {outside[0]} is outside it: "
                         f"copy it under scaffolds/")
    # what a node needs to play an episode: the kit's modules, scaffolds and data (.gitignore'd files stay here too)
    excludes = [f"/{p.name}" for p in ROOT.iterdir() if p.suffix != ".py" and p.name not in ("scaffolds", "data")]
    # a CUDA llama.cpp crashes unless preloaded (llm.preload_cuda_llama): a local cluster's workers inherit this
    # process's LD_PRELOAD, a remote one's are told (nodes of one image: the same path; a missing file is skipped)
    libllama = llm.cuda_libllama()
    preload = {"env_vars": {"LD_PRELOAD": libllama}} if libllama else {}
    ray.init(address=None if address == "local" else address, log_to_driver=False,
             runtime_env={"working_dir": str(ROOT), "excludes": excludes, **preload})
    return cluster_results(ray, config, run_dir, todo)


def cluster_results(ray, config, run_dir, todo):
    """cluster_outcomes' generator: keeps --workers tasks in flight, writes each returned trace, yields (job, end)."""
    import eval as kit  # run as a script, this module is __main__: Ray must send the importable name to the nodes
    play, queue, running = ray.remote(kit.cluster_episode), list(todo), {}
    try:
        while queue or running:
            while queue and len(running) < config["workers"]:
                job = queue.pop(0)
                running[play.remote(config, job)] = job
            [ref], _ = ray.wait(list(running))
            job = running.pop(ref)
            end, name, text = ray.get(ref)
            if text is not None:
                path = run_folder.trace_path(run_dir, job).with_name(name)
                run_folder.confined(run_dir, path.with_suffix(".tmp")).write_text(text)
                path.with_suffix(".tmp").replace(path)  # whole or not at all
            yield job, end
    finally:
        for ref in running:  # closing the generator: the queued ones never start, the running ones stop
            ray.cancel(ref, force=True)
        ray.shutdown()


def cluster_episode(config, job):
    """A Ray task: one episode in a scratch run folder; returns (end record or the error that stopped it,
    the trace's file name (finished or .part), its text)."""
    with tempfile.TemporaryDirectory() as scratch:
        for folder in ("traces", "memory"):
            (Path(scratch) / folder / job["env"]).mkdir(parents=True)
        end = attempt(run_job, config, Path(scratch), job)
        trace = run_folder.trace_path(scratch, job)
        trace = trace if trace.is_file() else trace.with_suffix(".part")
        return end, trace.name, trace.read_text() if trace.is_file() else None


SLOT = threading.local()  # line: this worker's line under the run's bar, where its episodes' steps show


def take_slot(slots):
    """Pool initializer: this worker (thread or process) takes the next line under the run's bar."""
    with slots.get_lock():
        slots.value += 1
        SLOT.line = slots.value


def process_worker(lock_path, slots, bars_lock):
    """Process pool initializer: share the run's lock, draw bars under the parent's lock, take a line."""
    WORKER["lock"] = run_folder.join_lock(lock_path)
    tqdm.set_lock(bars_lock)
    take_slot(slots)


def attempt(fn, *args):
    """An episode's end record, or the error that stopped it (the backend, a hook, bad input, the disk)."""
    try:
        return fn(*args)[1]
    except (llm.BackendError, ValueError, OSError) as e:
        return e


def main(argv=None):
    args = parse_args(argv)
    try:
        config = make_config(args)
        run_dir, lock = run_folder.prepare_run_dir(config, args.runs_dir)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(e)
    try:
        run(args, config, run_dir)
    finally:
        os.close(lock)  # this run's workers have exited: the folder is free for the next eval.py


def run(args, config, run_dir):
    """Run the episodes not done yet in the locked run folder, then write and print the results."""
    todo = [j for j in config["jobs"] if not run_folder.trace_path(run_dir, j).is_file()]
    print(f"run {run_dir}: {len(config['jobs'])} episodes, {len(config['jobs']) - len(todo)} already done")
    if config["grammar_auto"]:
        print("note: --grammar on, as the embedded 135M model cannot write the op syntax unaided "
              "(--grammar off runs it unconstrained, the paper's setting)")
    server = config["backend"]["backend"] in SERVER_BACKENDS
    replicas = len(config["backend"]["base_url"] or []) if server else 0
    if replicas > config["workers"]:
        print(f"note: {replicas} --base-url servers and {config['workers']} worker(s): a worker keeps one server, "
              f"so --workers {replicas} or more keeps them all busy")
    if todo:
        try:
            load_models(config) if (config["workers"] == 1 or server) and not args.ray else None
        except (ValueError, FileNotFoundError, llm.BackendError) as e:
            cli.fail(e)
    bar = tqdm(total=len(todo), unit="episode", disable=not todo)
    failed, fatal = [], None
    try:
        episodes = cluster_outcomes(config, run_dir, todo, args.ray) if args.ray else outcomes(config, run_dir, todo, server)
    except (ValueError, ConnectionError) as e:  # no Ray, a scaffold outside the kit, no cluster at that address
        cli.fail(e)
    for job, end in episodes:
        bar.update()
        if isinstance(end, llm.BackendError):  # recorded; the episode re-runs on resume
            failed.append({**job, "error": str(end)})
        elif isinstance(end, Exception):  # a hook, the model or the disk: the next episodes would fail alike
            fatal = end
            break
        else:
            bar.set_postfix(progression=f"{end['progression']:.2f}", steps=end["steps"])
    episodes.close()  # queued episodes do not start
    bar.close()
    results, md = summarize(config, run_dir)
    print(md)
    if isinstance(fatal, jail.HookError):  # raised, not exited: meta_loop rejects the candidate scaffold and goes on
        raise fatal
    if fatal:
        where = f"{fatal.strerror}: {fatal.filename}" if isinstance(fatal, OSError) and fatal.filename else fatal
        cli.fail(f"{where} (the finished episodes are kept: fix that and re-run the same command to resume)")
    unconstrained = [env for env, r in results["envs"].items()
                     if (r["behaviour"]["fallback_rate"] or 0) > 0.5 and not config["scaffolds"][env]["grammar"]]
    if config["agent"] == "memory" and unconstrained and llm.BACKENDS[config["backend"]["backend"]].GRAMMAR:
        print(f"note: {', '.join(unconstrained)}: PLAN rarely committed an action (fallback rate above 0.5); "
              f"a model too small for the op syntax follows it with --grammar on")
    first = next((p for p in (run_folder.trace_path(run_dir, j) for j in config["jobs"]) if p.is_file()), None)
    if first and not args.no_replay:  # see what the agent did: python replay.py <trace> for any other episode
        print(f"replay of {first.relative_to(run_dir)}: {replay.write_replay(first, run_dir / 'replay.html', frames=True)}")
    if failed:
        (run_dir / "failed.json").write_text(json.dumps(failed, indent=2))
        sys.exit(f"error: {len(failed)} episode(s) failed (see {run_dir / 'failed.json'}); re-run the same command to retry them")


if __name__ == "__main__":
    llm.preload_cuda_llama()
    try:
        main()
    except jail.HookError as e:
        cli.fail(e)
