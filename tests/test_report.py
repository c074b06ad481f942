"""Tests of report.py (table, figures, frames, the HTML replay in a real headless Chromium) and of
metrics.py on hand-made traces whose answers are known. Real traces come from automem.run_episode
on the real Crafter and NetHack games with the scripted backend.

    python -m pytest -q tests/test_report.py
"""
import csv
import importlib.util
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import automem
import envs
import eval as evaluation
import llm
import metrics
import report

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
FEEDBACK = "Your previous reply had no valid action, so the default action 'Noop' was taken."


# ----------------------------------------------------------------------------- hand-made traces

def result(ok=True, wrote=False, redundant=False, matches=None):
    return {"text": "", "ok": ok, "wrote": wrote, "redundant": redundant, "matches": matches}


def call(ops=(), results=(), prompt_tokens=10, completion_tokens=2):
    return {"reply": "", "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "seconds": 0.1,
            "model": "base", "messages": [], "ops": [list(o) for o in ops], "results": list(results)}


def step(t, obs, action="Noop", valid=True, log=(), plan=(), writes=(), progression=0.0, **extra):
    return {"type": "step", "step": t, "observation": obs, "action": action, "valid": valid,
            "executed": action if valid else "Noop", "reward": 0.0, "done": False, "progression": progression,
            "seconds": 1.0, "hooks": {}, "gate": [], "fallback": False, "writes": [list(w) for w in writes],
            "log": {"turns": list(log), "ended": "done", "action": None} if log else None,
            "plan": {"turns": list(plan), "ended": "action", "action": action}, **extra}


def episode(observations, final, files=None, env="crafter", task="default", **kw):
    """(header, steps, end): step t sees observations[t]; `final` is the observation after the last step."""
    header = {"type": "episode", "env": env, "task": task, "seed": 42, "agent": "memory", "scaffold": "test-v0",
              "scaffold_hash": "0", "files": files or {}, "actions": [], "max_steps": 100}
    steps = [step(t, o, **kw) for t, o in enumerate(observations)]
    end = {"type": "end", "steps": len(steps), "progression": steps[-1]["progression"] if steps else 0.0,
           "success": None, "success_balrog": None, "end_reason": "max_steps", "achievements": [], "return": 0.0,
           "seconds": 1.0, "final_observation": final, "memory": {}}
    return header, steps, end


