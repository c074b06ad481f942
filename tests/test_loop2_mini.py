"""bench/loop2_mini.sh's stages, with a stand-in python3 that records the GPUs it sees and its command line:
training gives each env's SFT one GPU of its own; the evaluation's base, two-model control and trained-specialist
runs differ only by the specialist (same seeds, steps, grammar, scaffold), so the README's base -> trained rows
compare like with like."""
import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage_commands(tmp_path, stage, **env):
    """[(CUDA_VISIBLE_DEVICES as the command saw it, argv)] of every python3 command the stage started."""
    fake = tmp_path / "bin"
    fake.mkdir(parents=True)
    (fake / "python3").write_text(f'#!/bin/sh\necho "${{CUDA_VISIBLE_DEVICES-unset}} $@" >> {tmp_path / "calls"}\n')
    (fake / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")  # a box with 2 GPUs
    for tool in ("python3", "nvidia-smi"):
        (fake / tool).chmod(0o755)
    outer = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    subprocess.run(["bash", str(ROOT / "bench" / "loop2_mini.sh"), stage, str(tmp_path / "R")], check=True,
                   env={**outer, "PATH": f"{fake}:{os.environ['PATH']}", "MODEL": "m", "MPS": "0", **env})
    return [(line.split(" ", 1)[0], shlex.split(line.split(" ", 1)[1])) for line in (tmp_path / "calls").read_text().splitlines()]


def eval_commands(tmp_path, **env):
    commands = {}
    for _, argv in stage_commands(tmp_path, "eval", GPU_LAYERS="0", **env):
        name = argv[argv.index("--run-name") + 1]
        del argv[argv.index("--run-name"):argv.index("--run-name") + 2]
        commands[name] = argv
    return commands


def sft_jobs(calls):
    return sorted((gpus, argv[argv.index("--env") + 1], argv[argv.index("--micro-batch") + 1]) for gpus, argv in calls
                  if argv[:2] == ["train_lora.py", "sft"])


def test_each_sft_job_gets_one_gpu_of_its_own(tmp_path):
    calls = stage_commands(tmp_path / "all", "train", ENVS="crafter minihack")  # every GPU nvidia-smi lists
    assert sft_jobs(calls) == [("0", "crafter", "8"), ("1", "minihack", "8")] and len(calls) == 4  # + 2 data commands
    calls = stage_commands(tmp_path / "pinned", "train", ENVS="crafter minihack", CUDA_VISIBLE_DEVICES="3,5")
    assert sft_jobs(calls) == [("3", "crafter", "8"), ("5", "minihack", "8")]


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
