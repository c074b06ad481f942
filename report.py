"""
report.py: how the runs compare. Tables and figures over finished runs (replay.py shows one episode).

    python report.py table runs/*                       # the paper's table: progression % mean ± s.e.
    python report.py table runs/* --paper --out report  # + the paper's rows; writes .md and .csv files
    python report.py table runs/* --paper --latex        # the progression table as LaTeX (booktabs); table.tex with --out
    python report.py figure runs/* --paper --out report # progression per scaffold version, behaviour panels
    python report.py compare runs/a runs/b              # B - A per env (MiniHack per task), bootstrap 95% interval
    python report.py loop2 runs/base runs/trained ...   # memory behaviour, base vs the trained specialist (loop 2)

table: one row per agent (baseline, memory scaffold version, + memory model) and model, from each
run's config.json and results.json; columns Crafter / MiniHack / NetHack, and the paper's row a run stands
beside (v0; the converged scaffolds crafter v5, minihack v4, nethack v2 as loop 1; those with a memory model as
loop 2); with --paper our rows follow that row. A cell shows "(done/expected)" when the run is unfinished. Also the MiniHack per-task cells and the
memory-behaviour metrics (metrics.py) per env.
compare: run B's progression minus run A's per env and MiniHack task, with a bootstrap 95% interval (paired by
seed where both ran the same episodes) and the paper's difference between the rows the two runs stand beside.
loop2: per env and run, the memory behaviour loop 2 changes (the paper's LOG writes per SEARCH, redundant writes,
empty searches, failed LOG ops, unproductive actions, fallbacks) as mean ± s.e. over episodes, each run's grammar setting, the
paper's base -> trained LOG writes per SEARCH, and the card of each run's memory adapter (data hash, config, loss);
with --out also loop2.md and loop2.{png,svg}.
figure: progression.{png,svg} (memory runs by scaffold version, error bars = s.e.; dotted lines:
our baselines; dashed: the paper) and behaviour.{png,svg} (first vs best memory run per env;
first = lowest scaffold version, best = highest progression).
"""
import argparse
import csv
import json
import re
import sys
from pathlib import Path

import matplotlib
import numpy as np

import cli
import metrics
import run_folder
import trace_format
from envs import ENVS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

ENV_TITLES = {"crafter": "Crafter", "minihack": "MiniHack", "nethack": "NetHack"}
BASELINES = {"window": "sliding window", "cot": "chain-of-thought"}
# Wu et al. 2026, Qwen2.5-32B-Instruct, progression % (mean, s.e.); see PROTOCOL.md.
PAPER_MODEL = "Qwen2.5-32B-Instruct (paper)"
PAPER = {
    "sliding window": {"crafter": (19.55, 3.46), "minihack": (2.50, 2.47), "nethack": (0.00, 0.00)},
    "chain-of-thought": {"crafter": (17.27, 2.71), "minihack": (10.00, 4.74), "nethack": (0.00, 0.00)},
    "memory v0": {"crafter": (25.00, 5.50), "minihack": (7.50, 4.16), "nethack": (0.42, 0.37)},
    "+ scaffold opt. (loop 1)": {"crafter": (47.27, 2.05), "minihack": (27.50, 7.06), "nethack": (1.57, 0.35)},
    "+ memory training (loop 2)": {"crafter": (51.36, 3.81), "minihack": (30.00, 7.25), "nethack": (1.85, 0.44)},
}
PAPER_WRITES_PER_SEARCH = {"crafter": (0.84, 0.39), "minihack": (2.89, 0.82), "nethack": (4.66, 1.31)}  # base -> trained
METRICS = {  # behaviour metrics shown (metrics.behaviour keys) and their short titles
    "unproductive_rate": "unproductive actions",
    "redundant_write_rate": "redundant writes",
    "empty_search_rate": "empty searches",
    "log_writes_per_search": "LOG writes / SEARCH",
    "invalid_action_rate": "invalid actions",
    "input_tokens_per_step": "input tokens / step",
    "llm_calls_per_step": "LLM calls / step",
}