def write_trace(path, header, steps, end):
    """Write a trace as run_episode does; read it back with automem.read_trace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in [header, *steps] + ([end] if end else [])))
    return automem.read_trace(path)


def with_calls(ep, log=None, plan=None):
    """Replace the calls of every step of `ep` with those that log(t) / plan(t) return."""
    for t, s in enumerate(ep[1]):
        if log:
            s["log"] = {"turns": log(t), "ended": "done", "action": None}
        if plan:
            s["plan"] = {"turns": plan(t), "ended": "action", "action": s["action"]}
    return ep


# ----------------------------------------------------------------------------- metrics

def test_unproductive_rate_stuck_oscillating_and_new(tmp_path):
    assert metrics.unproductive_rate([write_trace(tmp_path / "a.jsonl", *episode(list("ABCD"), "E"))]) == 0.0
    assert metrics.unproductive_rate([write_trace(tmp_path / "b.jsonl", *episode(list("AAA"), "A"))]) == 1.0
    # A->B new, B->A back to A (oscillating), A->C new, C->D new
    assert metrics.unproductive_rate([episode(list("ABAC"), "D")]) == 0.25
    # a return to a state seen more than OSCILLATION_WINDOW steps ago is exploration, not oscillation
    far = [f"s{i}" for i in range(metrics.OSCILLATION_WINDOW + 1)]
    assert metrics.unproductive_rate([episode(far, "s0")]) == 0.0
    assert metrics.unproductive_rate([episode(far[:-1], "s0")]) == 1 / len(far[:-1])
    assert metrics.unproductive_rate([]) is None


def test_unproductive_rate_ignores_turn_counter_and_invalid_feedback():
    nle = "map:\n|..@.|\nDlvl:1 $:0 HP:16(16) Pw:2(2) AC:7 Xp:1/0 T:{}"
    assert metrics.unproductive_rate([episode([nle.format(1), nle.format(2)], nle.format(3))]) == 1.0
    assert metrics.unproductive_rate([episode([nle.format(1)], nle.format(1).replace("@.", ".@"))]) == 0.0
    # an invalid action ran Noop: only the feedback paragraph is new, so the step did nothing
    ep = episode(["Your status:\nfood 9/9"], FEEDBACK + "\n\nYour status:\nfood 9/9", valid=False)
    assert metrics.unproductive_rate([ep]) == 1.0
    assert metrics.unproductive_rate([episode(["x\n\ny"], FEEDBACK + "\n\ny", valid=False)]) == 0.0


def write_ops(n_writes, n_redundant=0, n_failed=0):
    return call([("APPEND", ["f.txt", "x"])] * (n_writes + n_failed),
                [result(wrote=True, redundant=i < n_redundant) for i in range(n_writes)] + [result(ok=False)] * n_failed)


def test_redundant_write_rate():
    def rate(*calls):
        return metrics.redundant_write_rate([with_calls(episode(["a"], "b"), log=lambda t: list(calls))])
    assert rate(write_ops(3)) == 0.0
    assert rate(write_ops(2, 2)) == 1.0
    assert rate(write_ops(3, 1, n_failed=2), write_ops(1)) == 0.25  # failed writes are not writes
    upsert = call([("UPSERT", ["m.txt", "(1,2):", "(1,2): door"])], [result(wrote=False, redundant=True)])
    assert rate(upsert) == 1.0
    assert rate(call()) is None  # no write at all: undefined, not "perfect"


def searches(*matches):
    return call([("SEARCH", ["f.txt", "k"])] * len(matches), [result(matches=m) for m in matches])


def test_empty_search_rate():
    def rate(c):
        return metrics.empty_search_rate([with_calls(episode(["a", "b"], "c"), plan=lambda t: [c])])
    assert rate(searches(3, 1)) == 0.0
    assert rate(searches(0, 0)) == 1.0
    assert rate(searches(0, 5, 2)) == pytest.approx(1 / 3)
    assert rate(write_ops(1)) is None


def test_log_writes_per_search_counts_log_only():
    def per_search(log_calls, plan_calls=()):
        ep = with_calls(episode(["a", "b"], "c"), log=lambda t: list(log_calls), plan=lambda t: list(plan_calls))
        return metrics.log_writes_per_search([ep])
    assert per_search([searches(1, 2)]) == 0.0
    assert per_search([write_ops(1), searches(4)]) == 1.0
    assert per_search([write_ops(1), searches(0, 1)], plan_calls=[searches(1, 1, 1)]) == 0.5  # PLAN's don't count
    assert per_search([write_ops(3)], plan_calls=[searches(1)]) is None  # writes, never a LOG search: undefined


def test_invalid_action_rate(tmp_path):
    def rate(valid):
        ep = episode(list("abcd"), "e")
        for s, v in zip(ep[1], valid):
            s["valid"] = v
        return metrics.invalid_action_rate([write_trace(tmp_path / "t.jsonl", *ep)])
    assert rate([True] * 4) == 0.0
    assert rate([False] * 4) == 1.0
    assert rate([True, False, True, False]) == 0.5


def test_input_tokens_and_llm_calls_per_step():
    def per_step(calls_at):
        ep = with_calls(episode(list("abcd"), "e"), plan=calls_at)
        return metrics.per_step([ep], "prompt_tokens"), metrics.per_step([ep], "calls")
    assert per_step(lambda t: []) == (0.0, 0.0)
    assert per_step(lambda t: [call(prompt_tokens=1)]) == (1.0, 1.0)
    # steps 0, 2: one call of 100 tokens; steps 1, 3: two calls of 50 and 150
    assert per_step(lambda t: [call(prompt_tokens=100)] if t % 2 == 0 else
                    [call(prompt_tokens=50), call(prompt_tokens=150)]) == (150.0, 1.5)
    assert metrics.behaviour([])["input_tokens_per_step"] is None


def test_behaviour_reports_every_metric_by_name():
    ep = with_calls(episode(list("abcd"), "e"), plan=lambda t: [call(prompt_tokens=10, completion_tokens=3)])
    for s, fallback, seconds in zip(ep[1], (True, False, False, True), (1.0, 2.0, 3.0, 2.0)):
        s["fallback"], s["seconds"] = fallback, seconds  # the step's own seconds, not its calls' (0.1 each)
    assert metrics.behaviour([ep]) == {
        "unproductive_rate": 0.0, "redundant_write_rate": None, "empty_search_rate": None,
        "log_writes_per_search": None, "invalid_action_rate": 0.0, "fallback_rate": 0.5, "llm_calls_per_step": 1.0,
        "input_tokens_per_step": 10.0, "output_tokens_per_step": 3.0, "seconds_per_step": 2.0}


def test_unproductive_steps_unfinished_and_after_an_invalid_step():
    # no end record: the last step has no next state, so it is neither productive nor not
    assert metrics.unproductive_steps(episode(list("AAA"), "A")[1], None) == [True, True, None]
    assert metrics.unproductive_rate([episode(list("AAA"), "A")[:2] + (None,)]) == 1.0
    # step 1 was invalid: the next observation opens with the feedback paragraph; the rest is the state
    header, steps, end = episode(["A", "A\n\nB"], FEEDBACK + "\n\nA\n\nB")
    steps[1]["valid"] = False
    assert metrics.unproductive_steps(steps, end) == [False, True]
    assert metrics.unproductive_steps(*episode(["A"], "A", valid=False)[1:]) == [True]  # no paragraph to strip


def test_a_real_invalid_action_that_changes_nothing_is_unproductive():
    """The game's own invalid-action feedback (envs.INVALID_ACTION, opening the observation) is not game state."""
    game = envs.make("nethack")
    game.reset(42)
    after_esc = game.step("esc")[0].text        # valid: the welcome message goes
    after_invalid = game.step("North")[0].text  # invalid: esc runs again and nothing changes
    assert "Defaulted to action: esc" in after_invalid
    assert metrics.game_state(after_invalid, True) == metrics.game_state(after_esc, False)


