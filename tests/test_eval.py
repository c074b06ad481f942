"""eval.py end to end on the real envs with the scripted backend: files written, results, resume,
clear errors for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import envs
import eval as evaluation
import llm
import run_folder
import trace_format

VALID = {"crafter": "Move West", "minihack": "north", "nethack": "search"}


def scripted(env, calls):
    def reply(messages):
        calls.append(messages[-1]["content"])
        if "<|DONE|>" not in messages[-1]["content"]:  # LOG's prompts offer <|DONE|>, PLAN's do not
            return f"<|SEARCH|>strategy.txt|x<|END|> <|ACTION|>{VALID[env]}<|END|>"
        return "<|APPEND|>actions_log.txt|moved<|END|> <|DONE|>"
    return llm.load("scripted", replies=reply)


def run(tmp_path, env, calls, *extra):
    evaluation.WORKER.clear()
    evaluation.WORKER["llm"] = scripted(env, calls)  # the real scripted backend stands in for the model
    evaluation.main(["--env", env, "--max-steps", "3", "--episodes", "2", "--runs-dir", str(tmp_path),
                     "--run-name", "r", *extra])
    return tmp_path / "r"


@pytest.mark.parametrize("env,task", [("crafter", None), ("minihack", "MiniHack-MazeWalk-9x9-v0"),
                                      ("nethack", None)])
def test_eval_end_to_end(tmp_path, env, task):
    calls = []
    run_dir = run(tmp_path, env, calls, *(["--task", task] if task else []))
    traces = sorted((run_dir / "traces" / env).glob("*.jsonl"))
    assert len(traces) == 2
    config = json.loads((run_dir / "config.json").read_text())
    assert [j["seed"] for j in config["jobs"]] == [42, 43] and config["scaffolds"][env]["hash"]
    results = json.loads((run_dir / "results.json").read_text())[ "envs"][env]
    assert results["episodes"] == 2 and results["steps"] == 6
    assert results["behaviour"]["invalid_action_rate"] == 0.0
    assert results["behaviour"]["empty_search_rate"] == 1.0  # every search hit an empty strategy.txt
    assert results["behaviour"]["log_writes_per_search"] is None  # LOG wrote, never searched: undefined
    assert "progression %" in (run_dir / "results.md").read_text()


def test_resume_skips_finished_and_restarts_interrupted(tmp_path):
    calls = []
    run_dir = run(tmp_path, "crafter", calls)
    first = len(calls)
    run(tmp_path, "crafter", calls)
    assert len(calls) == first  # nothing redone
    trace = run_dir / "traces" / "crafter" / "default__01.jsonl"
    trace.rename(trace.with_suffix(".part"))  # as a killed run leaves it
    run(tmp_path, "crafter", calls)
    assert len(calls) == first + first // 2 and trace.is_file() and not trace.with_suffix(".part").exists()


def test_episode_i_plays_the_ith_seed_of_the_seeds_file(tmp_path):
    """Seeds 50 42 (not consecutive, not increasing): episode i's trace says seed i and starts in seed i's world."""
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("crafter: 50 42 7\n")
    run_dir = run(tmp_path, "crafter", [], "--seeds", str(seeds))
    config = json.loads((run_dir / "config.json").read_text())
    assert [j["seed"] for j in config["jobs"]] == [50, 42] and config["seeds_file"] == str(seeds)
    for i, seed in enumerate([50, 42]):
        header, steps, _ = trace_format.read_trace(run_dir / "traces" / "crafter" / f"default__{i:02d}.jsonl")
        assert (header["episode"], header["seed"]) == (i, seed)
        assert steps[0]["observation"] == envs.make("crafter").reset(seed).text


def test_sampling_seed_of_an_episode():
    """Fixed by the run's --seed and the episode (a 32-bit value: every reported number of a run hangs on it)."""
    job = {"env": "crafter", "task": "default", "episode": 0, "seed": 42}
    assert evaluation.hash_seed(0, job) == 2606069683
    assert evaluation.hash_seed(1, job) == 812650026 and evaluation.hash_seed(0, {**job, "seed": 43}) == 2114976052