# ----------------------------------------------------------------------------- runs

def version_key(name):
    """Natural order: v2 < v10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", name)]


def load_runs(dirs):
    """[{dir, config, results}] for each directory holding config.json and results.json."""
    runs = []
    for d in map(Path, dirs):
        if not ((d / "config.json").is_file() and (d / "results.json").is_file()):
            print(f"skipping {d}: no config.json and results.json (not an eval.py run directory)", file=sys.stderr)
            continue
        runs.append({"dir": d, "config": json.loads((d / "config.json").read_text()),
                     "results": json.loads((d / "results.json").read_text())})
    if not runs:
        raise ValueError(f"no run directory among {', '.join(map(str, dirs)) or '(none)'}: "
                         "pass runs/<name> folders that eval.py finished (they hold results.json)")
    return sorted(runs, key=lambda r: (r["config"].get("started", ""), str(r["dir"])))


def scaffold_version(config, env):
    return Path(config["scaffolds"][env]["path"]).name


def two_model(config):
    return bool(config.get("memory_adapter") or config.get("memory_model") or config.get("memory_base_url"))


def memory_only(config):
    """The ablation: the scaffold's programmatic context off, its memory on (eval.py --context memory-only)."""
    return config.get("context") == "memory-only"


def agent_label(config):
    """Row label: the baseline's name, or "memory <scaffold versions>" [+ memory model] [memory-only context]."""
    if config["agent"] != "memory":
        return BASELINES[config["agent"]]
    versions = sorted({Path(s["path"]).name for s in config["scaffolds"].values()}, key=version_key)
    label = "memory " + "/".join(versions)
    if two_model(config):
        name = config.get("memory_adapter") or config.get("memory_model")
        label += f" + memory model ({Path(name).name if name else 'its own server'})"
    if memory_only(config):
        label += " (memory-only context)"
    return label


CONVERGED = {"crafter": "v5", "minihack": "v4", "nethack": "v2"}  # the authors' loop-1 results, shipped re-expressed


def paper_row(config, env):
    """The paper's row this run stands beside for one env, or None: a baseline, v0, the converged scaffold (loop 1),
    or the converged scaffold with a memory model (loop 2). The memory-only ablation stands beside none of them."""
    if config["agent"] != "memory":
        return BASELINES[config["agent"]]
    if memory_only(config):
        return None
    version = scaffold_version(config, env)
    if version == "v0" and not two_model(config):
        return "memory v0"
    if version == CONVERGED[env]:
        return "+ memory training (loop 2)" if two_model(config) else "+ scaffold opt. (loop 1)"
    return None


def model_label(config):
    backend = config["backend"]
    name = Path(backend["model"]).name.removesuffix(".gguf")
    return name + (" 4-bit" if backend.get("load_4bit") else "")


def row_order(row):
    """Each of the paper's rows in its order, followed by our rows that stand beside it; then our other rows:
    baselines, memory by scaffold version, by model."""
    if row["paper_rows"]:
        return (0, list(PAPER).index(row["paper_rows"][0]), not row["paper"], version_key(row["label"]), row["model"])
    agent = next((i for i, name in enumerate(BASELINES.values()) if row["label"] == name), len(BASELINES))
    return (1, agent, False, version_key(row["label"]), row["model"])


def shard_key(config, env):
    """What two runs must share to be parts of one evaluation of an env: scaffold (hash), model, sampling, limits
    and texts. Their names, jobs, workers and servers may differ."""
    backend = {k: v for k, v in config["backend"].items() if k not in ("base_url", "n_threads")}
    return json.dumps([config["scaffolds"][env].get("hash"), backend, config.get("limits"), config.get("text"),
                       config.get("context"), config.get("max_steps"), config.get("memory_model"),
                       config.get("memory_adapter")], sort_keys=True)


