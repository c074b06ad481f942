"""Tests of report.py (table, figures) and of metrics.py on hand-made traces whose answers are known. Real
traces come from automem.run_episode on the real Crafter and NetHack games with the scripted backend; the
hand-made and real traces here serve tests/test_replay.py too.

    python -m pytest -q tests/test_report.py
"""
import csv
import json
import random
from pathlib import Path

import pytest
from PIL import Image

import automem
import envs
import eval as evaluation
import llm
import metrics
import report
import run_folder
import scaffold_spec
import trace_format

ROOT = Path(__file__).resolve().parent.parent
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
    """Write a trace as run_episode does; read it back with trace_format.read_trace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in [header, *steps] + ([end] if end else [])))
    return trace_format.read_trace(path)


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


def test_failed_log_op_rate_counts_log_only():
    def rate(log_calls, plan_calls=()):
        ep = with_calls(episode(["a", "b"], "c"), log=lambda t: list(log_calls), plan=lambda t: list(plan_calls))
        return metrics.failed_log_op_rate([ep])
    assert rate([write_ops(3)]) == 0.0
    assert rate([write_ops(1, n_failed=3)]) == 0.75
    assert rate([write_ops(1)], plan_calls=[write_ops(0, n_failed=5)]) == 0.0  # PLAN's failures don't count
    assert rate([call()]) is None  # LOG's replies held no op: undefined


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
        "log_writes_per_search": None, "failed_log_op_rate": None, "invalid_action_rate": 0.0, "fallback_rate": 0.5, "llm_calls_per_step": 1.0,
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


def test_aliased_writes_count_and_calls_without_ops_are_skipped(tmp_path):
    upsert_map = call([("UPSERT_MAP", ["3,4", "door"])], [result(redundant=True)])  # a custom op of UPSERT
    bare = {k: v for k, v in call().items() if k not in ("ops", "results")}  # a version-1 trace's call without ops
    ep = write_trace(tmp_path / "t.jsonl", *with_calls(episode(["a"], "b"), log=lambda t: [upsert_map, bare]))
    assert metrics.redundant_write_rate([ep]) == 1.0 and metrics.empty_search_rate([ep]) is None


# ----------------------------------------------------------------------------- real traces (scripted model)

def scripted_run(env, out, steps, seed=42, kind="memory", run="demo-v0"):
    """An episode of the real game with scripted replies: LOG appends then searches, PLAN searches
    then acts (one reply per call, so calls and ops per step are known)."""
    scaffold = scaffold_spec.load_scaffold(ROOT / "scaffolds" / env / "v0")
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
    ep = trace_format.read_trace(traces["crafter"])
    b = metrics.behaviour([ep])
    assert b["log_writes_per_search"] == 1.0  # every LOG reply: one APPEND, one SEARCH
    assert b["llm_calls_per_step"] == pytest.approx((1 + 2 * 11) / 12)  # step 0 has no LOG
    assert b["invalid_action_rate"] == sum(s["action"] == "move west" for s in ep[1]) / 12  # case matters
    assert b["input_tokens_per_step"] > 100


# ----------------------------------------------------------------------------- table and figures

def make_run(runs_dir, name, agent, env_progressions, version="v0", expected=None, started="1", context="full",
             log_writes=None, memory_adapter=None):
    """A run directory as eval.py leaves it: hand-made traces, results.json from eval.summarize. Each step's LOG
    makes log_writes[episode] writes (default 1) and two searches (0 and 3 matches)."""
    config = {"run_name": name, "agent": agent, "backend": {"model": "/m/SmolLM2-135M-Instruct.Q4_1.gguf"}, "context": context,
              "memory_adapter": memory_adapter, "memory_model": None, "limits": {}, "started": started,
              "scaffolds": {env: {"path": f"scaffolds/{env}/{version}", "name": f"{env}-{version}", "grammar": True}
                            for env in env_progressions},
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
                writes = log_writes[i] if log_writes else 1
                with_calls((header, steps, end), log=lambda t: [write_ops(writes), searches(0, 3)])
                write_trace(run_folder.trace_path(runs_dir / name, job), header, steps, end)
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
    ablation = {**config, "context": "memory-only"}  # the converged scaffold with its Python off is no paper row
    assert report.paper_row(ablation, "crafter") is None
    assert report.agent_label(ablation) == "memory v5 (memory-only context)"
    assert report.agent_label({**config, "context": "full"}) == "memory v5"


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


def without_specialist(run):
    config = json.loads((run / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in ("memory_adapter", "memory_model")}


def test_loop2_behaviour_base_vs_trained(tmp_path, capsys):
    d, adapter = tmp_path / "runs", tmp_path / "adapters" / "crafter"
    adapter.mkdir(parents=True)
    (adapter / "card.json").write_text(json.dumps({
        "run_id": "d3b7f249d596", "base_model": "/m/SmolLM2-135M-Instruct.Q4_1.gguf", "data_sha256": "fcb90c83f351" + "0" * 52,
        "examples": 642, "config": {"rank": 128, "lr": 5e-05, "epochs": 3}, "steps": 117, "loss_before": 0.6814,
        "loss_after": 0.4}))
    base = make_run(d, "base", "memory", {"crafter": {"default": [0.1, 0.2]}}, started="1")
    trained = make_run(d, "trained", "memory", {"crafter": {"default": [0.2, 0.3]}}, started="2", log_writes=[0, 1],
                       memory_adapter=str(adapter / "adapter.gguf"))
    out = tmp_path / "out"
    report.main(["loop2", str(base), str(trained), "--out", str(out)])
    md = (out / "loop2.md").read_text()
    # each step: LOG writes (1, or 0 in the trained run's first episode) and 2 searches, 1 of them empty;
    # observations a, b, a: 1 of 3 steps unproductive
    assert "| base | memory v0, grammar on | 2 | 15.00 ± 3.54 | 0.500 ± 0.000 | 0.000 ± 0.000 | 0.500 ± 0.000 " \
           "| 0.000 ± 0.000 | 0.333 ± 0.000 | 0.000 ± 0.000 |" in md
    # per episode 0.0 and 0.5 writes per SEARCH: mean 0.25, population std 0.25 / sqrt(2); no write, no redundancy rate
    assert "| trained | memory v0 + memory model (adapter.gguf), grammar on | 2 | 25.00 ± 3.54 | 0.250 ± 0.177 " \
           "| 0.000 ± 0.000 (n=1) | 0.500 ± 0.000 |" in md
    assert "| paper | Qwen2.5-32B-Instruct: base -> trained |  |  | 0.84 -> 0.39 |" in md
    assert "- trained: run d3b7f249d596, base SmolLM2-135M-Instruct.Q4_1.gguf, data sha256 fcb90c83f351 (642 examples), " \
           "rank 128, lr 5e-05, 3 epochs, 117 steps, eval loss 0.6814 -> 0.4000" in md
    report.main(["loop2", str(trained), str(base), "--out", str(out)])  # rows in reading order, base first
    md = (out / "loop2.md").read_text()
    assert md.index("| base | memory v0") < md.index("| trained | memory v0")
    kinds = {"memory_model": "/m/base.gguf"}, {"memory_adapter": "a.gguf"}, {}
    assert [report.loop2_kind({**without_specialist(trained), **k}, "crafter") for k in kinds] == [
        "two-model, no adapter, grammar on", "trained specialist, grammar on", "base, grammar on"]
    (tmp_path / "adapters").rename(d / "adapters")  # the RUNS tree copied off the GPU box: the recorded path is gone
    report.main(["loop2", str(base), str(trained), "--out", str(out)])
    assert "- trained: run d3b7f249d596," in (out / "loop2.md").read_text()
    svg = (out / "loop2.svg").read_text()
    for text in ("LOG writes / SEARCH", "fallbacks", "base, grammar on", "trained specialist, grammar on",
                 "paper: base -&gt; trained"):
        assert text in svg, text
    results = json.loads((base / "results.json").read_text())  # one an older eval.py wrote: a one-line error
    for e in results["envs"]["crafter"]["per_episode"]:
        del e["behaviour"]
    (base / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit) as e:
        report.main(["loop2", str(base), str(trained)])
    assert e.value.code == 2 and "run its eval.py command again" in capsys.readouterr().err
    assert metrics.mean_se([]) is None and metrics.mean_se([0.5, 1.0]) == \
        {"mean": 0.75, "se": pytest.approx(0.25 / 2 ** 0.5), "n": 2}


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
    ablation = make_run(tmp_path / "runs", "c-v1-memory-only", "memory", {"crafter": {"default": [0.9]}}, version="v1",
                        started="5", context="memory-only")
    with_ablation = report.load_runs([*runs, ablation])
    points, _ = report.progression_figure(with_ablation, out, paper=True)
    assert points["crafter"][model]["v1"] == (50.0, 0.0)  # the ablation is a line of its own, not v1's point
    assert points["crafter"][model + " (memory-only context)"] == {"v1": (90.0, 0.0)}
    first, best = report.first_and_best(with_ablation, "crafter")
    assert best["results"]["run"] == "c-v1"  # the best of the loops, not the ablation
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
