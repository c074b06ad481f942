"""
report.py: see what the agent does. Tables and figures over finished runs, and an HTML replay
of one episode (or two side by side) built from its trace alone.

    python report.py table runs/*                       # the paper's table: progression % mean ± s.e.
    python report.py table runs/* --paper --out report  # + the paper's rows; writes .md and .csv files
    python report.py table runs/* --paper --latex        # the progression table as LaTeX (booktabs); table.tex with --out
    python report.py figure runs/* --paper --out report # progression per scaffold version, behaviour panels
    python report.py compare runs/a runs/b              # B - A per env (MiniHack per task), bootstrap 95% interval
    python report.py replay runs/x/traces/crafter/default__00.jsonl
    python report.py replay runs/a/traces/minihack/T__00.jsonl --vs runs/b/traces/minihack/T__00.jsonl --out ab.html

table: one row per agent (baseline, memory scaffold version, + memory model) and model, from each
run's config.json and results.json; columns Crafter / MiniHack / NetHack, and the paper's row a run stands
beside (v0; the converged scaffolds crafter v5, minihack v4, nethack v2 as loop 1; those with a memory model as
loop 2); with --paper our rows follow that row. A cell shows "(done/expected)" when the run is unfinished. Also the MiniHack per-task cells and the
memory-behaviour metrics (metrics.py) per env.
compare: run B's progression minus run A's per env and MiniHack task, with a bootstrap 95% interval (paired by
seed where both ran the same episodes) and the paper's difference between the rows the two runs stand beside.
figure: progression.{png,svg} (memory runs by scaffold version, error bars = s.e.; dotted lines:
our baselines; dashed: the paper) and behaviour.{png,svg} (first vs best memory run per env;
first = lowest scaffold version, best = highest progression).
replay: one self-contained HTML file (inline JS/CSS, data gzip+base64, nothing fetched): play,
pause, step, scrub; the frame (Crafter: the frames file beside the trace, see save_frames;
NetHack/MiniHack: the ASCII map from the observation text) or the raw text; LOG and PLAN calls
with their memory ops and results; the memory files as they stood after that step (rebuilt from
the header's files and each step's writes with memory_fs.MemoryFS.apply; the trace's snapshots
reset the rebuild); progression and status. --vs shows a second episode in lockstep.
Keys: space play/pause, arrows step, Home/End.
"""
import argparse
import base64
import csv
import gzip
import io
import json
import re
import sys
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

import automem
import eval as evaluation
import memory_fs
import metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

ENVS = ("crafter", "minihack", "nethack")
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
RESULT_CHARS = 1500  # replay page: op result text kept per op
REPLY_CHARS = 2000   # replay page: model reply text kept per call
FRAME_SIDE = 128     # save_frames: Crafter's 256 px render halved keeps its 28 px tiles whole (14 px)
FRAME_COLORS = 64    # save_frames: palette size; 128 px frames are then about 4 KB each


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


def agent_label(config):
    """Row label: the baseline's name, or "memory <scaffold versions>" [+ memory model]."""
    if config["agent"] != "memory":
        return BASELINES[config["agent"]]
    versions = sorted({Path(s["path"]).name for s in config["scaffolds"].values()}, key=version_key)
    label = "memory " + "/".join(versions)
    if two_model(config):
        name = config.get("memory_adapter") or config.get("memory_model")
        label += f" + memory model ({Path(name).name if name else 'its own server'})"
    return label


CONVERGED = {"crafter": "v5", "minihack": "v4", "nethack": "v2"}  # the authors' loop-1 results, shipped re-expressed


def paper_row(config, env):
    """The paper's row this run stands beside for one env, or None: a baseline, v0, the converged scaffold (loop 1),
    or the converged scaffold with a memory model (loop 2)."""
    if config["agent"] != "memory":
        return BASELINES[config["agent"]]
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
    paths = [evaluation.trace_path(run["dir"], job) for run in parts for job in run["config"]["jobs"] if job["env"] == env]
    cell = {**metrics.progression_stats([e["progression"] for e in episodes]),
            "expected": sum(run["results"]["envs"][env]["expected_episodes"] for run in parts)}
    return (cell, {t: metrics.progression_stats(v) for t, v in tasks.items()},
            metrics.behaviour([automem.read_trace(path) for path in paths if path.is_file()]))


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


def cell_text(c):
    if c is None:
        return "–"
    text = f"{c['mean']:.2f} ± {c['se']:.2f}"
    return text + (f" ({c['n']}/{c['expected']})" if c["expected"] and c["n"] < c["expected"] else "")


