"""
digest.py: an evaluation run's traces as text for a meta-LLM (loop 1's prompt): what went wrong in each
episode, lowest progression first, within a character budget; every line cites its step.

    text = digest.trace_digest("runs/meta-x/evals/v0", budget=20_000)

Per episode: the outcome; fallbacks; stretches without a new game state (metrics.unproductive_steps),
invalid actions, actions check_action sent back, empty searches, redundant writes and progress, each
with its steps (EVENTS_SHOWN of each kind); the final memory against the initial; one step verbatim.
"""
import re
from pathlib import Path

import cli
import metrics
import trace_format

MIN_EPISODE_CHARS = 1500   # at least this much per episode shown
EVENTS_SHOWN = 5           # examples per kind of event per episode
STUCK_MIN = 3              # report stretches of at least this many steps without a new game state
CUT = " [... cut ...]"      # ends a text cut to fit


def fit(text, n):
    """`text` in at most n characters: cut (cli.clip) and marked CUT when longer."""
    return text if len(text) <= n else cli.clip(text, max(0, n - len(CUT)), CUT)


def line(text, n):
    """`text` as one line of at most n characters."""
    return fit(" ".join(str(text).split()), n)


def trace_digest(eval_dir, budget):
    """What went wrong in the episodes, lowest progression first, cut to `budget` characters."""
    if budget < 200:
        return "(no room left for the trace digest: raise --meta-budget)\n"
    episodes = [trace_format.read_trace(p) for p in sorted(Path(eval_dir, "traces").rglob("*.jsonl"))]
    episodes = sorted((e for e in episodes if e[2]), key=lambda e: e[2]["progression"])
    if not episodes:
        return "(no finished episodes)\n"
    shown = max(1, min(len(episodes), budget // MIN_EPISODE_CHARS))
    parts = [fit(episode_digest(*e), budget // shown - 2) for e in episodes[:shown]]
    if shown < len(episodes):
        rest = [100 * e[2]["progression"] for e in episodes[shown:]]
        parts[-1] = fit(parts[-1], budget // shown - 120)
        parts.append(f"({len(rest)} more episodes not shown; progression {min(rest):.1f}..{max(rest):.1f} %)")
    return re.sub(r"[\x00-\x08\x0b-\x1f]", "", "\n\n".join(parts)) + "\n"  # NLE texts can hold NULs


def episode_digest(header, steps, end):
    """One episode: outcome, events with their steps (EVENTS_SHOWN of each kind), memory, one step verbatim."""
    achieved = f"; achievements: {', '.join(end['achievements'])}" if end["achievements"] else ""
    lines = [f"### {header['task']} seed {header['seed']}: progression {100 * end['progression']:.1f} %, "
             f"{end['steps']} steps, ended by {end['end_reason']}{achieved}"]
    fallbacks = [t for t, s in enumerate(steps) if s["fallback"]]
    if fallbacks:
        ended = [steps[t]["plan"]["ended"] for t in fallbacks]
        lines.append(f"fallback: in {len(fallbacks)} of {len(steps)} steps ({spans(fallbacks)}) PLAN committed no action "
                     f"({', '.join(f'{e} x{ended.count(e)}' for e in dict.fromkeys(ended))}); '{steps[fallbacks[0]]['action']}' ran")
    events = {k: [] for k in ("no new game state", "invalid action", "sent back by check_action", "empty search",
                              "redundant write", "progress")}
    # metrics.unproductive_rate's steps (stuck or back to a recent state), grouped into stretches
    stretches = []
    for t, unproductive in enumerate(metrics.unproductive_steps(steps, end)):
        if unproductive:
            if stretches and stretches[-1][-1] == t - 1:
                stretches[-1].append(t)
            else:
                stretches.append([t])
    for stretch in (s for s in stretches if len(s) >= STUCK_MIN):
        acts = [steps[i]["action"] for i in stretch]
        counts = ", ".join(f"{line(a, 40)!r} x{acts.count(a)}" for a in dict.fromkeys(acts))
        events["no new game state"].append(f"steps {stretch[0]}-{stretch[-1]}: {len(stretch)} steps stuck or back "
                                           f"to a recent state; actions {counts}")
    example = next((s[0] for s in stretches if len(s) >= STUCK_MIN), None)
    for t, s in enumerate(steps):
        if not s["valid"]:
            events["invalid action"].append(f"step {t}: {line(s['action'], 80)!r} is not an action "
                                            f"('{s['executed']}' ran)")
            example = t if example is None else example
        events["sent back by check_action"] += [f"step {t}: {g['action']!r} sent back: {line(g['reason'], 120)}"
                                                for g in s["gate"]]
        for routine, call, _ in trace_format.model_calls(header, s):
            # zip: the op that ended the routine (ACTION, DONE) has no result
            for (name, args), r in zip(call["ops"], call["results"]):
                if name == "SEARCH" and r["ok"] and r["matches"] == 0:
                    events["empty search"].append(f"step {t} {routine.upper()}: SEARCH {line('|'.join(args), 80)} "
                                                  f"found nothing")
                if r["redundant"]:
                    events["redundant write"].append(f"step {t} {routine.upper()}: {name} "
                                                     f"{line('|'.join(args), 80)} was already there")
        if s["progression"] > (steps[t - 1]["progression"] if t else 0.0):
            events["progress"].append(f"step {t}: {s['action']!r} -> progression {100 * s['progression']:.1f} %")
    for kind, found in events.items():
        if found:
            more = [f"... {len(found) - EVENTS_SHOWN} more"] if len(found) > EVENTS_SHOWN else []
            lines.append(f"{kind} ({len(found)}):\n  " + "\n  ".join(found[:EVENTS_SHOWN] + more))
    memory, initial = end["memory"], header["files"]
    changed = [f"{name} ({text.count(chr(10))} lines): ...{line(text[-160:], 160)}"
               for name, text in memory.items() if text != initial.get(name)]
    lines.append(f"memory at the end: {len(memory) - len(changed)} of {len(memory)} files as at the start"
                 + ("; changed: " + "; ".join(changed) if changed else ""))
    if steps:
        t = example if example is not None else 0
        lines.append(step_verbatim(header, t, steps[t]))
    lines.append("final observation:\n  " + fit(end["final_observation"], 400).replace("\n", "\n  "))
    return "\n".join(lines)


def spans(ts):
    """Sorted step numbers as ranges: [0, 1, 2, 5] -> '0-2, 5'."""
    out = []
    for i, t in enumerate(ts):
        if i and t == ts[i - 1] + 1:
            out[-1][1] = t
        else:
            out.append([t, t])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out)


def step_verbatim(header, t, s):
    """One step as the model saw and answered it (clipped), so the meta-LLM sees real replies."""
    lines = [f"step {t} verbatim: observation:\n  " + fit(s["observation"], 500).replace("\n", "\n  ")]
    for routine, call, _ in trace_format.model_calls(header, s):
        lines.append(f"  {routine.upper()} reply: {line(call['reply'], 300)!r}")
    lines.append(f"  action: {s['action']!r} ({'valid' if s['valid'] else 'invalid'})")
    return "\n".join(lines)
