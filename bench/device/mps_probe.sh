#!/usr/bin/env bash
# bench/device/mps_probe.py with 1 and 32 processes spread over the GPUs, without and then with CUDA's MPS daemon.
cd "$(dirname "$0")/../.."
GPUS=$(nvidia-smi -L | grep -c '^GPU')
probe() {
  local procs=$1 tag=$2 i
  for i in $(seq 1 "$procs"); do CUDA_VISIBLE_DEVICES=$((i % GPUS)) python3 bench/device/mps_probe.py 15 > "/tmp/mps.$tag.$i" & done
  wait
  echo "$tag, $procs processes: $(cat /tmp/mps."$tag".* | awk '{s += $1} END {printf "%.0f tok/s each, %.0f in all", s / NR, s}')"
  rm -f /tmp/mps."$tag".*
}
probe 1 without-mps; probe 32 without-mps
nvidia-cuda-mps-control -d
probe 1 with-mps; probe 32 with-mps
echo quit | nvidia-cuda-mps-control