def test_progression_stats_values():
    assert metrics.progression_stats([]) == {"mean": 0.0, "se": 0.0, "n": 0}
    assert metrics.progression_stats([0.5]) == {"mean": 50.0, "se": 0.0, "n": 1}
    assert metrics.progression_stats([0.0, 1.0]) == {"mean": 50.0, "se": pytest.approx(50 / 2 ** 0.5), "n": 2}


def test_aliased_writes_count_and_calls_without_ops_are_skipped():
    upsert_map = call([("UPSERT_MAP", ["3,4", "door"])], [result(redundant=True)])  # a custom op of UPSERT
    bare = {k: v for k, v in call().items() if k not in ("ops", "results")}  # a call with no ops recorded
    ep = with_calls(episode(["a"], "b"), log=lambda t: [upsert_map, bare])
    assert metrics.redundant_write_rate([ep]) == 1.0 and metrics.empty_search_rate([ep]) is None


# ----------------------------------------------------------------------------- real traces (scripted model)

def scripted_run(env, out, steps, seed=42, kind="memory", run="demo-v0"):
    """An episode of the real game with scripted replies: LOG appends then searches, PLAN searches
    then acts (one reply per call, so calls and ops per step are known)."""
    scaffold = automem.load_scaffold(ROOT / "scaffolds" / env / "v0")
    game = envs.make(env)
    rnd = random.Random(seed)
    names = sorted(scaffold["files"])
    actions = {"crafter": ["Move West", "Move East", "Move North", "Do", "Noop", "move west"],
               "nethack": ["far east", "far west", "north", "south", "east", "west", "search"]}[env]

    def reply(messages):
        if kind == "cot":
            return "Explore.\nACTION: " + rnd.choice(actions)
        if "<|DONE|>" in messages[0]["content"]:  # LOG's prompts offer <|DONE|>, PLAN's do not
            return (f"<|APPEND|>{rnd.choice(names)}|seen {len(messages)} {rnd.randint(0, 2)}<|END|>\n"
                    f"<|SEARCH|>{rnd.choice(names)}|seen 3<|END|>\n<|DONE|>")
        return f"<|SEARCH|>{rnd.choice(names)}|tree<|END|> <|ACTION|>{rnd.choice(actions)}<|END|>"

    agent = automem.Agent(scaffold, llm.load("scripted", replies=reply), game, out.parent / "memory" / out.stem, kind=kind)
    try:
        automem.run_episode(agent, game, seed, out, max_steps=steps, header={"run": run, "episode": 0})
    finally:
        game.close()
    return out


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    return {"crafter": scripted_run("crafter", d / "crafter" / "default__00.jsonl", 12),
            "nethack": scripted_run("nethack", d / "nethack" / "NetHackChallenge-v0__00.jsonl", 10),
            "nethack_cot": scripted_run("nethack", d / "cot" / "NetHackChallenge-v0__00.jsonl", 7, kind="cot",
                                        run="demo-cot")}


def test_metrics_on_a_real_trace(traces):
    ep = automem.read_trace(traces["crafter"])
    b = metrics.behaviour([ep])
    assert b["log_writes_per_search"] == 1.0  # every LOG reply: one APPEND, one SEARCH
    assert b["llm_calls_per_step"] == pytest.approx((1 + 2 * 11) / 12)  # step 0 has no LOG
    assert b["invalid_action_rate"] == sum(s["action"] == "move west" for s in ep[1]) / 12  # case matters
    assert b["input_tokens_per_step"] > 100


# ----------------------------------------------------------------------------- memory rebuild

