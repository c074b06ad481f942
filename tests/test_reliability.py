"""Crash safety: an eval.py run killed with SIGKILL mid-episode resumes to the same results as an
uninterrupted run, and no trace is left unreadable."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import automem

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
    header, steps, end = automem.read_trace(path)
    assert header["env"] == "crafter" and len(steps) == 1 and end is None
