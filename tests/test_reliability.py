"""Crash safety: an eval.py run killed with SIGKILL mid-episode resumes to the same results as an
uninterrupted run, and no trace is left unreadable."""
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import eval as evaluation
import jail
import llm
import run_folder
import trace_format

ROOT = Path(__file__).resolve().parent.parent
# A deterministic scripted agent: its reply depends only on the prompt, so a restarted episode
# replays exactly. It writes memory every step, so traces hold LOG ops to recover. With PAUSE_AT set to a
# .part trace, it stops once that episode has written 5 steps, creates the file PAUSED and waits to be killed:
# the kill lands mid-episode however slow the machine is.
DRIVER = """
import os, sys, time, zlib, eval as evaluation, llm
MOVES = ["Move West", "Move East", "Move North", "Move South", "Do"]
PAUSE_AT, PAUSED = os.environ.get("PAUSE_AT"), os.environ.get("PAUSED")
def reply(messages):
    if PAUSE_AT and os.path.exists(PAUSE_AT) and open(PAUSE_AT).read().count("\\n") > 5:
        open(PAUSED, "w").close()
        time.sleep(3600)
    text = messages[-1]["content"]
    h = zlib.crc32(text.encode())
    if "<|DONE|>" in text:  # LOG's prompts offer <|DONE|>, PLAN's do not
        return f"<|APPEND|>actions_log.txt|seen {h % 97}<|END|><|DONE|>"
    return f"<|SEARCH|>actions_log.txt|seen<|END|><|ACTION|>{MOVES[h % 5]}<|END|>"
evaluation.WORKER["llm"] = llm.load("scripted", replies=reply)
evaluation.main(sys.argv[1:])
"""


def driver(runs_dir, name):
    return [sys.executable, "-c", DRIVER, "--env", "crafter", "--episodes", "3", "--max-steps", "40",
            "--runs-dir", str(runs_dir), "--run-name", name]


def comparable(run_dir):
    results = json.loads((run_dir / "results.json").read_text())["envs"]["crafter"]
    results["behaviour"] = {k: v for k, v in results["behaviour"].items() if "seconds" not in k}
    return results