def shards(part, run, env):
    """Did `part` (a run in a row) and `run` each play other episodes of one evaluation of env (e.g. a run per task)?"""
    mine, theirs = (r["results"]["envs"][env].get("per_episode") for r in (part, run))
    return (mine is not None and theirs is not None and shard_key(part["config"], env) == shard_key(run["config"], env)
            and not {(e["task"], e["seed"]) for e in mine} & {(e["task"], e["seed"]) for e in theirs})


def pooled(parts, env):
    """(cell, MiniHack tasks, behaviour) of one env over runs that each played part of its episodes: progression
    from their per-episode numbers, behaviour from their traces."""
    episodes = [e for run in parts for e in run["results"]["envs"][env]["per_episode"]]
    tasks = {}
    for e in episodes:
        tasks.setdefault(e["task"], []).append(e["progression"])
    paths = [run_folder.trace_path(run["dir"], job) for run in parts for job in run["config"]["jobs"] if job["env"] == env]
    cell = {**metrics.progression_stats([e["progression"] for e in episodes]),
            "expected": sum(run["results"]["envs"][env]["expected_episodes"] for run in parts)}
    return (cell, {t: metrics.progression_stats(v) for t, v in tasks.items()},
            metrics.behaviour([trace_format.read_trace(path) for path in paths if path.is_file()]))


def table_rows(runs, paper=False):
    """Rows of the table: one per (agent label, model). Runs that played different episodes of one evaluation
    (shards: the same scaffold, model and settings, e.g. a run per MiniHack task) share a row, their episodes
    pooled; a run whose episodes the matching row already holds (a re-run) gets its own row, named with the run."""
    rows = []
    if paper:
        rows += [{"label": label, "model": PAPER_MODEL, "paper": True, "runs": [], "tasks": {}, "behaviour": {},
                  "cells": {env: {"mean": m, "se": se, "n": None, "expected": None} for env, (m, se) in cells.items()},
                  "paper_rows": [label], "parts": {}, "key": None} for label, cells in PAPER.items()]
    for run in runs:
        config, results = run["config"], run["results"]
        label, model = agent_label(config), model_label(config)
        row = next((r for r in rows if r["key"] == (label, model)
                    and all(shards(part, run, env) for env in set(r["cells"]) & set(results["envs"])
                            for part in r["parts"][env])), None)
        if row is None:
            taken = any(r["key"] == (label, model) for r in rows)
            row = {"label": label + (f" [{results['run']}]" if taken else ""), "model": model, "paper": False,
                   "runs": [], "cells": {}, "tasks": {}, "behaviour": {}, "paper_rows": [], "parts": {},
                   "key": (label, model)}
            rows.append(row)
        row["runs"].append(results["run"])
        row["paper_rows"] = sorted(set(row["paper_rows"]) | {paper_row(config, env) for env in results["envs"]} - {None},
                                   key=list(PAPER).index)
        for env, r in results["envs"].items():
            parts = row["parts"].setdefault(env, []) + [run]
            row["parts"][env] = parts
            if len(parts) > 1:
                row["cells"][env], tasks, row["behaviour"][env] = pooled(parts, env)
            else:
                row["cells"][env], tasks, row["behaviour"][env] = ({**r["progression"], "expected": r["expected_episodes"]},
                                                                   r["tasks"], r["behaviour"])
            if env == "minihack":
                row["tasks"] = tasks
    return sorted(rows, key=row_order)


def cell_text(c, latex=False):
    """mean ± s.e. (LaTeX: in math mode), "(done/expected)" after an unfinished run's cell."""
    if c is None:
        return "--" if latex else "–"
    text = f"${c['mean']:.2f} \\pm {c['se']:.2f}$" if latex else f"{c['mean']:.2f} ± {c['se']:.2f}"
    return text + (f" ({c['n']}/{c['expected']})" if c["expected"] and c["n"] < c["expected"] else "")


def short_task(task):
    return task.removeprefix("MiniHack-").removesuffix("-v0")