def short_task(task):
    return task.removeprefix("MiniHack-").removesuffix("-v0")


def markdown_table(head, body):
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def table_markdown(rows, paper=False):
    envs = [e for e in ENVS if any(e in r["cells"] for r in rows)]
    out = ["## Progression (%), mean ± standard error", "",
           markdown_table(["agent", "model"] + [ENV_TITLES[e] for e in envs] + ["stands beside the paper's row"],
                          [[r["label"], r["model"]] + [cell_text(r["cells"].get(e)) for e in envs]
                           + ["" if r["paper"] else ", ".join(r["paper_rows"]) or "–"] for r in rows])]
    task_rows = [r for r in rows if r["tasks"]]
    if task_rows:
        tasks = sorted({t for r in task_rows for t in r["tasks"]})
        out += ["", "## MiniHack per task (%)", "",
                markdown_table(["agent", "model"] + [short_task(t) for t in tasks],
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
                    markdown_table(["agent", "model"] + list(METRICS.values()), body)]
    return "\n".join(out) + "\n"


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text):
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def table_latex(rows):
    """The progression table as a LaTeX tabular (needs \\usepackage{booktabs}): mean $\\pm$ s.e. per env, the paper's
    rows in italics, "(done/expected)" after an unfinished run's cell."""
    envs = [e for e in ENVS if any(e in r["cells"] for r in rows)]

    def cell(c):
        if c is None:
            return "--"
        text = f"${c['mean']:.2f} \\pm {c['se']:.2f}$"
        return text + (f" ({c['n']}/{c['expected']})" if c["expected"] and c["n"] < c["expected"] else "")

    lines = [r"\begin{tabular}{ll" + "r" * len(envs) + "}", r"\toprule",
             " & ".join(["Agent", "Model"] + [ENV_TITLES[e] for e in envs]) + r" \\", r"\midrule"]
    for r in rows:
        names = [latex_escape(r["label"]), latex_escape(r["model"])]
        names = [rf"\textit{{{n}}}" for n in names] if r["paper"] else names
        lines.append(" & ".join(names + [cell(r["cells"].get(e)) for e in envs]) + r" \\")
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
    return head + markdown_table(["env", "task", "episodes A / B", "by seed", "B - A", "95% interval (bootstrap)",
                                  "paper's B - A"], body) + "\n"


# ----------------------------------------------------------------------------- figures

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
                name = model_label(config) + (" + memory model" if two_model(config) else "")
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
    """(first, best) memory runs of env: lowest scaffold version (then earliest), highest progression."""
    mine = [r for r in runs if r["config"]["agent"] == "memory" and env in r["results"]["envs"]]
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


# ----------------------------------------------------------------------------- frames

def frames_path(trace):
    """Where an episode's frames live: beside the trace, <episode>.frames.npz."""
    trace = Path(trace)
    return trace.with_name(trace.name.removesuffix(".jsonl") + ".frames.npz")


def save_frames(path, frames, every=1, side=FRAME_SIDE, colors=FRAME_COLORS):
    """Store an episode's RGB frames compactly: frames[t] is the view at step t (before its action;
    the last one after the final action), None where absent. Every `every`-th step is kept (and the
    last), scaled to at most `side` px, reduced to a `colors` palette and PNG-encoded; a frame equal
    to the one kept before it is skipped (the replay shows the latest kept frame at or before a
    step). The .npz holds steps (int32), offsets (int64, n+1) and png (uint8, all PNGs joined)."""
    steps, blobs, last = [], [], None
    for t, frame in enumerate(frames):
        if frame is None or (t % every and t != len(frames) - 1):
            continue
        a = np.asarray(frame)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"frame {t}: expected an RGB uint8 array (H, W, 3), got {a.dtype} {a.shape} "
                             "(NetHack/MiniHack need no frames file: the replay draws their map from the trace)")
        if last is not None and np.array_equal(a, last):
            continue
        last = a
        image = Image.fromarray(a)
        if max(image.size) > side:
            scale = side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BOX)
        buf = io.BytesIO()
        image.quantize(colors, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        steps.append(t)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # an open file: np.savez would append .npz to a name without it
        np.savez(f, steps=np.array(steps, np.int32), offsets=offsets,
                 png=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8))
    return Path(path)


