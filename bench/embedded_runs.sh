# Sourced by bench/embedded_table.sh and bench/loop2_mini.sh: eval.py runs of the embedded model in the
# background, each episode in its own process with the in-process llamacpp backend (the kit's default path:
# same prompts, same context cut, same sampler), all layers on the GPU when there is one.
#   play NAME WORKERS [eval.py args...]   one eval.py run, WORKERS episodes at a time; EPISODES=n sets
#                                         --episodes (per task, default WORKERS)
#   finish                                wait for every run; non-zero if one failed
#   next_gpu                              the GPU for the next job of your own (JOBS+=($!) after starting it)
# Why processes and not a llama-server with parallel slots: a server samples its slots one after another
# on one core, and with the grammar on 9 slots ran at 55-70 ms per generated token on the H200. A process
# per episode samples on its own core.
# On a GPU box the runs take the GPUs in turn, and the processes share each GPU through CUDA's MPS
# daemon (started here, stopped by finish; MPS=0 leaves it off): without it, 39 processes on one H200
# took turns on it and played ~40 s a step each (1.1 s alone); bench/device/mps_probe.sh, 32 stand-in
# processes on 2 H200: 95 tokens/s each without MPS, 282 with it (294 alone).
MODEL=${MODEL:-$(python3 -c "import llm; print(llm.DEFAULT_MODEL)")}
GPU_LAYERS=${GPU_LAYERS:--1}
# The GPUs the jobs take in turn: those CUDA_VISIBLE_DEVICES names (pin a script to some), else every one
if [ "$GPU_LAYERS" = 0 ]; then GPU_IDS=(); elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -ra GPU_IDS <<< "$CUDA_VISIBLE_DEVICES"
else
  read -ra GPU_IDS <<< "$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr '\n' ' ')"
fi
GPUS=${#GPU_IDS[@]}
JOBS=()
if ((GPUS)) && [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
  nvidia-cuda-mps-control -d && MPS_STARTED=1
fi

next_gpu() {  # the GPU of the next background job: they take the GPUs in turn
  if ((GPUS)); then echo "${GPU_IDS[${#JOBS[@]} % GPUS]}"; fi
}

play() {
  local name=$1 workers=$2; shift 2
  CUDA_VISIBLE_DEVICES=$(next_gpu) \
  python3 eval.py --model "$MODEL" --gpu-layers "$GPU_LAYERS" --threads 1 --grammar on --workers "$workers" \
    --episodes "${EPISODES:-$workers}" --runs-dir "$RUNS" --run-name "$name" --no-replay "$@" > "$RUNS/$name.log" 2>&1 &
  JOBS+=($!)
}

finish() {
  local status=0 job
  for job in "${JOBS[@]}"; do wait "$job" || status=1; done
  JOBS=()
  if [ -n "${MPS_STARTED:-}" ]; then echo quit | nvidia-cuda-mps-control; MPS_STARTED=; fi
  return $status
}