def test_memory_rebuild_replays_writes_and_trusts_snapshots(tmp_path):
    header, steps, end = episode(["a", "b", "c"], "d", files={"notes.txt": "", "map.txt": "start"})
    steps[0]["writes"] = [["APPEND", ["notes.txt", "tree west"]], ["UPSERT", ["map.txt", "(1,2):", "door"]]]
    steps[1]["writes"] = [["UPSERT", ["map.txt", "(1,2):", "wall"]], ["CREATE", ["new.txt", "hi"]]]
    steps[1]["snapshot"] = {"notes.txt": "tree west\n", "map.txt": "start\n(1,2): wall\n", "new.txt": "hi\n"}
    steps[2]["writes"] = [["WRITE", ["notes.txt", "rewritten"]]]
    end["memory"] = {"notes.txt": "rewritten\n", "map.txt": "start\n(1,2): wall\n", "new.txt": "hi\n"}
    assert report.memory_at(header, steps, -1) == {"notes.txt": "", "map.txt": "start\n"}
    assert report.memory_at(header, steps, 0) == {"notes.txt": "tree west\n", "map.txt": "start\n(1,2): door\n"}
    assert report.memory_at(header, steps, 2) == end["memory"]
    write_trace(tmp_path / "t.jsonl", header, steps, end)
    view, _ = report.episode_view(tmp_path / "t.jsonl")
    assert view["problems"] == []
    assert view["mem"][0] == {"map.txt": [6, 0, "(1,2): door\n"], "notes.txt": [0, 0, "tree west\n"]}
    assert view["mem"][3] == {}  # the end: nothing beyond the replay
    # a snapshot that disagrees with the writes wins, and the page says so
    steps[1]["snapshot"]["notes.txt"] = "edited by hand\n"
    assert report.memory_at(header, steps, 1)["notes.txt"] == "edited by hand\n"
    write_trace(tmp_path / "t.jsonl", header, steps, end)
    view, _ = report.episode_view(tmp_path / "t.jsonl")
    assert [p.split(":")[0] for p in view["problems"]] == ["step 1"]


@pytest.mark.parametrize("old,new", [("", "abc\n"), ("ab\n", "ab\ncd\n"), ("k: 1\nz\n", "k: 2\nz\n"),
                                     ("x\n", ""), ("a😀b\n", "a😀c😀b\n"), ("😀\n", "😀😀\n"), ("same", "same")])
def test_splice_indices_are_javascript_string_indices(old, new):
    p, s, text = report.splice(old, new)
    units = lambda t: t.encode("utf-16-le")  # noqa: E731  (JavaScript strings are UTF-16 code units)
    o = units(old)
    assert o[:2 * p] + units(text) + o[len(o) - 2 * s:] == units(new)


# ----------------------------------------------------------------------------- frames

def crafter_frames(n):
    game = envs.make("crafter")
    game.reset(7)
    frames = [game.frame()]
    for action in (["Move West", "Noop", "Move North", "Do"] * n)[:n - 1]:
        game.step(action)
        frames.append(game.frame())
    return frames


def test_save_frames_compact_deduplicated_and_sparse(tmp_path):
    frames = crafter_frames(8)
    frames.insert(2, frames[1])  # a repeated frame is stored once
    path = report.save_frames(tmp_path / "ep.frames.npz", frames)
    stored = report.load_frames(path)
    new = [t for t in range(len(frames)) if t == 0 or not np.array_equal(frames[t], frames[t - 1])]
    assert [t for t, _ in stored] == new and 2 not in new
    image = Image.open(io.BytesIO(stored[0][1]))
    assert image.size == (128, 128) and image.mode == "P"
    assert path.stat().st_size < 8 * 8000  # about 4 KB a frame, not 196 KB of raw pixels
    every = report.load_frames(report.save_frames(tmp_path / "e.npz", [None] + frames[1:], every=3))
    assert [t for t, _ in every] == [3, 6, 8]  # every 3rd step, no frame 0 given, and the last one
    with pytest.raises(ValueError, match="RGB uint8"):
        report.save_frames(tmp_path / "x.npz", [["|..@..|"] * 24])


def test_record_frames_replays_the_game(traces):
    path = report.record_frames(traces["crafter"])
    stored = report.load_frames(path)
    assert path == report.frames_path(traces["crafter"]) and path.name == "default__00.frames.npz"
    assert stored[0][0] == 0 and stored[-1][0] <= 12 and len(stored) >= 2
    assert report.record_frames(traces["nethack"]) is None  # the map is in the trace


# ----------------------------------------------------------------------------- table and figures