def table_markdown(rows, paper=False):
    envs = [e for e in ENVS if any(e in r["cells"] for r in rows)]
    out = ["## Progression (%), mean ± standard error", "",
           cli.markdown_table(["agent", "model"] + [ENV_TITLES[e] for e in envs] + ["stands beside the paper's row"],
                          [[r["label"], r["model"]] + [cell_text(r["cells"].get(e)) for e in envs]
                           + ["" if r["paper"] else ", ".join(r["paper_rows"]) or "–"] for r in rows])]
    task_rows = [r for r in rows if r["tasks"]]
    if task_rows:
        tasks = sorted({t for r in task_rows for t in r["tasks"]})
        out += ["", "## MiniHack per task (%)", "",
                cli.markdown_table(["agent", "model"] + [short_task(t) for t in tasks],
                               [[r["label"], r["model"]] + [cell_text({**r["tasks"][t], "expected": None})
                                                            if t in r["tasks"] else "–" for t in tasks]
                                for r in task_rows])]
    for env in envs:
        body = [[r["label"], r["model"]] + [metrics.metric_text(r["behaviour"][env].get(m)) for m in METRICS]
                for r in rows if env in r["behaviour"]]
        if paper:
            base, trained = PAPER_WRITES_PER_SEARCH[env]
            body += [[label, PAPER_MODEL] + [f"{v:.2f}" if m == "log_writes_per_search" else "–" for m in METRICS]
                     for label, v in (("+ scaffold opt. (loop 1)", base), ("+ memory training (loop 2)", trained))]
        if body:
            out += ["", f"## Memory behaviour: {ENV_TITLES[env]}", "",
                    cli.markdown_table(["agent", "model"] + list(METRICS.values()), body)]
    return "\n".join(out) + "\n"


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text):
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def table_latex(rows):
    """The progression table as a LaTeX tabular (needs \\usepackage{booktabs}): mean $\\pm$ s.e. per env, the paper's
    rows in italics, "(done/expected)" after an unfinished run's cell."""
    envs = [e for e in ENVS if any(e in r["cells"] for r in rows)]
    lines = [r"\begin{tabular}{ll" + "r" * len(envs) + "}", r"\toprule",
             " & ".join(["Agent", "Model"] + [ENV_TITLES[e] for e in envs]) + r" \\", r"\midrule"]
    for r in rows:
        names = [latex_escape(r["label"]), latex_escape(r["model"])]
        names = [rf"\textit{{{n}}}" for n in names] if r["paper"] else names
        lines.append(" & ".join(names + [cell_text(r["cells"].get(e), latex=True) for e in envs]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_table_csv(rows, out):
    """table.csv (wide, as the markdown), minihack_tasks.csv and behaviour.csv (long) in out."""
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "model", "runs"] + [f"{e}_{k}" for e in ENVS for k in ("mean", "se", "n", "expected")])
        for r in rows:
            w.writerow([r["label"], r["model"], " ".join(r["runs"])]
                       + [r["cells"].get(e, {}).get(k) for e in ENVS for k in ("mean", "se", "n", "expected")])
    with open(out / "minihack_tasks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "model", "task", "mean", "se", "n"])
        w.writerows([r["label"], r["model"], t, s["mean"], s["se"], s["n"]] for r in rows for t, s in r["tasks"].items())
    with open(out / "behaviour.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "model", "env", "metric", "value"])
        w.writerows([r["label"], r["model"], env, m, b.get(m)]
                    for r in rows for env, b in r["behaviour"].items() for m in METRICS)


# ----------------------------------------------------------------------------- compare

def per_episode(run, env):
    """{(task, seed): progression} of one env of a run, from its results.json."""
    episodes = run["results"]["envs"][env].get("per_episode")
    if episodes is None:
        raise ValueError(f"{run['dir']}/results.json has no per-episode progressions: re-run that run's eval.py "
                         "command (it resumes, no episode is played again) to refresh it")
    return {(e["task"], e["seed"]): e["progression"] for e in episodes}


def compare_markdown(run_a, run_b):
    """Progression of run B minus run A per env (MiniHack also per task), with a bootstrap 95% interval, paired by
    seed when both runs hold the same (task, seed) episodes, beside the paper's difference between the rows the
    two runs stand beside."""
    a, b = run_a["config"], run_b["config"]
    envs = [e for e in ENVS if e in run_a["results"]["envs"] and e in run_b["results"]["envs"]]
    if not envs:
        raise ValueError(f"{run_a['dir']} and {run_b['dir']} share no env: compare runs of the same env")
    body = []
    for env in envs:
        eps_a, eps_b = per_episode(run_a, env), per_episode(run_b, env)
        tasks = sorted({t for t, _ in eps_a} & {t for t, _ in eps_b}) if env == "minihack" else []
        rows_ab = paper_row(a, env), paper_row(b, env)
        paper = (f"{PAPER[rows_ab[1]][env][0] - PAPER[rows_ab[0]][env][0]:+.2f} ({rows_ab[1]} - {rows_ab[0]})"
                 if None not in rows_ab else "–")
        for name, task in [("all", None)] + [(short_task(t), t) for t in tasks]:
            keys_a = sorted(k for k in eps_a if task in (None, k[0]))
            keys_b = sorted(k for k in eps_b if task in (None, k[0]))
            paired = keys_a == keys_b
            d, low, high = metrics.bootstrap_difference([eps_a[k] for k in keys_a], [eps_b[k] for k in keys_b], paired)
            body.append([ENV_TITLES[env], name, f"{len(keys_a)} / {len(keys_b)}", "paired" if paired else "unpaired",
                         f"{d:+.2f}", f"[{low:+.2f}, {high:+.2f}]", paper if task is None else "–"])
    head = f"## Progression (%) of B minus A\n\nA: {run_a['dir']} ({agent_label(a)}, {model_label(a)})\n" \
           f"B: {run_b['dir']} ({agent_label(b)}, {model_label(b)})\n\n"
    return head + cli.markdown_table(["env", "task", "episodes A / B", "by seed", "B - A", "95% interval (bootstrap)",
                                  "paper's B - A"], body) + "\n"


# ----------------------------------------------------------------------------- figures

LOOP2_METRICS = {"log_writes_per_search": "LOG writes / SEARCH", "redundant_write_rate": "redundant writes",
                 "empty_search_rate": "empty searches", "failed_log_op_rate": "failed LOG ops",
                 "unproductive_rate": "unproductive actions", "fallback_rate": "fallbacks"}
LOOP2_KINDS = [f"{kind}, grammar {g}" for kind in ("base", "two-model, no adapter", "trained specialist")
               for g in ("on", "off")]  # loop2_kind's values in reading order: the rows' order, the figure's colours


def adapter_card(run):
    """card.json of a run's memory adapter (train_lora.py sft writes it beside the adapter), or None. Where the
    recorded path is gone (a RUNS tree of bench/loop2_mini.sh copied off the GPU box), the same place relative to the
    run: RUNS/adapters/<env>/card.json beside RUNS/<run>."""
    adapter = run["config"].get("memory_adapter")
    if not adapter:
        return None
    folder = Path(adapter) if Path(adapter).is_dir() else Path(adapter).parent
    for card in (folder / "card.json", Path(run["dir"]).parent / "adapters" / folder.name / "card.json"):
        if card.is_file():
            return json.loads(card.read_text())
    return None


def loop2_stats(runs):
    """{env: [(run, {metric: mean_se over the episodes where it is defined, or None})]}, from results.json."""
    stats = {}
    for run in runs:
        for env, r in run["results"]["envs"].items():
            if any("behaviour" not in e for e in r["per_episode"]):
                raise ValueError(f"{run['dir']}: results.json has no behaviour per episode (written by an older "
                                 "eval.py): run its eval.py command again, which rewrites results.json")
            per_episode = [e["behaviour"] for e in r["per_episode"]]
            stats.setdefault(env, []).append((run, {"episodes": len(per_episode), **{
                m: metrics.mean_se([b[m] for b in per_episode if b.get(m) is not None]) for m in LOOP2_METRICS}}))
    for env, rows in stats.items():  # in reading order: base, the control, the trained specialist
        rows.sort(key=lambda row: (LOOP2_KINDS.index(loop2_kind(row[0]["config"], env)), row[0]["results"]["run"]))
    return stats


def grammar_text(config, env):
    return f"grammar {'on' if config['scaffolds'][env]['grammar'] else 'off'}"


def loop2_label(config, env):
    return f"{agent_label(config)}, {grammar_text(config, env)}"


def loop2_kind(config, env):
    """A run's kind (its row's place and the figure's colour): base alone, the two-model split with an untrained
    specialist (the control), or the trained specialist (an adapter); with the grammar setting."""
    kind = "trained specialist" if config.get("memory_adapter") else "two-model, no adapter" if two_model(config) else "base"
    return f"{kind}, {grammar_text(config, env)}"


def loop2_markdown(stats):
    def cell(c, episodes):
        return "n/a" if c is None else f"{c['mean']:.3f} ± {c['se']:.3f}" + (f" (n={c['n']})" if c["n"] < episodes else "")
    head = ["run", "agent", "episodes", "progression (%)"] + list(LOOP2_METRICS.values())
    lines = ["## Loop 2: memory behaviour, base vs trained (mean ± s.e. over episodes; n = episodes that define it)"]
    for env, rows in stats.items():
        base, trained = PAPER_WRITES_PER_SEARCH[env]
        body = [[run["results"]["run"], loop2_label(run["config"], env), str(st["episodes"]),
                 cell_text({**run["results"]["envs"][env]["progression"], "expected": None})]
                + [cell(st[m], st["episodes"]) for m in LOOP2_METRICS]
                for run, st in rows]
        body.append(["paper", "Qwen2.5-32B-Instruct: base -> trained", "", "", f"{base:.2f} -> {trained:.2f}"]
                    + ["–"] * (len(LOOP2_METRICS) - 1))
        lines += ["", f"### {ENV_TITLES[env]}", "", cli.markdown_table(head, body)]
    cards = {run["results"]["run"]: card for rows in stats.values() for run, _ in rows if (card := adapter_card(run))}
    if cards:
        lines += ["", "Memory adapters (train_lora.py sft cards):", ""]
        lines += [f"- {name}: run {c['run_id']}, base {Path(c['base_model']).name}, data sha256 {c['data_sha256'][:12]} "
                  f"({c['examples']} examples), rank {c['config']['rank']}, lr {c['config']['lr']}, "
                  f"{c['config']['epochs']} epochs, {c['steps']} steps, eval loss {c['loss_before']:.4f} -> {c['loss_after']:.4f}"
                  for name, c in cards.items()]
    return "\n".join(lines) + "\n"


def loop2_figure(stats, out):
    """loop2.{png,svg}: a panel per metric, per env a bar per run (coloured by its loop2_kind: specialist and grammar)
    with its s.e.; the paper's LOG writes per SEARCH, base -> trained."""
    envs = list(stats)
    kinds = sorted({loop2_kind(run["config"], env) for env in envs for run, _ in stats[env]}, key=LOOP2_KINDS.index)
    fig, axes = plt.subplots(1, len(LOOP2_METRICS), figsize=(4 * len(LOOP2_METRICS), 4.6), squeeze=False)
    for ax, (metric, title) in zip(axes[0], LOOP2_METRICS.items()):
        for i, env in enumerate(envs):
            width = 0.8 / len(stats[env])
            for j, (run, st) in enumerate(stats[env]):
                c, kind = st[metric], loop2_kind(run["config"], env)
                ax.bar(i - 0.4 + width * (j + 0.5), c["mean"] if c else np.nan, width, yerr=c["se"] if c else None,
                       capsize=3, color=f"C{kinds.index(kind)}", label=kind)
            if metric == "log_writes_per_search":
                base, trained = PAPER_WRITES_PER_SEARCH[env]
                ax.plot([i - 0.3, i + 0.3], [base, trained], "k--", marker="x", label="paper: base -> trained")
        ax.set_xticks(range(len(envs)), [ENV_TITLES[e] for e in envs])
        ax.set_title(title)
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one entry per kind
    axes[0][0].legend(unique.values(), unique.keys(), fontsize=7)
    return save_figure(fig, out / "loop2")


def progression_figure(runs, out, paper=False):
    """progression.{png,svg}: per env, memory runs by scaffold version (one line per model); returns the points."""
    envs = [e for e in ENVS if any(e in r["results"]["envs"] for r in runs)]
    if not envs:
        raise ValueError("these runs have no finished episode yet: nothing to plot")
    fig, axes = plt.subplots(1, len(envs), figsize=(4.8 * len(envs), 5.2), squeeze=False)
    plotted = {}
    for ax, env in zip(axes[0], envs):
        series, baselines = {}, []
        for run in runs:
            config, r = run["config"], run["results"]["envs"].get(env)
            if r is None:
                continue
            p = r["progression"]
            if config["agent"] == "memory":
                name = (model_label(config) + (" + memory model" if two_model(config) else "")
                        + (" (memory-only context)" if memory_only(config) else ""))  # its own line, not v_N's point
                series.setdefault(name, {})[scaffold_version(config, env)] = (p["mean"], p["se"])
            else:
                baselines.append((f"{BASELINES[config['agent']]} ({model_label(config)})", p["mean"]))
        versions = sorted({v for points in series.values() for v in points}, key=version_key)
        for name, points in series.items():
            order = sorted(points, key=version_key)
            xs, ys, es = [versions.index(v) for v in order], [points[v][0] for v in order], [points[v][1] for v in order]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, label=name)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        for label, y in baselines:
            ax.axhline(y, ls=":", color="0.4", lw=1, label=f"{label}: {y:.1f}")
        if paper:
            for label, color in (("memory v0", "tab:gray"), ("+ scaffold opt. (loop 1)", "tab:red"),
                                 ("+ memory training (loop 2)", "tab:purple")):
                y = PAPER[label][env][0]
                ax.axhline(y, ls="--", color=color, lw=1, label=f"paper {label}: {y:.2f}")
        ax.set_xticks(range(len(versions)), versions)
        ax.set_xlim(-0.5, max(len(versions), 1) - 0.5)
        ax.margins(y=0.12)
        ax.set_ylim(bottom=0)
        ax.set_title(ENV_TITLES[env])
        ax.set_xlabel("scaffold version")
        ax.set_ylabel("progression (%)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: the lines stay visible
        plotted[env] = series
    return plotted, save_figure(fig, out / "progression")


def first_and_best(runs, env):
    """(first, best) memory runs of env: lowest scaffold version (then earliest), highest progression; the
    memory-only ablation is neither."""
    mine = [r for r in runs if r["config"]["agent"] == "memory" and env in r["results"]["envs"]
            and not memory_only(r["config"])]
    if not mine:
        return None
    first = min(mine, key=lambda r: version_key(scaffold_version(r["config"], env)))  # runs are in start order
    best = max(reversed(mine), key=lambda r: r["results"]["envs"][env]["progression"]["mean"])
    return first, best


def behaviour_figure(runs, out, paper=False):
    """behaviour.{png,svg}: one panel per metric, first vs best memory run per env; returns the values."""
    pairs = {env: fb for env in ENVS if (fb := first_and_best(runs, env))}
    if not pairs:
        return {}, []
    envs = list(pairs)
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.2))
    x, width = np.arange(len(envs)), 0.38
    plotted = {env: {which: {"run": run["results"]["run"], "version": scaffold_version(run["config"], env),
                             **{m: run["results"]["envs"][env]["behaviour"].get(m) for m in METRICS}}
                     for which, run in zip(("first", "best"), pairs[env])} for env in envs}
    for ax, (metric, title) in zip(axes.flat, METRICS.items()):
        for j, (which, color) in enumerate((("first", "tab:gray"), ("best", "tab:blue"))):
            values = [plotted[env][which][metric] for env in envs]
            xs = x + (j - 0.5) * width
            ax.bar(xs, [np.nan if v is None else v for v in values], width, color=color, label=f"{which} run")
            for xi, v in zip(xs, values):
                ax.annotate(metrics.metric_text(v), (xi, 0 if v is None else v), textcoords="offset points",
                            xytext=(0, 2), ha="center", fontsize=7)
        if paper and metric == "log_writes_per_search":
            for j, (which, marker) in enumerate((("base", "_"), ("trained", "x"))):
                ax.scatter(x, [PAPER_WRITES_PER_SEARCH[env][j] for env in envs], marker=marker, s=120,
                           color="tab:red", zorder=3, label=f"paper {which}")
        ax.set_xticks(x, [f"{ENV_TITLES[e]}\n{plotted[e]['first']['version']} vs {plotted[e]['best']['version']}"
                          for e in envs])
        ax.set_title(title)
        ax.margins(y=0.15)
        ax.set_ylim(bottom=0)
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    axes.flat[-1].axis("off")
    axes.flat[-1].legend(handles.values(), handles.keys(), loc="center")
    fig.suptitle("memory behaviour: first vs best run")
    return plotted, save_figure(fig, out / "behaviour")


