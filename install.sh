#!/usr/bin/env bash
# One-step set-up on a fresh machine (CPU, offline except PyPI): bash install.sh
set -euo pipefail
cd "$(dirname "$0")"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# llama-cpp-python compiles from source. A -march=native build segfaults in decode on CPUs that
# report AMX (seen on this project's machines), so build for a portable AVX2 baseline instead.
# Set CMAKE_ARGS yourself for CUDA (-DGGML_CUDA=on) or other targets.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps -r requirements-nodeps.txt
# bubblewrap (Debian/Ubuntu package, needs root): the jail where meta_loop's candidate hooks run (jail.py)
command -v bwrap >/dev/null || apt-get install -y -qq bubblewrap || echo "install bubblewrap for jail.py: apt-get install bubblewrap" >&2
