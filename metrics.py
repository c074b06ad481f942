"""
metrics.py: progression and memory-behaviour metrics from episode traces, one function each.

Every function takes a list of episodes, each the (header, steps, end) triple that
trace_format.read_trace returns, and pools over them (a ratio is total numerator / total
denominator, so long episodes weigh by their steps; with a zero denominator, e.g. no SEARCH
at all, the metric is None, shown as n/a). Definitions (also in the README):

  unproductive_rate   steps whose action left the game state unchanged (stuck) or returned
                      it to one of the last OSCILLATION_WINDOW states (oscillating); the state
                      is the observation text less the invalid-action feedback and NetHack's
                      turn counter (T:N moves on every timed action, so no state would repeat)
  redundant_write_rate  memory writes whose content already stood in the file / all writes
  empty_search_rate   SEARCH ops that returned no line / all SEARCH ops
  log_writes_per_search  writes in LOG / SEARCH ops in LOG (paper: 0.84 -> 0.39 Crafter after loop 2)
  invalid_action_rate steps whose committed text was not a valid action
  fallback_rate       steps where PLAN never committed and the fallback action ran
  llm_calls_per_step, input_tokens_per_step, output_tokens_per_step, seconds_per_step
"""
import math
import re

import memory_fs

OSCILLATION_WINDOW = 8
TURN_COUNTER = re.compile(r"\bT:\d+")  # NetHack's status line


def mean_se(values):
    """Mean and standard error as BALROG computes them: population std (divide by N) / sqrt(N); None if empty."""
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return {"mean": mean, "se": std / math.sqrt(n) if n > 1 else 0.0, "n": n}


def progression_stats(values):
    """Mean and standard error of progressions (fractions), in %."""
    stats = mean_se(values) or {"mean": 0.0, "se": 0.0, "n": 0}
    return {"mean": 100 * stats["mean"], "se": 100 * stats["se"], "n": stats["n"]}


def bootstrap_difference(a, b, paired, n=10_000, seed=0):
    """Mean of b minus mean of a, in %, with a bootstrap 95% interval: (difference, low, high). Paired (a[i] and
    b[i] are the same episode seed) resamples the pairs; else each side is resampled on its own."""
    import numpy as np
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, float), np.asarray(b, float)
    if paired:
        picks = rng.integers(0, len(a), size=(n, len(a)))
        diffs = b[picks].mean(1) - a[picks].mean(1)
    else:
        diffs = b[rng.integers(0, len(b), size=(n, len(b)))].mean(1) - a[rng.integers(0, len(a), size=(n, len(a)))].mean(1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return 100 * (b.mean() - a.mean()), 100 * low, 100 * high


def calls(steps, routine=None):
    for s in steps:
        for name in ("log", "plan") if routine is None else (routine,):
            if s.get(name):  # no LOG on the first step, nor for the baselines
                yield from s[name]["turns"]


def op_results(steps, routine=None):
    """(op name, result dict) for every executed op; aliases count as the op they stand for."""
    for call in calls(steps, routine):
        for (name, _args), result in zip(call["ops"], call["results"]):
            yield ("UPSERT" if name.startswith("UPSERT") else name), result


def ratio(num, den):
    return num / den if den else None  # undefined (no SEARCH, no write, no step), not a perfect 0


def game_state(text, after_invalid):
    """The observation as a game state: without the invalid-action feedback that opens it after an
    invalid action (envs.INVALID_ACTION: blank lines, the feedback paragraph, "Observation:"), and
    without NetHack's turn counter."""
    if after_invalid:
        text = text.lstrip("\n").split("\n\n", 1)[-1].removeprefix("Observation:\n")
    return TURN_COUNTER.sub("T:", text)


def unproductive_steps(steps, end):
    """Per step: True when its action left the game state unchanged or returned to one of the last
    OSCILLATION_WINDOW states, False when it reached a new one, None when there is no next state
    (the last step of an unfinished episode)."""
    texts = [s["observation"] for s in steps] + [end["final_observation"] if end else None]
    seen = [None if text is None else game_state(text, t > 0 and not steps[t - 1]["valid"])
            for t, text in enumerate(texts)]
    return [None if seen[t + 1] is None else seen[t + 1] in seen[max(0, t + 1 - OSCILLATION_WINDOW):t + 1]
            for t in range(len(steps))]


def unproductive_rate(episodes):
    flags = [f for _, steps, end in episodes for f in unproductive_steps(steps, end)]
    return ratio(sum(f is True for f in flags), sum(f is not None for f in flags))


def redundant_write_rate(episodes):
    writes = [r for _, steps, _ in episodes for name, r in op_results(steps) if name in memory_fs.WRITE_OPS and r["ok"]]
    return ratio(sum(r["redundant"] for r in writes), len(writes))


def empty_search_rate(episodes):
    searches = [r for _, steps, _ in episodes for name, r in op_results(steps) if name == "SEARCH" and r["ok"]]
    return ratio(sum(r["matches"] == 0 for r in searches), len(searches))


def log_writes_per_search(episodes):
    ops = [(name, r) for _, steps, _ in episodes for name, r in op_results(steps, "log") if r["ok"]]
    return ratio(sum(name in memory_fs.WRITE_OPS for name, _ in ops), sum(name == "SEARCH" for name, _ in ops))


def failed_log_op_rate(episodes):
    """Share of the ops LOG's replies held that did not execute (unknown op, missing or bad arguments, no such file):
    whether the memory writer speaks the op language, which the grammar otherwise enforces."""
    ops = [r for _, steps, _ in episodes for _, r in op_results(steps, "log")]
    return ratio(sum(not r["ok"] for r in ops), len(ops))


def invalid_action_rate(episodes):
    steps = [s for _, steps, _ in episodes for s in steps]
    return ratio(sum(not s["valid"] for s in steps), len(steps))


def fallback_rate(episodes):
    steps = [s for _, steps, _ in episodes for s in steps]
    return ratio(sum(s["fallback"] for s in steps), len(steps))


def per_step(episodes, key):
    n_steps = sum(len(steps) for _, steps, _ in episodes)
    if key == "calls":
        return ratio(sum(1 for _, steps, _ in episodes for _ in calls(steps)), n_steps)
    if key == "seconds":
        return ratio(sum(s["seconds"] for _, steps, _ in episodes for s in steps), n_steps)
    return ratio(sum(c[key] for _, steps, _ in episodes for c in calls(steps)), n_steps)


def behaviour(episodes, timed=True):
    """All behaviour and cost metrics of a set of episodes, as a flat dict; timed=False leaves out the wall-clock
    seconds per step (what a re-run of the same episode must reproduce)."""
    return {
        "unproductive_rate": unproductive_rate(episodes),
        "redundant_write_rate": redundant_write_rate(episodes),
        "empty_search_rate": empty_search_rate(episodes),
        "log_writes_per_search": log_writes_per_search(episodes),
        "failed_log_op_rate": failed_log_op_rate(episodes),
        "invalid_action_rate": invalid_action_rate(episodes),
        "fallback_rate": fallback_rate(episodes),
        "llm_calls_per_step": per_step(episodes, "calls"),
        "input_tokens_per_step": per_step(episodes, "prompt_tokens"),
        "output_tokens_per_step": per_step(episodes, "completion_tokens"),
        **({"seconds_per_step": per_step(episodes, "seconds")} if timed else {}),
    }


def metric_text(v):
    """A metric for a table: n/a where undefined (a ratio with nothing to divide by)."""
    return "n/a" if v is None else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