def make_run(runs_dir, name, agent, env_progressions, version="v0", expected=None, started="1"):
    """A run directory as eval.py leaves it: hand-made traces, results.json from eval.summarize."""
    config = {"run_name": name, "agent": agent, "backend": {"model": "/m/SmolLM2-135M-Instruct.Q4_1.gguf"},
              "memory_adapter": None, "memory_model": None, "limits": {}, "started": started,
              "scaffolds": {env: {"path": f"scaffolds/{env}/{version}", "name": f"{env}-{version}"} for env in env_progressions},
              "jobs": []}
    for env, tasks in env_progressions.items():
        for task, values in tasks.items():
            for i, v in enumerate(values + [None] * ((expected or {}).get(env, len(values)) - len(values))):
                job = {"env": env, "task": task, "episode": i, "seed": 42 + i}
                config["jobs"].append(job)
                if v is None:  # not finished
                    continue
                header, steps, end = episode(["a", "b", "a"], "c", env=env, task=task)
                header["seed"], end["progression"] = job["seed"], v
                with_calls((header, steps, end), log=lambda t: [write_ops(1), searches(0, 3)])
                write_trace(evaluation.trace_path(runs_dir / name, job), header, steps, end)
    evaluation.summarize(config, runs_dir / name)
    (runs_dir / name / "config.json").write_text(json.dumps(config))
    return runs_dir / name


@pytest.fixture()
def runs(tmp_path):
    d = tmp_path / "runs"
    mh = {"MiniHack-MazeWalk-9x9-v0": [1.0, 0.0], "MiniHack-Corridor-R3-v0": [0.0, 0.0]}
    return [make_run(d, "c-v0", "memory", {"crafter": {"default": [0.1, 0.2, 0.3, 0.4]}, "minihack": mh},
                     expected={"crafter": 5}, started="2"),
            make_run(d, "c-v1", "memory", {"crafter": {"default": [0.5, 0.5]}}, version="v1", started="3"),
            make_run(d, "c-win", "window", {"crafter": {"default": [0.0, 0.1]}}, started="1"),
            make_run(d, "c-v0-again", "memory", {"crafter": {"default": [0.2]}}, started="4")]