def save_figure(fig, stem):
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "report"}):  # SVG text stays text
        for path in paths:
            fig.savefig(path, dpi=150, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- command line

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, what in (("table", "markdown table (and CSV with --out)"), ("figure", "PNG + SVG figures")):
        s = sub.add_parser(name, help=what)
        s.add_argument("runs", nargs="+", help="run directories (runs/<name>)")
        s.add_argument("--paper", action="store_true", help="add the paper's numbers (Qwen2.5-32B-Instruct)")
        s.add_argument("--out", help="folder for the files" + (" (default: report)" if name == "figure" else ""))
    s = sub.choices["table"]
    s.add_argument("--latex", action="store_true", help="print the progression table as LaTeX (booktabs); "
                   "with --out also table.tex")
    s = sub.add_parser("compare", help="progression of run B minus run A with a bootstrap 95%% interval")
    s.add_argument("run_a", help="runs/<name> (A, e.g. v0)")
    s.add_argument("run_b", help="runs/<name> (B, e.g. the converged scaffold)")
    s = sub.add_parser("loop2", help="memory behaviour of base and trained-specialist runs, mean ± s.e. per episode")
    s.add_argument("runs", nargs="+", help="run directories: the base run(s), then the two-model run(s)")
    s.add_argument("--out", help="folder for loop2.md and loop2.{png,svg}")
    args = p.parse_args(argv)
    try:
        if args.command == "compare":
            print(compare_markdown(*(load_runs([d])[0] for d in (args.run_a, args.run_b))))
            return
        runs = load_runs(args.runs)
        out = Path(args.out or ("report" if args.command == "figure" else ""))
        if args.out or args.command == "figure":
            out.mkdir(parents=True, exist_ok=True)
        if args.command == "table":
            rows = table_rows(runs, args.paper)
            md, tex = table_markdown(rows, args.paper), args.latex and table_latex(rows)
            print(tex or md)
            if args.out:
                (out / "table.md").write_text(md)
                write_table_csv(rows, out)
                if tex:
                    (out / "table.tex").write_text(tex)
                print(f"wrote {out / 'table.md'}, table.csv, minihack_tasks.csv, behaviour.csv" + (", table.tex" if tex else ""))
        elif args.command == "loop2":
            stats = loop2_stats(runs)
            md = loop2_markdown(stats)
            print(md)
            if args.out:
                (out / "loop2.md").write_text(md)
                print("wrote " + ", ".join(map(str, [out / "loop2.md", *loop2_figure(stats, out)])))
        else:
            _, paths = progression_figure(runs, out, args.paper)
            _, more = behaviour_figure(runs, out, args.paper)
            print("wrote " + ", ".join(map(str, paths + more)))
    except (ValueError, OSError) as e:  # not a run folder, or an --out that cannot be written
        cli.fail(e)


if __name__ == "__main__":
    main()
