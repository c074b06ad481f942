"""install.sh's options, with python3, nvcc and bwrap replaced by stubs that log what they were asked
(nothing is installed): --gpu drops the torch and numpy pins, adds requirements-gpu.txt and builds llama-cpp-python
with CUDA; --wheels DIR keeps every pip call off the index; bad input is one line and exit status 2."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# python3 stub: logs each call with CMAKE_ARGS and the text of the -r files it was given (the --gpu one is a
# pipe that is gone once the call returns); `python3 -c ...` (the GPU-offload check of llama_cpp) answers no.
PYTHON_STUB = """#!/bin/bash
[ "$1" = -c ] && exit 1
{ echo "CALL $*"; echo "CMAKE_ARGS=$CMAKE_ARGS"
  prev=; for a in "$@"; do [ "$prev" = -r ] && sed 's/^/REQ /' "$a"; prev=$a; done; } >> "$STUB_LOG"
"""


def install(tmp_path, *args, nvcc=True, env=None):
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name, text in [("python3", PYTHON_STUB), ("bwrap", "#!/bin/sh\n")] + [("nvcc", "#!/bin/sh\n")] * nvcc:
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    log = tmp_path / "log"
    log.touch()
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(log), **(env or {})}
    r = subprocess.run(["bash", str(ROOT / "install.sh"), *args], env=env, capture_output=True, text=True)
    return r, log.read_text()


def test_cpu_install_keeps_the_torch_pin_and_builds_for_the_cpu(tmp_path):
    r, log = install(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "REQ torch==" in log and "REQ numpy==1.26.4" in log and "requirements-gpu.txt" not in log
    assert "-DGGML_CUDA" not in log
    assert "-DGGML_NATIVE=OFF" in log and "--no-deps -r requirements-nodeps.txt" in log


def test_gpu_install_keeps_the_box_torch_adds_bitsandbytes_and_builds_llama_cpp_with_cuda(tmp_path):
    r, log = install(tmp_path, "--gpu", env={"CUDA_ARCH": "90"})
    assert r.returncode == 0, r.stderr
    assert "REQ torch==" not in log and "REQ transformers" in log and "REQ bitsandbytes" in log
    assert "REQ numpy==" not in log and "REQ numpy  # unpinned" in log  # the box's numpy 2 stays
    assert log.count("-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90") == 3  # every call, the CUDA build's included
    rebuild = [line for line in log.splitlines() if "--force-reinstall" in line]  # the stub says: no GPU offload yet
    assert rebuild == ["CALL -m pip install -q --force-reinstall --no-deps --no-cache-dir llama-cpp-python[server]==0.3.36"]


def test_wheels_keeps_every_pip_call_off_the_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    r, log = install(tmp_path, "--gpu", "--wheels", str(wheels))
    calls = [line for line in log.splitlines() if line.startswith("CALL")]
    assert r.returncode == 0 and len(calls) == 3
    assert all(f"--no-index --find-links {wheels}" in c for c in calls)


@pytest.mark.parametrize("args,nvcc,message", [
    (["--gpu"], False, "install.sh --gpu: no nvcc: install the CUDA toolkit, or set CUDA_HOME to it"),
    (["--wheels", "/no/such/folder"], True, "install.sh: --wheels needs a folder of wheels, got '/no/such/folder'"),
    (["--cuda"], True, "install.sh: unknown option '--cuda': use --gpu and/or --wheels DIR"),
])
def test_bad_input_is_one_line_and_installs_nothing(tmp_path, args, nvcc, message):
    r, log = install(tmp_path, *args, nvcc=nvcc, env={"CUDA_HOME": str(tmp_path / "no-cuda")})
    assert (r.returncode, r.stderr, log) == (2, message + "\n", "")
