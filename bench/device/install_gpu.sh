#!/usr/bin/env bash
# Device proof of `bash install.sh --gpu` on a box with no network (the lent H200: Python 3.12, its image's CUDA torch
# and transformers 5.17): the wheelhouse comes in parts of at most 55 MB (one carry each) and gathers in
# /tmp/gpu_install (outside the repo copy, which each call replaces, so it stays while the machine is warm); then
# install.sh --gpu --wheels installs from it, and `check` loads the embedded SmolLM2 in 4 bits through bitsandbytes on
# CUDA and with every layer on the GPU through the CUDA build of llama.cpp.
# Results: $OUT/install_gpu.json, logs beside it.
#
# Usage, at the repo root on the device:
#   bash bench/device/install_gpu.sh stash PART     # one carried part (.gpu/gpu_install/pK) into the wheelhouse
#   bash bench/device/install_gpu.sh install [PART] # (the last part, then) install.sh --gpu --wheels, CUDA_ARCH=90
#   bash bench/device/install_gpu.sh check          # the checks, a quick eval.py run on the GPU, then
#                                                   # tests/test_install.py and tests/test_llm.py
# If install runs out of time while it compiles llama.cpp (pip compiles in a fresh folder each time, so a rerun starts
# over), `build` compiles the same sdist with install.sh's CUDA flags in a folder that stays: run it until it exits 0
# (each run goes on where the last stopped), then install finds that wheel and has nothing left to compile.
#
# The parts, made with PyPI at hand: `pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation
# cp --platform manylinux_2_28_x86_64 (and the older manylinux tags)` of the closure that install.sh --gpu resolves for
# Python 3.12, less the packages that image already holds in versions that fit (torch, transformers, tokenizers,
# huggingface-hub, pandas, scipy, matplotlib, pillow, ...); the wheels built here for the sdist-only pins (gym,
# minihack, balrog-nle); llama-cpp-python's sdist less vendor/llama.cpp/docs, benches and the test vocabularies but
# ggml-vocab-qwen2.gguf, and its build requirements (scikit-build-core, ninja, and the cmake wheel: pip builds the sdist
# in an isolated environment, which asks for cmake>=3.21 when it finds none on PATH, as on the H200; part p9).
# Files over 50 MB travel as NAME.split-NN pieces, joined before the install.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=${WHEELS:-/tmp/gpu_install}
OUT="${OUT:-/tmp/install_gpu_out}"
mkdir -p "$WHEELS" "$OUT"
export PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1  # the image's python3 is the system one