def test_table_numbers(runs, tmp_path, capsys):
    report.main(["table", *map(str, runs), str(tmp_path / "not-a-run"), "--paper", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "table.md").read_text()
    assert md == capsys.readouterr().out.split("wrote ")[0].rstrip("\n") + "\n"
    model = "SmolLM2-135M-Instruct.Q4_1"
    # crafter v0: 0.1..0.4 -> 25 % ± population std 11.18 / sqrt(4); 4 of 5 episodes done
    assert f"| memory v0 | {model} | 25.00 ± 5.59 (4/5) | 25.00 ± 21.65 | – | memory v0 |" in md
    assert f"| memory v1 | {model} | 50.00 ± 0.00 | – | – | – |" in md  # a loop-1 version of ours: no paper row
    assert f"| sliding window | {model} | 5.00 ± 3.54 | – | – | sliding window |" in md  # 0 and 10 %: std 5 / sqrt(2)
    assert f"| memory v0 [c-v0-again] | {model} | 20.00 ± 0.00 | – | – | memory v0 |" in md  # a re-run: own row
    assert "| memory v0 | Qwen2.5-32B-Instruct (paper) | 25.00 ± 5.50 | 7.50 ± 4.16 | 0.42 ± 0.37 |  |" in md
    order = [md.index(f"| {label} | Qwen2.5-32B-Instruct (paper) | {c['crafter'][0]:.2f}") for label, c in report.PAPER.items()]
    assert order == sorted(order)  # the paper's rows in its order, each followed by the rows of ours beside it
    assert order[0] < md.index(f"| sliding window | {model}") < order[1] < order[2] < md.index(f"| memory v0 | {model}") \
        < md.index(f"| memory v0 [c-v0-again] | {model}") < order[3] < md.index(f"| memory v1 | {model}")
    assert f"| memory v0 | {model} | 0.00 ± 0.00 | 50.00 ± 35.36 |" in md  # MiniHack per task
    # behaviour: observations a, b, a, then c (1 of 3 steps returns to a); each step: LOG calls
    # [APPEND], [SEARCH 0 matches, SEARCH 3 matches] of 10 prompt tokens each, and no PLAN call
    assert f"| memory v1 | {model} | 0.333 | 0.000 | 0.500 | 0.500 | 0.000 | 20.000 | 2.000 |" in md
    assert "| + memory training (loop 2) | Qwen2.5-32B-Instruct (paper) | – | – | – | 0.39 |" in md
    rows = list(csv.DictReader(open(tmp_path / "out" / "table.csv")))
    v0 = next(r for r in rows if r["agent"] == "memory v0" and r["runs"] == "c-v0")
    assert (float(v0["crafter_mean"]), float(v0["crafter_se"]), v0["crafter_n"], v0["crafter_expected"]) == \
        (pytest.approx(25.0), pytest.approx(5.5902, abs=1e-4), "4", "5")
    tasks = list(csv.DictReader(open(tmp_path / "out" / "minihack_tasks.csv")))
    assert {(r["task"], float(r["mean"])) for r in tasks} == {("MiniHack-MazeWalk-9x9-v0", 50.0),
                                                              ("MiniHack-Corridor-R3-v0", 0.0)}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        report.main(["table", str(tmp_path / "not-a-run")])
    assert e.value.code == 2 and "error: no run directory" in capsys.readouterr().err


def test_converged_scaffolds_stand_beside_the_papers_loop_rows():
    config = {"agent": "memory", "memory_adapter": None, "memory_model": None,
              "scaffolds": {"crafter": {"path": "scaffolds/crafter/v5"}, "minihack": {"path": "scaffolds/minihack/v5"}}}
    assert report.paper_row(config, "crafter") == "+ scaffold opt. (loop 1)"
    assert report.paper_row(config, "minihack") is None  # MiniHack's converged version is v4
    assert report.paper_row({**config, "memory_adapter": "adapters/crafter"}, "crafter") == "+ memory training (loop 2)"
    assert report.paper_row({**config, "agent": "cot"}, "crafter") == "chain-of-thought"


def test_compare_pairs_by_seed_with_a_bootstrap_interval(tmp_path, capsys):
    d = tmp_path / "runs"
    mh_a = {"MiniHack-MazeWalk-9x9-v0": [0.0, 0.0, 1.0], "MiniHack-Corridor-R3-v0": [0.0, 0.0, 0.0]}
    mh_b = {"MiniHack-MazeWalk-9x9-v0": [1.0, 1.0, 1.0], "MiniHack-Corridor-R3-v0": [0.0, 1.0, 0.0]}
    a = make_run(d, "a", "memory", {"minihack": mh_a, "crafter": {"default": [0.1, 0.2]}})
    b = make_run(d, "b", "memory", {"minihack": mh_b, "crafter": {"default": [0.3]}}, version="v4")
    report.main(["compare", str(a), str(b)])
    md = capsys.readouterr().out
    # MiniHack: 1/6 -> 4/6 solved, paired by seed; the paper's v0 -> loop 1 difference is 27.50 - 7.50
    row = next(line for line in md.splitlines() if line.startswith("| MiniHack | all |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2:5] == ["6 / 6", "paired", "+50.00"] and cells[6] == "+20.00 (+ scaffold opt. (loop 1) - memory v0)"
    low, high = (float(x) for x in cells[5].strip("[]").split(","))
    assert 0 < low < 50 < high <= 100  # every resample gains: B never loses an episode A won
    assert "| MiniHack | MazeWalk-9x9 | 3 / 3 | paired | +66.67 |" in md
    # Crafter: different seeds -> unpaired; 15 % -> 30 %; no paper row for crafter v4
    assert "| Crafter | all | 2 / 1 | unpaired | +15.00 | [+10.00, +20.00] | – |" in md
    assert report.metrics.bootstrap_difference([0, 1], [0, 1], paired=True) == (0.0, 0.0, 0.0)


def test_figures_plot_the_numbers(runs, tmp_path):
    out = tmp_path / "fig"
    report.main(["figure", *map(str, runs), "--paper", "--out", str(out)])
    for name in ("progression", "behaviour"):
        assert Image.open(out / f"{name}.png").size[0] > 600
    loaded = report.load_runs(runs)
    points, _ = report.progression_figure(loaded, out, paper=True)
    model = "SmolLM2-135M-Instruct.Q4_1"
    assert points["crafter"][model]["v1"] == (50.0, 0.0)
    assert points["crafter"][model]["v0"] == pytest.approx((20.0, 0.0))  # the later re-run of v0
    assert points["minihack"][model] == {"v0": (25.0, pytest.approx(21.6506, abs=1e-4))}
    svg = (out / "progression.svg").read_text()
    for text in ("50.0", "20.0", "25.0", "sliding window (SmolLM2-135M-Instruct.Q4_1): 5.0",
                 "paper memory v0: 25.00", "paper + scaffold opt. (loop 1): 47.27", "scaffold version"):
        assert text in svg, text
    values, _ = report.behaviour_figure(loaded, out, paper=True)
    assert (values["crafter"]["first"]["run"], values["crafter"]["best"]["run"]) == ("c-v0", "c-v1")
    assert values["crafter"]["best"]["log_writes_per_search"] == 0.5
    svg = (out / "behaviour.svg").read_text()
    for text in ("LOG writes / SEARCH", "0.500", "0.333", "20.000", "v0 vs v1", "paper trained"):
        assert text in svg, text


# ----------------------------------------------------------------------------- replay page

def test_replay_page_is_self_contained(traces, tmp_path):
    report.record_frames(traces["crafter"])
    page = report.write_replay(traces["crafter"], tmp_path / "r.html").read_text()
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)  # the SVG namespace is a name, not a fetch
    view, pngs = report.episode_view(traces["crafter"])
    assert view["n"] == 12 and len(view["obs"]) == 13 and len(view["mem"]) == 13 and view["problems"] == []
    assert len(pngs) == len(view["frame_steps"]) >= 2 and pngs[0] in page


def test_replay_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report.main(["replay", str(tmp_path / "missing.jsonl")])
    assert e.value.code == 2 and "error: no trace at" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit):
        report.main(["replay", str(tmp_path / "empty.jsonl")])
    assert "not an episode trace" in capsys.readouterr().err


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = ("chromium is not installed (apt-get install -y chromium)" if not Path(CHROMIUM).is_file() else
               "playwright is not installed (pip install playwright)" if not importlib.util.find_spec("playwright") else None)
    if missing and os.environ.get("CI") == "true":  # CI must check the page in a browser: fail, never skip
        pytest.fail(f"{missing}: the replay page cannot be checked in a browser")
    if missing:
        pytest.skip(f"{missing}; the replay page is not checked in a browser")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1000})
        yield context
        context.close()


