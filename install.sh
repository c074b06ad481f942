#!/usr/bin/env bash
# One-step set-up on a fresh machine: bash install.sh [--gpu] [--wheels DIR]
#   (none)        CPU (offline except PyPI): requirements.txt, llama-cpp-python built for a portable AVX2 CPU.
#   --gpu         a CUDA box: the same less the torch and numpy pins (the box's own CUDA torch and numpy stay), requirements-gpu.txt
#                 (bitsandbytes), and llama-cpp-python built with CUDA by the nvcc on PATH or in $CUDA_HOME/bin
#                 (default /usr/local/cuda).
#                 CUDA_ARCH=90 builds for that GPU architecture (default: native, the GPUs this box has);
#                 TORCH_INDEX=https://download.pytorch.org/whl/cu128 installs torch from that index first.
#   --wheels DIR  offline: every package from DIR (wheels, the llama-cpp-python sdist and its build requirements:
#                 scikit-build-core, ninja, cmake), none from an index.
set -euo pipefail
cd "$(dirname "$0")"
gpu=0
pip=(python3 -m pip install -q)
while (($#)); do
  case $1 in
    --gpu) gpu=1 ;;
    --wheels) [ -d "${2:-}" ] || { echo "install.sh: --wheels needs a folder of wheels, got '${2:-}'" >&2; exit 2; }
              pip+=(--no-index --find-links "$2"); shift ;;
    *) echo "install.sh: unknown option '$1': use --gpu and/or --wheels DIR" >&2; exit 2 ;;
  esac
  shift
done
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# llama-cpp-python compiles from source. A -march=native build segfaults in decode on CPUs that
# report AMX (seen on this project's machines), so build for a portable AVX2 baseline instead.
cpu_flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
if ((gpu)); then
  export PATH="$PATH:${CUDA_HOME:-/usr/local/cuda}/bin"  # where the CUDA toolkit puts nvcc
  command -v nvcc >/dev/null || { echo "install.sh --gpu: no nvcc: install the CUDA toolkit, or set CUDA_HOME to it" >&2; exit 2; }
  export CMAKE_ARGS="${CMAKE_ARGS:-$cpu_flags -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-native}}"
  if [ -n "${TORCH_INDEX:-}" ]; then "${pip[@]}" torch --index-url "$TORCH_INDEX"; fi
  "${pip[@]}" -r <(grep -v -e '^torch==' -e '^numpy==' requirements.txt) -r requirements-gpu.txt
  # A llama-cpp-python built earlier for the CPU (or pip's cached CPU wheel) is rebuilt with CUDA.
  python3 -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" 2>/dev/null ||
    "${pip[@]}" --force-reinstall --no-deps --no-cache-dir "$(grep -o '^llama-cpp-python[^ ]*' requirements.txt)"
else
  export CMAKE_ARGS="${CMAKE_ARGS:-$cpu_flags}"
  "${pip[@]}" -r requirements.txt
fi
"${pip[@]}" --no-deps -r requirements-nodeps.txt
# bubblewrap (Debian/Ubuntu package, needs root): the jail where meta_loop's candidate hooks run (jail.py)
command -v bwrap >/dev/null || apt-get install -y -qq bubblewrap || echo "install bubblewrap for jail.py: apt-get install bubblewrap" >&2