stash() {
  [ -d "${1:-}" ] || { echo "install_gpu.sh: no part folder '${1:-}': carry .gpu/gpu_install/pK and name it" >&2; exit 2; }
  cp "$1"/* "$WHEELS"/
  echo "$1: $(ls "$1" | wc -l) files; wheelhouse now $(du -sm "$WHEELS" | cut -f1) MB in $(ls "$WHEELS" | wc -l) files"
}

join_split_files() {
  for first in "$WHEELS"/*.split-00; do
    [ -e "$first" ] || continue
    cat "${first%.split-00}".split-* > "${first%.split-00}" && rm "${first%.split-00}".split-*
  done
}

case "${1:-}" in
  stash) stash "${2:-}" ;;
  build)
    join_split_files
    mkdir -p /tmp/llama_cpp_src
    [ -d /tmp/llama_cpp_src/llama_cpp_python-0.3.36 ] || tar xzf "$WHEELS"/llama_cpp_python-0.3.36.tar.gz -C /tmp/llama_cpp_src
    python3 -m pip install -q --no-index --find-links "$WHEELS" "scikit-build-core>=0.9.2"
    export PATH="$PATH:/usr/local/cuda/bin" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" SKBUILD_BUILD_DIR=/tmp/llama_cpp_build
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}"  # what install.sh --gpu sets
    timeout "${BUILD_SECONDS:-560}" python3 -m pip wheel -q --no-deps --no-index --no-build-isolation -w "$WHEELS" \
      /tmp/llama_cpp_src/llama_cpp_python-0.3.36 2>&1 | tail -20
    ;;
  install)
    if [ -n "${2:-}" ]; then stash "$2"; fi
    join_split_files
    export CUDA_ARCH="${CUDA_ARCH:-90}"
    mkdir -p /tmp/no_network  # install.sh's apt-get for bubblewrap would only wait on a network that is not there
    printf '#!/bin/sh\necho "apt-get: no network on this box" >&2; exit 1\n' > /tmp/no_network/apt-get
    chmod +x /tmp/no_network/apt-get
    export PATH="/tmp/no_network:$PATH"
    start=$SECONDS
    set +e
    timeout "${INSTALL_SECONDS:-560}" bash install.sh --gpu --wheels "$WHEELS" > "$OUT/install.log" 2>&1
    rc=$?
    set -e
    tail -25 "$OUT/install.log"
    python3 -c "import json, sys; json.dump({'install_rc': int(sys.argv[1]), 'install_seconds': int(sys.argv[2]),
                'timed_out': sys.argv[1] == '124'}, open(sys.argv[3] + '/install.json', 'w'), indent=1)" \
      "$rc" "$((SECONDS - start))" "$OUT"
    echo "install.sh --gpu --wheels: exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ': build, then install')"
    exit "$rc"
    ;;
  check)
    # eval.py puts the CUDA libllama ahead of numpy itself (llm.preload_cuda_llama); a quick run on the GPU shows it
    rc=0
    timeout 300 python3 eval.py --env crafter --quick --gpu-layers -1 --runs-dir /tmp/install_gpu_runs > "$OUT/quick.log" 2>&1 || rc=$?
    echo "eval.py --env crafter --quick --gpu-layers -1: exit $rc"; tail -4 "$OUT/quick.log"
    # here and in pytest, which load llama.cpp after numpy too, the preload is set by hand
    LD_PRELOAD="$(python3 -c 'import llm; print(llm.cuda_libllama() or "")' 2>/dev/null) ${LD_PRELOAD:-}"
    export LD_PRELOAD
    python3 - "$OUT/install_gpu.json" <<'EOF' 2>&1 | tee "$OUT/check.log"
import importlib.metadata as meta, json, sys, time, traceback
import torch
import llm
import llm_hf



def version(name):
    try:
        return meta.version(name)
    except meta.PackageNotFoundError:
        return None


result = {"versions": {n: version(n) for n in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes",
                                               "llama_cpp_python", "numpy", "datasets", "pyarrow", "ray")},
          "gpu": torch.cuda.get_device_name(0), "errors": {}}
MESSAGES = [{"role": "user", "content": "Name one color."}]


def gib_used():
    free, total = torch.cuda.mem_get_info()
    return round((total - free) / 2**30, 3)


def check(name, fn):
    t0 = time.time()
    try:
        result[name] = {**fn(), "seconds": round(time.time() - t0, 1)}
    except Exception as e:  # noqa: BLE001 -- every failure is a finding to report, not a reason to stop
        result["errors"][name] = traceback.format_exc(limit=4)
        print(f"{name}: {type(e).__name__}: {e}")


def bitsandbytes_4bit():
    import bitsandbytes as bnb
    tok, net = llm_hf.load_hf(llm.DEFAULT_MODEL, torch.float32)  # the embedded GGUF as a plain transformers folder
    net.save_pretrained("/tmp/smollm2-hf")
    tok.save_pretrained("/tmp/smollm2-hf")
    before = gib_used()
    t = llm.load("transformers", "/tmp/smollm2-hf", load_4bit=True, temperature=0)
    reply = t.chat(MESSAGES, max_tokens=12)
    return {"linear4bit_layers": sum(isinstance(m, bnb.nn.Linear4bit) for m in t.net.modules()),
            "device": str(next(t.net.parameters()).device), "gpu_gib_added": round(gib_used() - before, 3),
            "reply": reply.text}


def llama_cpp_cuda():
    import llama_cpp
    before = gib_used()
    m = llm.load("llamacpp", n_gpu_layers=-1, temperature=0)
    reply = m.chat(MESSAGES, max_tokens=12)
    return {"supports_gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "gpu_gib_added": round(gib_used() - before, 3), "reply": reply.text}


check("bitsandbytes_4bit", bitsandbytes_4bit)
check("llama_cpp_cuda", llama_cpp_cuda)
result["ok"] = (not result["errors"] and result["bitsandbytes_4bit"]["linear4bit_layers"] > 0
                and result["llama_cpp_cuda"]["supports_gpu_offload"] and result["llama_cpp_cuda"]["gpu_gib_added"] > 0)
json.dump(result, open(sys.argv[1], "w"), indent=1)
print(json.dumps(result, indent=1))
EOF
    timeout "${TEST_SECONDS:-300}" python3 -m pytest -q -p no:cacheprovider tests/test_install.py tests/test_llm.py \
      > "$OUT/tests.log" 2>&1 || true
    tail -15 "$OUT/tests.log"
    ;;
  *) echo "install_gpu.sh: say stash PART, install [PART], build or check" >&2; exit 2 ;;
esac