def open_page(browser, path, init_script=None):
    page = browser.new_page()
    if init_script:
        page.add_init_script(init_script)  # runs before the page's own scripts
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    page.goto(path.as_uri())
    page.wait_for_function("window.replay && window.replay.ready", timeout=20_000)
    return page, errors


def test_replay_in_chromium_steps_frames_ops_and_memory(browser, traces, tmp_path):
    report.record_frames(traces["crafter"])
    page, errors = open_page(browser, report.write_replay(traces["crafter"], tmp_path / "crafter.html"))
    first = page.evaluate("replay.panels()")[0]
    assert first["step"] == 0 and first["frame"] == "image"
    assert any(op.startswith("ACTION") for op in first["ops"]) and not any(op.startswith("APPEND") for op in first["ops"])
    page.click("#next")
    page.click("#next")
    second = page.evaluate("replay.panels()")[0]
    assert second["step"] == 2 and second["frame"] == "image"
    assert second["ops"] != first["ops"] and any(op.startswith("APPEND") for op in second["ops"])
    assert second["changed"] and second["selected"] in [c.split(" (")[0] for c in second["changed"]]
    header, steps, _ = automem.read_trace(traces["crafter"])
    assert second["content"] == report.memory_at(header, steps, 2)[second["selected"]]
    frames = {page.evaluate(f"(replay.go({t}), replay.panels()[0].frameKey)") for t in range(13)}
    assert len(frames) > 1  # stepping changes the frame
    page.keyboard.press("End")
    end = page.evaluate("replay.panels()")[0]
    assert end["step"] == 12 and "end after 12 steps" in end["status"]
    page.check("#raw")
    raw = page.evaluate("replay.panels()")[0]
    final = automem.read_trace(traces["crafter"])[2]["final_observation"]
    assert raw["frame"] == "text" and raw["frameKey"] == final
    page.uncheck("#raw")
    page.click("#play")  # plays from the start to the end, then stops
    page.wait_for_function("replay.position() === 12 && document.querySelector('#play').textContent === 'play'", timeout=30_000)
    # what the browser draws at step 0 is the stored frame, pixel for pixel (shown 3x, pixelated)
    page.evaluate("replay.go(0)")
    stored = np.asarray(Image.open(io.BytesIO(report.load_frames(report.frames_path(traces["crafter"]))[0][1])).convert("RGB"))
    box = page.locator(".frame img").bounding_box()
    assert (box["width"], box["height"]) == (3 * stored.shape[1], 3 * stored.shape[0])
    shot = page.screenshot(clip={"x": round(box["x"]), "y": round(box["y"]), "width": box["width"], "height": box["height"]})
    drawn = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))[1::3, 1::3]  # each 3x3 block's centre pixel
    assert np.array_equal(drawn, stored)
    assert errors == []


def test_replay_in_chromium_side_by_side_lockstep(browser, traces, tmp_path):
    html = report.write_replay(traces["nethack"], tmp_path / "vs.html", vs=traces["nethack_cot"])
    page, errors = open_page(browser, html)
    a, b = page.evaluate("replay.panels()")
    assert (a["last"], b["last"]) == (10, 7) and a["frame"] == b["frame"] == "map"
    assert a["frameKey"] == b["frameKey"]  # same seed, same start
    for t, expected in ((3, (3, 3)), (9, (9, 7)), (5, (5, 5))):
        page.evaluate(f"replay.go({t})")
        a, b = page.evaluate("replay.panels()")
        assert (a["step"], b["step"]) == expected
        assert int(page.input_value("#scrub")) == t
    assert a["files"] and b["files"] == [] and "this episode is over" not in a["status"] + b["status"]
    page.evaluate("replay.go(9)")
    assert "this episode is over" in page.evaluate("replay.panels()")[1]["status"]
    page.keyboard.press("ArrowLeft")
    assert [p["step"] for p in page.evaluate("replay.panels()")] == [8, 7]
    assert "@" in page.evaluate("replay.panels()")[0]["frameKey"]
    left, right = [page.locator(".panel").nth(i).bounding_box() for i in (0, 1)]
    assert left["y"] == right["y"] and right["x"] >= left["x"] + left["width"]  # side by side, not stacked
    assert errors == []