@pytest.mark.parametrize("lines,damage", [
    (['{"type": "episode", "env": "crafter", "task": "default", "seed": 42}', '{"type": "end", "progression": 0.5}'],
     None),
    (['{"type": "episode", "env": "crafter", "task": "default", "seed": 42}', '{"type": "st'], "line 2 is not JSON"),
    ([], "empty, or a line is not a record"),
    (['{"type": "episode", "env": "crafter", "task": "default", "seed": 42}', "[1]"], "empty, or a line is not a record"),
    (['{"type": "episode", "env": "crafter", "task": "default", "seed": 43}', '{"type": "end", "progression": 0.5}'],
     "no header of this episode"),
    (['{"type": "step"}', '{"type": "end", "progression": 0.5}'], "no header of this episode"),
    (['{"type": "episode", "env": "crafter", "task": "default", "seed": 42}', '{"type": "end"}'], "no end record"),
    (['{"type": "episode", "env": "crafter", "task": "default", "seed": 42}', '{"type": "step"}'], "no end record"),
], ids=["whole", "cut", "empty", "not a record", "another seed", "no header", "no progression", "no end"])
def test_trace_damage(tmp_path, lines, damage):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    assert trace_format.damage(path, {"env": "crafter", "task": "default", "episode": 0, "seed": 42}) == damage


def test_seed_values_and_episode_counts(tmp_path):
    """Seeds span 0 .. 2**32 - 1; --episodes may take every seed and no more; --quick plays the first; --env all
    lists the jobs of every env."""
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(f"crafter: 0 {2**32 - 1}\n")
    assert evaluation.read_seeds(seeds) == {"crafter": [0, 2**32 - 1]}
    for line in (f"crafter: {2**32}", "crafter: -1", "crafter: 1: 2"):
        seeds.write_text(line + "\n")
        with pytest.raises(ValueError, match="line 1"):
            evaluation.read_seeds(seeds)
    config = lambda *argv: evaluation.make_config(evaluation.parse_args(list(argv)))  # noqa: E731
    assert [j["seed"] for j in config("--episodes", "10")["jobs"]] == list(range(42, 52))  # all 10 of seeds.txt
    assert config("--quick")["jobs"] == [{"env": "crafter", "task": "default", "episode": 0, "seed": 42}]
    jobs = config("--env", "all", "--episodes", "1")["jobs"]
    assert [j["env"] for j in jobs] == ["crafter"] + ["minihack"] * len(envs.tasks("minihack")) + ["nethack"]


def test_a_resumed_run_folder_restarts_half_done_episodes(tmp_path):
    """What eval.py does to a run folder before running: the .part traces of a killed run go, and each env's
    traces/ and memory/ folders exist."""
    config = evaluation.make_config(evaluation.parse_args(["--max-steps", "3"]))
    run_folder.check_run_dir(config, tmp_path)
    assert (tmp_path / "traces" / "crafter").is_dir() and (tmp_path / "memory" / "crafter").is_dir()
    part = tmp_path / "traces" / "crafter" / "default__01.part"
    part.write_text('{"type": "episode"}\n')
    run_folder.check_run_dir(config, tmp_path)
    assert not part.exists()


def test_same_seeds_same_numbers(tmp_path):
    a = run(tmp_path / "a", "crafter", [])
    b = run(tmp_path / "b", "crafter", [])
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if "seconds" not in k}
                       for l in p.read_text().splitlines()[1:-1]]
    for t in ("default__00.jsonl", "default__01.jsonl"):
        steps_a, steps_b = strip(a / "traces" / "crafter" / t), strip(b / "traces" / "crafter" / t)
        assert [s["observation"] for s in steps_a] == [s["observation"] for s in steps_b]