def record_frames(trace, every=1):
    """Rebuild a Crafter episode's frames by replaying its actions on its seed (the game is
    deterministic), checking each observation against the trace, and store them with save_frames
    beside the trace. NetHack/MiniHack need none (their map is in the trace): returns None."""
    import envs  # here, not at the top: tables, figures and replays need no game
    header, steps, end = automem.read_trace(trace)
    if header is None or header["env"] != "crafter":
        return None
    game = envs.make(header["env"], header["task"], max_steps=header["max_steps"])
    try:
        obs, frames = game.reset(header["seed"]), [game.frame()]
        for s in steps:
            if obs.text != s["observation"]:
                raise ValueError(f"{trace}: replaying its actions gives another observation at step {s['step']}, "
                                 "so its frames cannot be rebuilt (was it made with another game version?)")
            obs = game.step(s["action"])[0]
            frames.append(game.frame())
    finally:
        game.close()
    if end and obs.text != end["final_observation"]:
        raise ValueError(f"{trace}: replaying its actions gives another final observation; no frames written")
    return save_frames(frames_path(trace), frames if end else frames[:-1], every)


def load_frames(path):
    """[(step, PNG bytes)] from a save_frames file."""
    with np.load(path, allow_pickle=False) as z:
        steps, offsets, png = z["steps"], z["offsets"], z["png"]
    return [(int(t), png[offsets[i]:offsets[i + 1]].tobytes()) for i, t in enumerate(steps)]


# ----------------------------------------------------------------------------- memory replay

def replay_memory(files, steps):
    """Rebuild memory step by step from `files` (the header's, or a snapshot) with MemoryFS.apply.
    Yields (step record, files after its writes, names changed, problem text or ""). A step's
    recorded snapshot is authoritative: the rebuild continues from it (a mismatch is a problem)."""
    with tempfile.TemporaryDirectory() as root:
        fs = memory_fs.MemoryFS(Path(root) / "0", files)
        state = fs.snapshot()
        for s in steps:
            touched, problem = set(), ""
            for name, args in s.get("writes") or []:
                try:
                    fs.apply(memory_fs.Op(name, list(args), ""))
                except ValueError as e:
                    problem = problem or str(e)
                if args and args[0] in fs.names():
                    touched.add(args[0])
            new = {n: fs.read(n) for n in touched}
            changed = {n for n in touched if new[n] != state.get(n)}
            state = {**state, **new}
            if "snapshot" in s and s["snapshot"] != state:
                problem = problem or "the rebuilt memory differs from the trace's snapshot (the snapshot is shown)"
                changed |= {n for n in set(state) | set(s["snapshot"]) if state.get(n) != s["snapshot"].get(n)}
                fs = memory_fs.MemoryFS(Path(root) / str(s["step"]), s["snapshot"])
                state = fs.snapshot()
            yield s, state, changed, problem


def stored(files):
    """`files` as MemoryFS stores them (a non-empty text ends with a newline)."""
    with tempfile.TemporaryDirectory() as root:
        return memory_fs.MemoryFS(root, files).snapshot()


def memory_at(header, steps, t):
    """The memory files after step t's writes (t = -1: the initial files), rebuilt from the nearest
    snapshot at or before t."""
    start, state = 0, stored(header.get("files") or {})
    for i in range(min(t, len(steps) - 1), -1, -1):
        if "snapshot" in steps[i]:
            start, state = i + 1, steps[i]["snapshot"]
            break
    for _, state, _, _ in replay_memory(state, steps[start:t + 1]):
        pass
    return dict(state)


def splice(old, new):
    """[p, s, text] with new == old[:p] + text + old[len(old) - s:], p and s counted in UTF-16
    code units (JavaScript string indices)."""
    if new.startswith(old):
        p, s = len(old), 0  # the common case: an append
    else:
        lo, hi = 0, min(len(old), len(new))
        while lo < hi:  # longest common prefix, by halving: slices compare in C
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if old[:mid] == new[:mid] else (lo, mid - 1)
        p, lo, hi = lo, 0, min(len(old), len(new)) - lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if old[len(old) - mid:] == new[len(new) - mid:] else (lo, mid - 1)
        s = lo
    return [utf16_len(old[:p]), utf16_len(old[len(old) - s:]), new[p:len(new) - s]]


def utf16_len(text):
    return len(text.encode("utf-16-le")) // 2


# ----------------------------------------------------------------------------- replay page

def clip(text, n):
    text = text or ""
    return text if len(text) <= n else text[:n] + f"\n[... {len(text) - n} more characters not shown]"