def test_sigkill_mid_episode_then_resume(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(driver(tmp_path / "a", "r"), check=True, cwd=ROOT, env=env, capture_output=True)
    traces = tmp_path / "b" / "r" / "traces" / "crafter"
    paused = tmp_path / "paused"  # episode 0 is done and episode 1 has written 5 steps
    proc = subprocess.Popen(driver(tmp_path / "b", "r"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**env, "PAUSE_AT": str(traces / "default__01.part"), "PAUSED": str(paused)})
    try:
        while not paused.exists():
            assert proc.poll() is None, "the run ended before episode 1 reached step 5"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (traces / "default__00.jsonl").is_file() and not (traces / "default__02.jsonl").exists()
    done_before = (traces / "default__00.jsonl").read_bytes()
    subprocess.run(driver(tmp_path / "b", "r"), check=True, cwd=ROOT, env=env, capture_output=True)
    assert (traces / "default__00.jsonl").read_bytes() == done_before  # the finished episode was not redone
    assert not list(traces.glob("*.part"))
    for trace in traces.glob("*.jsonl"):  # every line is whole JSON
        assert all(json.loads(line) for line in trace.read_text().splitlines())
    assert comparable(tmp_path / "b" / "r") == comparable(tmp_path / "a" / "r")


def test_half_written_last_line_is_ignored(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "episode", "env": "crafter"}\n{"type": "step", "step": 0, "observation": "x"}\n{"type": "st')
    header, steps, end = trace_format.read_trace(path)
    assert header["env"] == "crafter" and len(steps) == 1 and end is None


# ----------------------------------------------------------------------------- one run per folder, damaged files, links, hooks

def agent_reply(messages):
    if "<|DONE|>" in messages[-1]["content"]:  # LOG's prompts offer <|DONE|>, PLAN's do not
        return "<|APPEND|>actions_log.txt|moved<|END|><|DONE|>"
    return "<|SEARCH|>actions_log.txt|moved<|END|><|ACTION|>Move West<|END|>"


def scripted_run(runs_dir, *extra, episodes=2):
    evaluation.WORKER.clear()
    evaluation.WORKER["llm"] = llm.load("scripted", replies=agent_reply)
    evaluation.main(["--env", "crafter", "--max-steps", "3", "--episodes", str(episodes), "--runs-dir", str(runs_dir),
                     "--run-name", "r", "--no-replay", *extra])
    return Path(runs_dir) / "r"


def test_second_run_on_a_locked_folder_says_who_holds_it(tmp_path, capsys):
    run_dir = scripted_run(tmp_path)
    lock = run_folder.lock_run_dir(run_dir)  # as a first eval.py holds it, mid-run
    part = run_dir / "traces" / "crafter" / "default__01.part"
    part.write_text("its episode in progress")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        scripted_run(tmp_path)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {run_dir} is in use by pid {os.getpid()} on {platform.node()} since ")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    os.close(lock)
    scripted_run(tmp_path)  # free again: the run resumes, the stale .part goes
    assert not part.exists()


def test_lock_lasts_while_a_worker_process_lives(tmp_path):
    """The run's process workers share the lock: a parent killed mid-run leaves it taken until they exit."""
    lock = run_folder.lock_run_dir(tmp_path)
    worker = subprocess.Popen([sys.executable, "-c", "import sys, run_folder; run_folder.join_lock(sys.argv[1]); print('in', flush=True); "
                               "sys.stdin.read()", str(tmp_path / ".lock")], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline() == "in\n"
    os.close(lock)  # the parent is gone
    with pytest.raises(ValueError, match="is in use by pid"):
        run_folder.lock_run_dir(tmp_path)
    worker.stdin.close()
    worker.wait()
    os.close(run_folder.lock_run_dir(tmp_path))  # the last worker exited: free


DAMAGE = {  # how a finished trace gets damaged: a cut, junk appended, the end record lost, the header garbled
    "default__00.jsonl": lambda b: b[:len(b) // 2],
    "default__01.jsonl": lambda b: b + b"\x00\xff junk",
    "default__02.jsonl": lambda b: b[:b.rstrip(b"\n").rfind(b"\n") + 1],
    "default__03.jsonl": lambda b: b"{not json" + b[b.find(b"\n"):],
}


def test_damaged_finished_traces_are_set_aside_and_rerun(tmp_path, capsys):
    traces = scripted_run(tmp_path, episodes=4) / "traces" / "crafter"
    whole = {name: (traces / name).read_bytes() for name in DAMAGE}
    for name, damage in DAMAGE.items():
        (traces / name).write_bytes(damage(whole[name]))
    damaged = {name: (traces / name).read_bytes() for name in DAMAGE}
    capsys.readouterr()
    scripted_run(tmp_path, episodes=4)  # was: TypeError: 'NoneType' object is not subscriptable, no file named
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4 and all(any(name in w for w in warnings) for name in DAMAGE)
    for name in DAMAGE:
        assert (traces / f"{name}.damaged").read_bytes() == damaged[name]  # kept aside, not deleted
        assert trace_format.damage(traces / name, json.loads(whole[name].split(b"\n")[0])) is None
    results = json.loads((tmp_path / "r" / "results.json").read_text())["envs"]["crafter"]
    assert results["episodes"] == 4


@pytest.mark.parametrize("level", ["memory", "memory/crafter", "memory/crafter/default__01", "traces/crafter",
                                   "results.json"])
def test_planted_link_is_not_followed(tmp_path, capsys, level):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    run_dir = tmp_path / "runs" / "r"
    (run_dir / level).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / level).symlink_to(outside)
    with pytest.raises(SystemExit) as e:  # was: Agent.reset deleted and wrote through memory/<env>
        scripted_run(tmp_path / "runs")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: {run_dir / level} is a symbolic link" in err
    assert [p.name for p in outside.iterdir()] == ["keep.txt"] and (outside / "keep.txt").read_text() == "mine"


def test_link_planted_during_the_run_is_not_followed(tmp_path, capsys, monkeypatch):
    """The check where the memory folder is prepared, right before Agent.reset deletes it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    prepare = run_folder.check_run_dir

    def plant_after_the_check(config, run_dir):
        prepare(config, run_dir)
        (run_dir / "memory" / "crafter" / "default__01").symlink_to(outside)
    monkeypatch.setattr(run_folder, "check_run_dir", plant_after_the_check)
    with pytest.raises(SystemExit) as e:
        scripted_run(tmp_path / "runs")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "memory/crafter/default__01 is a symbolic link" in err.splitlines()[-1]
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]
    assert json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["envs"]["crafter"]["episodes"] == 1


def failing_scaffold(tmp_path, failure, step):
    """scaffolds/crafter/v0 plus an observe hook that fails at `step` of the second episode."""
    scaffold = tmp_path / "scaffold"
    shutil.copytree(ROOT / "scaffolds" / "crafter" / "v0", scaffold)
    with open(scaffold / "hooks.py", "a") as f:
        f.write(f"\n\nimport sys\n\n\ndef observe(ctx):\n"
                f"    if ctx.memory.root.name == 'default__01' and ctx.step == {step}:\n        {failure}\n")
    return scaffold


@pytest.mark.parametrize("failure", ["sys.exit(0)", "raise KeyError('boom')"])
def test_failing_hook_names_itself_and_keeps_finished_episodes(tmp_path, failure):
    scaffold = failing_scaffold(tmp_path, failure, step=1)
    with pytest.raises(jail.HookError) as e:  # raised, not exited: meta_loop rejects such a candidate
        scripted_run(tmp_path / "runs", "--scaffold", str(scaffold))
    message = str(e.value)
    assert message.startswith("hook observe (hooks.py line ") and os.path.relpath(scaffold, ROOT) in message
    assert ("SystemExit: 0" if "exit" in failure else "KeyError: 'boom'") in message and "\n" not in message
    run_dir = tmp_path / "runs" / "r"
    assert (run_dir / "traces" / "crafter" / "default__00.jsonl").is_file()
    part = run_dir / "traces" / "crafter" / "default__01.part"  # the steps before the failure, for debugging
    assert str(part) in message and [json.loads(l)["type"] for l in part.read_text().splitlines()] == ["episode", "step"]
    assert json.loads((run_dir / "results.json").read_text())["envs"]["crafter"]["episodes"] == 1


def test_hook_calling_sys_exit_fails_the_command(tmp_path):
    """On the command line: exit status 2, one line; was exit status 0 and no results."""
    replies = scripted_run(tmp_path / "record", episodes=1) / "traces" / "crafter" / "default__00.jsonl"
    scaffold = failing_scaffold(tmp_path, "sys.exit(0)", step=0)
    proc = subprocess.run([sys.executable, "eval.py", "--env", "crafter", "--scaffold", str(scaffold),
                           "--backend", "scripted", "--model", str(replies), "--max-steps", "3", "--episodes", "2",
                           "--runs-dir", str(tmp_path / "runs"), "--run-name", "r", "--no-replay"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: hook observe (hooks.py line ")
    results = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["envs"]["crafter"]
    assert results["episodes"] == 1 and results["expected_episodes"] == 2


def test_hooks_calling_sys_exit_on_import_fail_the_command(tmp_path):
    scaffold = tmp_path / "scaffold"  # was: exit status 0, nothing run, nothing said
    shutil.copytree(ROOT / "scaffolds" / "crafter" / "v0", scaffold)
    with open(scaffold / "hooks.py", "a") as f:
        f.write("\nimport sys\nsys.exit(0)\n")
    proc = subprocess.run([sys.executable, "eval.py", "--scaffold", str(scaffold), "--runs-dir", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == f"error: {scaffold / 'hooks.py'}: import failed: SystemExit: 0\n"
    assert not (tmp_path / "runs").exists()