@pytest.mark.parametrize("argv,message", [
    (["--env", "atari"], "unknown env 'atari'"),
    (["--env", "minihack", "--task", "MiniHack-Nope-v0"], "--task MiniHack-Nope-v0"),
    (["--env", "minihack", "--scaffold", "scaffolds/crafter/v0"], "pass --env crafter"),
    (["--scaffold", "no/such/dir"], "no scaffold at"),
    (["--backend", "openai"], "needs --model"),
    (["--grammar", "on", "--backend", "transformers"], "no grammar-constrained decoding"),
    (["--max-steps", "-1"], "--max-steps -1: must be at least 1"),  # was a finished 0-step episode
    (["--max-steps", "0"], "--max-steps 0: must be at least 1"),  # was no limit
    (["--episodes", "0"], "--episodes 0: must be at least 1"),  # was every seed
    (["--episodes", "-1"], "--episodes -1: must be at least 1"),  # was all seeds but the last
    (["--episodes", "11"], "has 10 seeds for crafter"),  # was 10
    (["--workers", "0"], "--workers 0: must be at least 1"),  # was a traceback
    (["--n-ctx", "16"], "--n-ctx 16: at least 512 tokens"),  # was a traceback after the run folder was made
    (["--run-name", "../../x"], "leads outside --runs-dir"),
    (["--run-name", "/tmp/automem-abs-run"], "leads outside --runs-dir"),
    (["--env", "minihack", "--task", "MiniHack-Boxoban-Hard-v0", "--boxoban-dir", "/no/levels"],
     "pass --boxoban-dir DIR to eval.py"),  # was a traceback in the episode, after the run folder was made
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        evaluation.main(argv + ["--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not Path("/tmp/automem-abs-run").exists()  # no run folder anywhere


@pytest.mark.parametrize("content,message", [
    ("crafter: 42 43\nminihack 42\n", "line 2: expected 'env: 42 43 ...'"),
    ("crafter:\n", "line 1: 'crafter:' needs one or more seeds"),  # was exit 0 with an empty table
    ("crafter: 42 -1\n", "line 1: 'crafter: 42 -1' needs one or more seeds from 0 to 4294967295"),  # was a traceback
    (None, "cannot read seeds file"),  # a folder: was a traceback
])
def test_malformed_seeds_file(tmp_path, capsys, content, message):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(content) if content else seeds.mkdir()
    with pytest.raises(SystemExit) as e:
        evaluation.main(["--seeds", str(seeds), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_load_4bit_without_bitsandbytes_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed (find_spec gives None)
    with pytest.raises(SystemExit) as e:
        evaluation.main(["--backend", "transformers", "--model", "m", "--load-4bit", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install bitsandbytes" in err and err.count("\n") == 1 and not any(tmp_path.iterdir())


@pytest.mark.parametrize("plant,message", [
    (lambda r: (r / "config.json").write_text("[1, 2]"), "config.json is not an eval.py config"),
    (lambda r: (r / "traces").write_text("x"), "Not a directory"),  # a file where a folder goes
    (lambda r: (r / "traces" / "crafter" / "default__00.jsonl").mkdir(parents=True), "in the way of a trace"),
])
def test_occupied_run_paths_are_one_line(tmp_path, capsys, plant, message):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    plant(run_dir)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "crafter", [])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.name != ".lock") == before


def test_unwritable_runs_dir_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:  # /sys refuses new folders, even to root
        evaluation.main(["--env", "crafter", "--runs-dir", "/sys/automem-runs", "--run-name", "r"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: cannot use /sys/automem-runs") and err.count("\n") == 1


def test_changed_config_does_not_clobber_a_run(tmp_path, capsys):
    run_dir = run(tmp_path, "crafter", [])
    before = (run_dir / "results.json").read_text()
    with pytest.raises(SystemExit):
        evaluation.main(["--env", "crafter", "--max-steps", "5", "--runs-dir", str(tmp_path), "--run-name", "r"])
    assert "holds a different run" in capsys.readouterr().err
    assert (run_dir / "results.json").read_text() == before


def test_config_records_the_kit_commit_and_local_changes(tmp_path):
    # a copy of the kit's run_folder.py in a git repo of its own: the commit, "+changes" once a file differs, None
    # outside a checkout (what replies depend on besides the config, e.g. how llm.py samples)
    kit = tmp_path / "kit"
    kit.mkdir()
    for name in ("run_folder.py", "trace_format.py"):
        (kit / name).write_text((Path(run_folder.__file__).parent / name).read_text())
    version = lambda: subprocess.run([sys.executable, "-c", "import run_folder; print(run_folder.package_versions()['kit'])"],
                                     cwd=kit, capture_output=True, text=True, check=True,
                                     env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)}).stdout.strip()
    assert version() == "None"
    git = lambda *args: subprocess.run(["git", "-C", kit, "-c", "user.name=t", "-c", "user.email=t@t", *args],
                                       capture_output=True, text=True, check=True).stdout.strip()
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "kit")
    assert version() == git("rev-parse", "HEAD")
    (kit / "trace_format.py").write_text((kit / "trace_format.py").read_text() + "# changed\n")
    assert version() == git("rev-parse", "HEAD") + "+changes"


def replies(run_dir):
    """Every model reply of a run, per trace file."""
    out = {}
    for path in sorted((run_dir / "traces").glob("*/*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        out[path.name] = [t["reply"] for s in lines if s["type"] == "step"
                          for routine in ("log", "plan") for t in (s.get(routine) or {}).get("turns", [])]
    return out


TINY = ["--env", "crafter", "--max-steps", "2", "--episodes", "2", "--log-turns", "1", "--plan-turns", "1",
        "--max-tokens", "12", "--n-ctx", "2048", "--no-replay"]


@pytest.mark.slow
def test_process_workers_give_the_sequential_run(tmp_path, capsys):
    """--workers 2 on the in-process llama.cpp backend: two spawned processes give the replies of one
    worker (llama.cpp is bit-identical for one thread count, so both pin it)."""
    evaluation.WORKER.clear()
    evaluation.main(TINY + ["--runs-dir", str(tmp_path), "--run-name", "one", "--threads", "1"])
    evaluation.main(TINY + ["--runs-dir", str(tmp_path), "--run-name", "two", "--threads", "1", "--workers", "2"])
    one, two = replies(tmp_path / "one"), replies(tmp_path / "two")
    assert len(one) == 2 and all(one.values()) and one == two
    assert capsys.readouterr().out.count("note: --grammar on, as the embedded 135M model") == 2  # its first impression


@pytest.mark.slow
def test_thread_workers_against_a_server(tmp_path):
    """--workers 2 with the openai backend: episodes share one client against a real llama.cpp server."""
    from test_llm import start_server, stop_server
    proc, url = start_server()
    try:
        evaluation.WORKER.clear()
        evaluation.main(TINY + ["--runs-dir", str(tmp_path), "--run-name", "r", "--workers", "2",
                                "--backend", "openai", "--base-url", url, "--model", "smollm2"])
    finally:
        stop_server(proc)
    results = json.loads((tmp_path / "r" / "results.json").read_text())["envs"]["crafter"]
    assert results["episodes"] == 2 and results["steps"] == 4 and all(replies(tmp_path / "r").values())


def test_worker_that_cannot_load_the_model_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluation.main(TINY + ["--runs-dir", str(tmp_path), "--workers", "2", "--model", str(tmp_path / "no.gguf")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: no GGUF file at") and err.count("\n") == 1


def test_greedy_temperature_reaches_the_backend():
    """--temperature 0 (greedy) is a value, not a missing option (0.0 == False in Python)."""
    spec = evaluation.make_config(evaluation.parse_args(["--temperature", "0", "--n-ctx", "512"]))["backend"]
    backend = evaluation.load_backend(spec)
    assert backend.temperature == 0.0 and backend.n_ctx == 512 and backend.n_gpu_layers == 0


def test_grammar_is_on_for_the_embedded_model_only(tmp_path):
    """The embedded model cannot write ops unaided: grammar on by default for it (recorded); any other model, or
    --grammar off, keeps the scaffold's setting (off in v0, the paper's)."""
    def config(*argv):
        return evaluation.make_config(evaluation.parse_args(["--env", "crafter", "--runs-dir", str(tmp_path), *argv]))
    auto = config()
    assert auto["grammar_auto"] and auto["scaffolds"]["crafter"]["grammar"] and "grammar" in auto["run_name"]
    off = config("--grammar", "off")
    assert not off["grammar_auto"] and not off["scaffolds"]["crafter"]["grammar"]
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")  # any file: make_config only checks that it is there
    assert not config("--model", str(other))["scaffolds"]["crafter"]["grammar"]
    assert not config("--backend", "openai", "--model", "m", "--base-url", "http://127.0.0.1:1/v1")["grammar_auto"]
    assert not config("--agent", "window")["grammar_auto"]