def call_view(call):
    """One model call: its ops with their results (None once the routine stopped)."""
    results = call.get("results") or []
    ops = []
    for i, (name, args) in enumerate(call.get("ops") or []):
        r = results[i] if i < len(results) else None
        ops.append([name, clip("|".join(args), RESULT_CHARS), None if r is None else
                    {"t": clip(r["text"], RESULT_CHARS), "ok": r["ok"], "w": r["wrote"], "rd": r["redundant"], "n": r["matches"]},
                    r is None and i == len(results)])  # the op that ended the routine
    return {"m": call.get("model", "base"), "reply": clip(call.get("reply"), REPLY_CHARS), "ops": ops,
            "pt": call.get("prompt_tokens"), "ct": call.get("completion_tokens"), "s": call.get("seconds"),
            "drop": call.get("dropped_action")}


def routine_view(routine):
    if not routine:
        return None
    return {"ended": routine.get("ended"), "action": routine.get("action"),
            "turns": [call_view(c) for c in routine.get("turns") or []]}


def episode_view(trace):
    """Everything the page shows of one episode, from its trace (and frames file, if any)."""
    header, steps, end = automem.read_trace(trace)
    if header is None or not steps:
        raise ValueError(f"{trace}: not an episode trace with steps (expected runs/<name>/traces/<env>/<task>__NN.jsonl)")
    view_steps, mem, problems, total = [], [], [], 0.0
    before = files0 = stored(header.get("files") or {})
    for s, state, changed, problem in replay_memory(files0, steps):
        mem.append({n: None if n not in state else splice(before.get(n, ""), state[n]) for n in sorted(changed)})
        before = state
        if problem:
            problems.append(f"step {s['step']}: {problem}")
        total += s.get("reward") or 0.0
        view_steps.append({"a": s["action"], "v": s["valid"], "x": s["executed"], "r": s["reward"], "ret": total,
                           "p": s["progression"], "fb": s.get("fallback", False), "gate": [[g["action"], g["reason"]] for g in s.get("gate") or []],
                           "hooks": s.get("hooks") or {}, "log": routine_view(s.get("log")),
                           "plan": routine_view(s.get("plan"))})
    obs = [s["observation"] for s in steps]
    if end:  # the last position shows the end: final observation and final memory
        obs.append(end["final_observation"])
        final = end.get("memory") or {}
        diff = {n: None if n not in final else splice(before.get(n, ""), final[n])
                for n in sorted(set(final) | set(before)) if final.get(n) != before.get(n)}
        if diff:
            problems.append("end: the rebuilt memory differs from the trace's final memory (the final memory is shown)")
        mem.append(diff)
    frames = load_frames(frames_path(trace)) if frames_path(trace).is_file() else []
    return {
        "title": f"{header.get('run') or Path(trace).parent.parent.parent.name} · {Path(trace).stem}",
        "meta": f"{header['env']} · {header['task']} · seed {header['seed']} · agent {header['agent']}"
                + (f" · scaffold {header['scaffold']} ({header.get('scaffold_hash')})" if header["agent"] == "memory" else ""),
        "env": header["env"], "n": len(steps), "steps": view_steps, "obs": obs, "mem": mem,
        "files0": files0,
        "end": end and {k: end.get(k) for k in ("steps", "progression", "success", "end_reason", "achievements", "return")},
        "frame_steps": [t for t, _ in frames], "problems": problems,
    }, [base64.b64encode(png).decode() for _, png in frames]


