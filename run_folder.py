"""
run_folder.py: the folder of one eval.py run, runs/<run-name>/, and the rules that make a run resumable:
config.json (all that reproduces the run, written whole), traces/<env>/<task>__NN.jsonl (a finished
episode; .part while it plays), memory/<env>/<task>__NN/ (its memory folder), .lock (one eval.py per
folder, held shared by its worker processes). Re-running a run on its folder keeps the finished traces,
sets damaged ones aside (their episodes run again) and removes the half-done ones; nothing is written
or deleted through a symbolic link planted in it.

Usage (eval.py is the main caller):
    run_dir, lock = run_folder.prepare_run_dir(config, "runs")    # created or resumed, locked
    path = run_folder.trace_path(run_dir, job)                      # where an episode's trace goes
"""
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import trace_format

PACKAGES = ("balrog-nle", "gym", "minihack", "crafter", "llama_cpp_python", "transformers", "peft",
            "torch", "openai", "numpy")


def trace_path(run_dir, job):
    return Path(run_dir) / "traces" / job["env"] / f"{job['task']}__{job['episode']:02d}.jsonl"


def confined(run_dir, path):
    """path, checked to have no symbolic link at any level below run_dir: nothing is deleted or written through one."""
    for level in [path, *Path(path).parents]:
        if level == Path(run_dir):
            return path
        if level.is_symlink():
            raise ValueError(f"{level} is a symbolic link (to {os.readlink(level)}): eval.py writes only inside "
                             f"the run folder; remove the link")
    raise ValueError(f"{path} is outside the run folder {run_dir}")


def package_versions():
    """Python's, the kit's (its git commit, "+changes" when files differ from it; None outside a git checkout) and the
    packages' versions: what a run's replies depend on besides its config (e.g. how llm.py samples)."""
    out = {"python": platform.python_version(), "kit": kit_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def kit_version():
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        changes = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode:
        return None
    return commit.stdout.strip() + ("+changes" if changes.stdout.strip() else "")


def prepare_run_dir(config, runs_dir):
    """Create and lock runs/<name>/, or lock it and check that it holds the same run (then resume); return
    (run folder, lock). Nothing in the folder is read or changed before the lock is held."""
    runs_dir = Path(runs_dir).resolve()
    run_dir = (runs_dir / config["run_name"]).resolve()
    if runs_dir not in run_dir.parents:
        raise ValueError(f"--run-name {config['run_name']!r} leads outside --runs-dir {runs_dir}: pass a folder name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(run_dir)
        try:
            check_run_dir(config, run_dir)
        except BaseException:
            os.close(lock)
            raise
    except OSError as e:  # a path in the way (a file where a folder goes), no permission, a full disk
        raise ValueError(f"cannot use {e.filename or run_dir}: {e.strerror}; pass another --run-name or "
                         f"--runs-dir, or move that path away") from None
    return run_dir, lock


def lock_run_dir(run_dir):
    """Take runs/<name>/.lock: one eval.py per run folder. Taken exclusive (no other run holds it), then held
    shared with this run's worker processes (join_lock) until the last of them exits; returns its descriptor."""
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {platform.node()} since {time.strftime('%Y-%m-%d %H:%M:%S')} "
                     f"({' '.join(sys.argv)})".encode())
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = " ".join(os.pread(fd, 4096, 0).decode(errors="replace").split()) or "another eval.py"
        os.close(fd)
        raise ValueError(f"{run_dir} is in use by {holder}: wait for it to end, or pass another --run-name") from None
    return fd


def join_lock(path):
    """Process worker: share the run's lock, so that it stays taken while this worker runs, even if its parent dies;
    returns the descriptor (keep it open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return fd


def check_run_dir(config, run_dir):
    """Under the lock: the same run or a new one, with no symbolic link in it; set damaged finished traces aside
    (their episodes run again), remove the half-done ones of a killed run (they restart), write config.json."""
    for folder, dirs, files in os.walk(run_dir):  # a planted link would be written (or deleted) through
        for name in dirs + files:
            confined(run_dir, Path(folder) / name)
    config_path = run_dir / "config.json"
    if config_path.exists():
        try:
            old = json.loads(config_path.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict):
            raise ValueError(f"{config_path} is not an eval.py config (a JSON object); pass another --run-name "
                             f"or move that folder away")
        same = {k: old.get(k) for k in config if k not in ("workers", "command", "packages", "started")}
        if same != {k: v for k, v in config.items() if k in same}:
            raise ValueError(f"{run_dir} holds a different run (its config.json differs); "
                             f"pass another --run-name or delete that folder")
    for job in config["jobs"]:
        path = trace_path(run_dir, job)
        if path.exists() and not path.is_file():
            raise ValueError(f"{path} is in the way of a trace (not a file); move it away")
        damage = path.is_file() and trace_format.damage(path, job)
        if damage:
            aside = path.with_name(path.name + ".damaged")
            path.replace(aside)
            print(f"warning: {path} is damaged ({damage}): kept as {aside.name}; the episode runs again", file=sys.stderr)
    for stale in run_dir.glob("traces/*/*.part"):  # episodes a killed run left half-done restart from scratch
        stale.unlink()
    for env in {j["env"] for j in config["jobs"]}:
        for folder in (run_dir / "traces" / env, run_dir / "memory" / env):
            folder.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "config.json.tmp"  # written whole or not at all: a killed run never leaves half a config
    tmp.write_text(json.dumps({**config, "command": sys.argv, "packages": package_versions(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    tmp.replace(config_path)