def planted(where):
    """Markup that runs script if a page ever treats text as HTML; each records `where` in window.pwned."""
    return (f"</title></pre>&lt;i&gt;<img src=x onerror=\"pwned.push('{where}')\">"
            f"<script>pwned.push('{where} script')</script>")


def hostile_trace(path):
    """A trace whose every text a model, a hook, the game or a user wrote carries planted markup."""
    sites = ["run", "scaffold", "action", "observation", "reply", "op args", "op result", "gate", "hook", "memory",
             "final observation", "end reason", "achievement"]
    header, steps, end = episode([planted("observation")] * 2, planted("final observation"), files={"notes.txt": ""},
                                 action=planted("action"), valid=False)
    header.update(run=planted("run"), scaffold=planted("scaffold"))
    for s in steps:
        s["writes"] = [["APPEND", ["notes.txt", planted("memory")]]]
        s["gate"] = [{"action": "Noop", "reason": planted("gate"), "turns": []}]
        s["hooks"] = {"observe": [planted("hook")]}
        s["plan"]["turns"] = [{**call([("SEARCH", ["notes.txt", planted("op args")])],
                                      [{**result(matches=0), "text": planted("op result")}]), "reply": planted("reply")}]
    end.update(end_reason=planted("end reason"), achievements=[planted("achievement")],
               memory={"notes.txt": "".join(planted("memory") + "\n" for _ in steps)})
    write_trace(path, header, steps, end)
    return path, sites


def test_replay_page_escapes_what_it_did_not_write(tmp_path):
    """The static half of the check in Chromium below: the page's script has no HTML sink, and a run name full of
    markup reaches the HTML only escaped, in <title> (the data travels base64-encoded)."""
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "srcdoc", "eval(", "Function("):
        assert sink not in report.PAGE, sink
    trace, _ = hostile_trace(tmp_path / "t.jsonl")
    page = report.write_replay(trace, tmp_path / "t.html").read_text()
    title = page.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "<" not in title and "&lt;/title>&lt;/pre>&amp;lt;i&amp;gt;&lt;img src=x" in title
    assert page.count("<script") == report.PAGE.count("<script") + 1 and "pwned" not in page.split("</title>", 1)[1]


def test_replay_in_chromium_runs_no_planted_markup(browser, tmp_path):
    """Every text of a hostile trace is shown as text at every step: no planted <script> or <img onerror> runs."""
    trace, sites = hostile_trace(tmp_path / "t.jsonl")
    page, errors = open_page(browser, report.write_replay(trace, tmp_path / "t.html"), init_script="window.pwned = []")
    shown = page.evaluate("document.title")
    for t in range(3):  # two steps and the end
        page.evaluate(f"replay.go({t}); document.querySelectorAll('details').forEach((d) => d.open = true)")
        shown += page.evaluate("document.querySelector('#panels').textContent")
    page.wait_for_function("[...document.images].every((img) => img.complete)")  # a planted image would have failed
    assert page.evaluate("window.pwned") == []
    assert page.evaluate("[...document.images].filter((img) => !img.src.startsWith('data:')).length") == 0
    assert page.evaluate("document.querySelectorAll('script:not([type])').length") == 1  # the page's own
    assert [where for where in sites if planted(where) not in shown] == []  # each one shown, as text
    assert errors == []


def test_eval_writes_the_replay_of_its_first_episode(traces, tmp_path):
    # a process of its own: eval.py keeps its loaded model for the life of the process
    out = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--env", "crafter", "--backend", "scripted",
                          "--model", str(traces["crafter"]), "--episodes", "1", "--max-steps", "3",
                          "--runs-dir", str(tmp_path), "--run-name", "e"], capture_output=True, text=True, check=True).stdout
    assert "| log_writes_per_search | 1.000 |" in out and "replay.html" in out
    page = (tmp_path / "e" / "replay.html").read_text()
    frames = report.load_frames(tmp_path / "e" / "traces" / "crafter" / "default__00.frames.npz")
    view, pngs = report.episode_view(tmp_path / "e" / "traces" / "crafter" / "default__00.jsonl")
    assert view["n"] == 3 and frames[0][0] == 0 and pngs[0] in page