def write_replay(trace, out=None, vs=None, frames=False):
    """Write the replay page of `trace` (and `vs` beside it, in lockstep) to `out` (default: the
    trace's path with .html); return the path. frames=True first rebuilds missing Crafter frames
    (record_frames); if that fails the page shows the text, with a note on stderr."""
    out = Path(out) if out else Path(trace).with_suffix(".html")
    for t in [trace] + ([vs] if vs else []):
        if frames and not frames_path(t).is_file():
            try:
                record_frames(t)
            except ValueError as e:
                print(f"note: {e}; the replay shows the text observation", file=sys.stderr)
    views = [episode_view(t) for t in [trace] + ([vs] if vs else [])]
    data = base64.b64encode(gzip.compress(json.dumps({"episodes": [v for v, _ in views]}, ensure_ascii=False)
                                          .encode(), mtime=0)).decode()
    frame_tags = "".join(f'<script type="text/plain" id="frames-{k}">{chr(10).join(pngs)}</script>\n'
                         for k, (_, pngs) in enumerate(views))  # base64 PNGs, one a line
    title = " vs ".join(v["title"] for v, _ in views)
    page = (PAGE.replace("{{title}}", title.replace("&", "&amp;").replace("<", "&lt;"))
            .replace("{{data}}", data).replace("{{frames}}", frame_tags))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>replay: {{title}}</title>
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f1; color: #222; }
header { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #ccc; padding: 6px 10px;
         display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
header button { min-width: 36px; font-family: ui-monospace, monospace; }
#scrub { flex: 1; min-width: 200px; }
#pos { font-variant-numeric: tabular-nums; min-width: 110px; }
#panels { display: grid; grid-template-columns: repeat(var(--n), minmax(0, 1fr)); gap: 10px; padding: 10px; }
.panel { background: #fff; border: 1px solid #ccc; border-radius: 4px; padding: 8px; min-width: 0; }
.panel h2 { font-size: 14px; margin: 0; }
.panel h3 { font-size: 13px; margin: 10px 0 2px; }
.cols { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.cols > div { min-width: 0; } .cols > .right { flex: 1 1 340px; }
.meta, .turnhead, .note { color: #666; font-size: 12px; }
.status { margin: 6px 0; font-variant-numeric: tabular-nums; }
.status b { font-weight: 600; }
.bad { color: #b00; }
.chart { width: 100%; height: 36px; display: block; background: #fafafa; border: 1px solid #eee; }
.frame { margin: 6px 0; overflow: auto; max-width: 100%; }
.frame img { width: 384px; max-width: 100%; image-rendering: pixelated; display: block; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; font: 12px/1.25 ui-monospace, monospace; }
pre.map { white-space: pre; background: #111; color: #ddd; padding: 6px; display: inline-block; min-width: 80ch; }
pre.map .me { color: #ff0; font-weight: bold; }
pre.text { background: #f7f7f7; padding: 6px; max-height: 420px; overflow: auto; }
.routine h4 { margin: 8px 0 2px; font-size: 13px; }
.turn { border-left: 3px solid #ddd; padding-left: 6px; margin: 4px 0; }
.op { margin: 2px 0; }
.opname { font-weight: 600; font-family: ui-monospace, monospace; margin-right: 6px; }
.args { font-family: ui-monospace, monospace; color: #333; }
.flag { margin-left: 6px; font-size: 11px; padding: 0 4px; border-radius: 3px; background: #eee; }
.op.wrote .opname { color: #0a5; } .op.err .opname { color: #b00; } .op.stop .opname { color: #06c; }
.op.skip { opacity: .5; }
pre.result { background: #f7f7f7; padding: 2px 4px; max-height: 160px; overflow: auto; }
.files { display: flex; flex-wrap: wrap; gap: 4px; margin: 6px 0; }
.files button { font-size: 12px; border: 1px solid #bbb; background: #f6f6f6; border-radius: 3px; cursor: pointer; }
.files button.changed { background: #dff5e6; border-color: #0a5; }
.files button.sel { outline: 2px solid #06c; }
pre.file { background: #fbfbf6; border: 1px solid #eee; padding: 6px; max-height: 360px; overflow: auto; }
pre.file mark { background: #c9f2d4; }
#error { color: #b00; padding: 10px; }
</style></head>
<body>
<header>
  <button id="first" title="first step (Home)">|&lt;</button><button id="prev" title="step back (←)">&lt;</button>
  <button id="play" title="play / pause (space)">play</button><button id="next" title="step forward (→)">&gt;</button>
  <button id="last" title="last step (End)">&gt;|</button>
  <input id="scrub" type="range" min="0" max="0" value="0"><span id="pos"></span>
  <label>speed <select id="speed"><option>1</option><option selected>4</option><option>10</option><option>30</option>
  </select> steps/s</label>
  <label><input id="raw" type="checkbox"> text observation</label>
</header>
<div id="error"></div>
<main id="panels"></main>
<script type="text/plain" id="data">{{data}}</script>
{{frames}}<script>
"use strict";
const CHECKPOINT = 64;  // memory states kept every 64 steps, so scrubbing back replays at most 63 diffs
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
let panels = [], pos = 0, maxPos = 0, timer = null;
window.replay = { ready: false, go: (t) => go(t), position: () => pos, panels: () => panels.map(inspect) };

async function load() {
  const bin = atob($("data").textContent.trim());
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}

// Memory as it stood after step t: the initial files plus each step's splices [p, s, text].
function memory(ep) {
  const saved = new Map([[-1, Object.assign({}, ep.files0)]]);
  let t = -1, files = Object.assign({}, ep.files0);
  return function at(target) {
    if (target < t) {
      const k = Math.max(...[...saved.keys()].filter((k) => k <= target));
      t = k; files = Object.assign({}, saved.get(k));
    }
    while (t < target) {
      t += 1;
      for (const [name, d] of Object.entries(ep.mem[t] || {})) {
        if (d === null) { delete files[name]; continue; }
        const old = files[name] || "";
        files[name] = old.slice(0, d[0]) + d[2] + old.slice(old.length - d[1]);
      }
      if (t % CHECKPOINT === 0) saved.set(t, Object.assign({}, files));
    }
    return files;
  };
}

function chart(ep) {
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  const n = ep.obs.length, stride = Math.max(1, Math.ceil(n / 600));
  const prog = ep.steps.map((s) => s.p).concat(ep.end ? [ep.end.progression] : []);
  const top = Math.max(1e-9, ...prog);
  svg.setAttribute("viewBox", `0 0 ${Math.max(1, n - 1)} 1`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  const line = document.createElementNS(ns, "polyline"), cursor = document.createElementNS(ns, "line");
  const pts = [];
  for (let i = 0; i < prog.length; i += stride) pts.push(`${i},${(1 - 0.9 * prog[i] / top).toFixed(4)}`);
  line.setAttribute("points", pts.join(" "));
  line.setAttribute("style", "fill:none;stroke:#0a5;stroke-width:2;vector-effect:non-scaling-stroke");
  cursor.setAttribute("y1", 0); cursor.setAttribute("y2", 1);
  cursor.setAttribute("style", "stroke:#06c;stroke-width:1;vector-effect:non-scaling-stroke");
  const title = document.createElementNS(ns, "title");
  title.textContent = `progression over the episode (top of the chart: ${(100 * top).toFixed(1)}%)`;
  svg.append(title, line, cursor);
  return { svg, move: (i) => { cursor.setAttribute("x1", i); cursor.setAttribute("x2", i); } };
}

function makePanel(ep, k) {
  const root = el("section", "panel");
  const framesEl = $("frames-" + k);
  const pngs = framesEl && framesEl.textContent.trim() ? framesEl.textContent.trim().split("\n") : [];
  const p = { ep, root, pngs, last: ep.obs.length - 1, at: memory(ep), selected: null, pinned: false, chart: chart(ep) };
  p.status = el("div", "status"); p.frame = el("div", "frame"); p.ops = el("div", "ops");
  p.files = el("div", "files"); p.file = el("pre", "file");
  const cols = el("div", "cols"), left = el("div", "left"), right = el("div", "right");
  left.append(p.frame);
  right.append(el("h3", null, "memory ops"), p.ops, el("h3", null, "memory files (after this step)"), p.files, p.file);
  cols.append(left, right);
  root.append(el("h2", null, ep.title), el("div", "meta", ep.meta), p.status, p.chart.svg, cols);
  if (ep.problems.length) root.append(el("div", "note bad", "memory rebuild: " + ep.problems.slice(0, 5).join("; ")));
  if (!pngs.length && ep.env === "crafter") p.frame.dataset.note = "no frames file beside the trace: text view";
  $("panels").append(root);
  return p;
}

function frameIndex(p, i) {  // the latest stored frame at or before step i
  let lo = 0, hi = p.ep.frame_steps.length - 1, found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (p.ep.frame_steps[mid] <= i) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

function renderFrame(p, i) {
  const text = p.ep.obs[i], box = p.frame, f = frameIndex(p, i), at = text.lastIndexOf("\nmap:\n");
  box.replaceChildren();
  if ($("raw").checked) {
    p.frameKind = "text"; box.append(el("pre", "text", text));
  } else if (f >= 0) {
    p.frameKind = "image";
    const img = el("img"); img.alt = `frame of step ${p.ep.frame_steps[f]}`;
    img.src = "data:image/png;base64," + p.pngs[f]; box.append(img);
  } else if (at >= 0) {
    p.frameKind = "map";
    const pre = el("pre", "map"), map = text.slice(at + 6).replace(/\s+$/, ""), me = map.indexOf("@");
    if (me >= 0) pre.append(map.slice(0, me), el("span", "me", "@"), map.slice(me + 1)); else pre.append(map);
    box.append(pre);
  } else {
    p.frameKind = "text"; box.append(el("pre", "text", text));
    if (box.dataset.note) box.append(el("div", "note", box.dataset.note));
  }
  p.frameKey = box.textContent + (box.querySelector("img") ? box.querySelector("img").src.length + ":" + f : "");
}

function renderStatus(p, t, i) {
  const s = p.ep.steps[i], st = p.status;
  st.replaceChildren();
  const pct = (v) => (100 * v).toFixed(1) + "%";
  if (s) {
    st.append(el("b", null, `step ${i} / ${p.ep.n}`), " · action ");
    st.append(el("b", s.v ? null : "bad", s.a === "" ? '""' : s.a));
    if (!s.v) st.append(el("span", "bad", ` (invalid: ran ${s.x})`));
    if (s.fb) st.append(el("span", "bad", " (PLAN never committed: fallback)"));
    st.append(` · reward ${+s.r.toFixed(3)} · return ${+s.ret.toFixed(3)} · progression `, el("b", null, pct(s.p)));
  } else {
    const e = p.ep.end;
    const success = e.success === null || e.success === undefined ? "" : ` · success ${e.success}`;
    const unlocked = e.achievements && e.achievements.length ? ` · achievements: ${e.achievements.join(", ")}` : "";
    st.append(el("b", null, `end after ${e.steps} steps`), " · progression ", el("b", null, pct(e.progression)),
              ` · ${e.end_reason || "stopped"}${success} · return ${+(+e.return).toFixed(3)}${unlocked}`);
  }
  if (t > p.last) st.append(el("span", "note", " (this episode is over)"));
  p.chart.move(i);
}

function renderCall(c, j) {
  const turn = el("div", "turn");
  turn.append(el("div", "turnhead", `call ${j + 1} · ${c.m} model · ${c.pt} in / ${c.ct} out tokens · ${c.s} s`));
  if (!c.ops.length) turn.append(el("div", "op skip", "(no op in the reply)"));
  for (const [name, args, r, ended] of c.ops) {
    const op = el("div", "op " + (r ? (r.ok ? (r.w ? "wrote" : "ok") : "err") : ended ? "stop" : "skip"));
    op.append(el("span", "opname", name), el("span", "args", args));
    if (r) {
      if (r.rd) op.append(el("span", "flag", "redundant"));
      if (r.n !== null && r.n !== undefined) op.append(el("span", "flag", `${r.n} match${r.n === 1 ? "" : "es"}`));
      if (r.t) op.append(el("pre", "result", r.t));
    } else op.append(el("span", "flag", ended ? "ends the routine" : "not run (after the end)"));
    turn.append(op);
  }
  if (c.drop !== null && c.drop !== undefined) turn.append(el("div", "note", `memory model's action dropped: ${c.drop}`));
  const d = el("details");
  d.open = !c.ops.length;  // a baseline's reply is all there is to see
  d.append(el("summary", null, "reply"), el("pre", "result", c.reply));
  turn.append(d);
  return turn;
}

function renderOps(p, i) {
  const s = p.ep.steps[i];
  p.ops.replaceChildren();
  if (!s) { p.ops.append(el("div", "note", "episode over")); return; }
  for (const [name, r] of [["LOG", s.log], ["PLAN", s.plan]]) {
    if (!r) continue;
    const box = el("div", "routine");
    box.append(el("h4", null, `${name} · ${r.turns.length} call${r.turns.length === 1 ? "" : "s"} · ended: ${r.ended}`
                              + (r.action !== null && r.action !== undefined ? ` · action: ${r.action}` : "")));
    r.turns.forEach((c, j) => box.append(renderCall(c, j)));
    p.ops.append(box);
  }
  for (const [a, why] of s.gate) p.ops.append(el("div", "note bad", `action ${a} sent back: ${why}`));
  for (const [hook, outs] of Object.entries(s.hooks)) {
    const d = el("details");
    d.append(el("summary", null, `hook ${hook}`), el("pre", "result", outs.join("\n---\n")));
    p.ops.append(d);
  }
}

function renderMemory(p, i) {
  const files = p.at(i), diff = p.ep.mem[i] || {}, names = Object.keys(files).sort();
  p.files.replaceChildren(); p.file.replaceChildren();
  p.file.hidden = !names.length;
  if (!names.length) { p.files.append(el("span", "note", "no memory files (baseline agent)")); return; }
  // The file shown follows this step's change, unless one was clicked (pinned).
  if (!p.pinned || !(p.selected in files))
    p.selected = names.find((n) => n in diff) || (p.selected in files ? p.selected : names[0]);
  for (const name of names) {
    const lines = (files[name].match(/\n/g) || []).length;
    const b = el("button", (name in diff ? "changed" : "") + (name === p.selected ? " sel" : ""), `${name} (${lines})`);
    b.onclick = () => { p.selected = name; p.pinned = true; renderMemory(p, i); };
    p.files.append(b);
  }
  const text = files[p.selected], d = diff[p.selected];
  if (d) {  // this step's change: text[d[0] .. length - d[1]]
    const end = text.length - d[1];
    p.file.append(text.slice(0, d[0]), el("mark", null, text.slice(d[0], end)), text.slice(end));
    const mark = p.file.querySelector("mark");
    if (mark && mark.textContent) p.file.scrollTop = Math.max(0, mark.offsetTop - p.file.offsetTop - 40);
  } else p.file.append(text || "(empty)");
}

function go(t) {
  pos = Math.max(0, Math.min(maxPos, Math.round(t)));
  $("scrub").value = pos;
  $("pos").textContent = `step ${pos} / ${maxPos}`;
  for (const p of panels) {
    const i = Math.min(pos, p.last);
    p.root.dataset.step = i;
    renderStatus(p, pos, i); renderFrame(p, i); renderOps(p, i); renderMemory(p, i);
  }
}

function inspect(p) {  // test hook: what a panel shows now
  return { step: +p.root.dataset.step, last: p.last, frame: p.frameKind, frameKey: p.frameKey,
           ops: [...p.ops.querySelectorAll(".op")].map((o) => o.textContent),
           files: [...p.files.querySelectorAll("button")].map((b) => b.textContent),
           changed: [...p.files.querySelectorAll("button.changed")].map((b) => b.textContent),
           selected: p.selected, content: p.file.textContent, status: p.status.textContent };
}

function play(on) {
  clearInterval(timer); timer = null;
  $("play").textContent = on ? "pause" : "play";
  if (!on) return;
  if (pos >= maxPos) go(0);
  timer = setInterval(() => { if (pos >= maxPos) play(false); else go(pos + 1); }, 1000 / +$("speed").value);
}

async function main() {
  try {
    const data = await load();
    document.documentElement.style.setProperty("--n", data.episodes.length);
    panels = data.episodes.map(makePanel);
    maxPos = Math.max(...panels.map((p) => p.last));
    $("scrub").max = maxPos;
    $("scrub").oninput = (e) => go(+e.target.value);
    $("first").onclick = () => go(0); $("last").onclick = () => go(maxPos);
    $("prev").onclick = () => go(pos - 1); $("next").onclick = () => go(pos + 1);
    $("play").onclick = () => play(timer === null);
    $("speed").onchange = () => { if (timer !== null) play(true); };
    $("raw").onchange = () => go(pos);
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" && e.target.type !== "checkbox") return;
      const keys = { ArrowRight: () => go(pos + 1), ArrowLeft: () => go(pos - 1), Home: () => go(0),
                     End: () => go(maxPos), " ": () => play(timer === null) };
      if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
    });
    go(0);
    window.replay.ready = true;
    document.body.dataset.ready = "1";
  } catch (err) {
    $("error").textContent = "cannot show the replay: " + err;
    console.error(err);
  }
}
main();
</script>
</body></html>
"""


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
    s = sub.add_parser("compare", help="progression of run B minus run A with a bootstrap 95% interval")
    s.add_argument("run_a", help="runs/<name> (A, e.g. v0)")
    s.add_argument("run_b", help="runs/<name> (B, e.g. the converged scaffold)")
    s = sub.add_parser("replay", help="self-contained HTML replay of an episode")
    s.add_argument("trace", help="runs/<name>/traces/<env>/<task>__NN.jsonl")
    s.add_argument("--vs", help="a second trace, shown beside the first in lockstep")
    s.add_argument("--out", help="HTML file (default: the trace's path with .html)")
    s.add_argument("--frames", action="store_true", help="Crafter: rebuild missing frames by replaying the actions")
    args = p.parse_args(argv)
    try:
        if args.command == "replay":
            for path in [args.trace] + ([args.vs] if args.vs else []):
                if not Path(path).is_file():
                    raise FileNotFoundError(f"no trace at {path}: pass runs/<name>/traces/<env>/<task>__NN.jsonl")
            print(write_replay(args.trace, args.out, args.vs, args.frames))
            return
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
        else:
            _, paths = progression_figure(runs, out, args.paper)
            _, more = behaviour_figure(runs, out, args.paper)
            print("wrote " + ", ".join(map(str, paths + more)))
    except (ValueError, FileNotFoundError) as e:
        evaluation.fail(e)


if __name__ == "__main__":
    main()
