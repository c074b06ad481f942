"""bench/loop2_mini.sh's evaluation stage: the base, two-model control and trained-specialist runs it starts differ
only by the specialist (same seeds, steps, grammar, scaffold), so the README's base -> trained rows compare like
with like. eval.py
is replaced by a stand-in python3 that records its command line."""
import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def eval_commands(tmp_path, **env):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    (fake / "python3").chmod(0o755)
    subprocess.run(["bash", str(ROOT / "bench" / "loop2_mini.sh"), "eval", str(tmp_path / "R")], check=True,
                   env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "MODEL": "m", "GPU_LAYERS": "0", **env})
    commands = {}
    for line in (tmp_path / "calls").read_text().splitlines():
        argv = shlex.split(line)
        name = argv[argv.index("--run-name") + 1]
        del argv[argv.index("--run-name"):argv.index("--run-name") + 2]
        commands[name] = argv
    return commands


def test_base_and_trained_runs_differ_only_by_the_adapter(tmp_path):
    runs = eval_commands(tmp_path, ENVS="minihack", MAZE_STEPS="20", NOGRAMMAR_STEPS="10")
    assert sorted(runs) == ["base-minihack-v4-2model-s20", "base-minihack-v4-s20", "eval-minihack-v4-2model-nogrammar-s10",
                            "eval-minihack-v4-2model-s20"]
    adapter = ["--memory-adapter", str(tmp_path / "R" / "adapters" / "minihack" / "adapter.gguf")]
    assert runs["eval-minihack-v4-2model-s20"] == runs["base-minihack-v4-s20"] + adapter
    assert runs["base-minihack-v4-2model-s20"] == runs["base-minihack-v4-s20"] + ["--memory-model", "m"]  # the control
    assert runs["eval-minihack-v4-2model-nogrammar-s10"] == runs["eval-minihack-v4-2model-s20"] + [
        "--max-steps", "10", "--grammar", "off"]  # argparse keeps the last --max-steps and --grammar
    base = runs["base-minihack-v4-s20"]
    assert base[base.index("--max-steps") + 1] == "20" and "--seeds" not in base  # seeds.txt: the evaluation seeds
    assert base[base.index("--grammar") + 1] == "on" and base[base.index("--scaffold") + 1] == "scaffolds/minihack/v4"
