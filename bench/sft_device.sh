#!/bin/bash
# bench/sft_device.sh: train_lora.py sft (TRL's SFTTrainer) on a GPU box, offline, on a random-weight Qwen2 with
# the Qwen2.5-0.5B shape (byte-level tokenizer, ChatML) and 64 LOG-like rows (bench/qlora_gpu.py builds both).
#   (a) one GPU, 30 steps: QLoRA when bitsandbytes imports, bf16 LoRA otherwise  -> $OUT/sft_1gpu.json
#   (b) two GPUs (when there are), 30 steps: bf16 LoRA under DeepSpeed ZeRO-3 through
#       accelerate launch --config_file configs/accelerate_zero3.yaml ... --zero3     -> $OUT/sft_2gpu_zero3.json
# Each JSON is the run's card.json (train_losses per step, loss_before/after on 16 rows, peak_gpu_gib of
# process 0, seconds) plus the GPU, the command and its wall time. Same effective batch (8) in both runs.
#
#   bash bench/sft_device.sh fetch .gpu/sft_wheels      # here, with network: the cp312 wheels the box lacks
#   bash bench/sft_device.sh run .gpu/sft_wheels [more wheel folders]   # on the box, from the repository root
#
# fetch: trl and its data stack, DeepSpeed built as a pure-Python wheel (DS_BUILD_OPS=0: no CUDA ops compiled;
# ZeRO-3 with torch's AdamW needs none), bitsandbytes with only the CUDA ${BNB_CUDA:-130} binary (the box's torch),
# the kit's imports the box may lack (crafter, gym, pydantic), and the test suites and Arrow Flight cut out of the
# pyarrow and pandas wheels: about 54 MB.
# run: installs only the distributions that are not installed yet (pip --no-index --no-deps).
set -uo pipefail
mode=${1:?usage: bash bench/sft_device.sh fetch DIR | run DIR [DIR...]}
shift

if [ "$mode" = fetch ]; then
  dir=${1:?fetch needs a folder}
  mkdir -p "$dir"
  pip download -q --no-deps --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" \
    trl==1.16.0 datasets==5.0.1 pyarrow==21.0.0 pandas==3.0.6 python-dateutil==2.9.0.post0 six dill==0.4.1 \
    multiprocess==0.70.19 xxhash hjson ninja py-cpuinfo msgpack einops nvidia-ml-py \
    pydantic==2.11.9 pydantic-core==2.33.2 annotated-types typing-inspection gym-notices opensimplex ruamel.yaml \
    bitsandbytes==0.50.2 || exit 1
  pip wheel -q --no-deps -w "$dir" crafter==1.8.3 gym==0.23.0 || exit 1  # sdists only
  pip download -q --no-deps --no-binary=:all: -d /tmp/ds_src deepspeed==0.19.8 || exit 1
  tar xzf /tmp/ds_src/deepspeed-0.19.8.tar.gz -C /tmp/ds_src
  DS_BUILD_OPS=0 pip wheel -q --no-deps --no-build-isolation -w "$dir" /tmp/ds_src/deepspeed-0.19.8 || exit 1
  python3 - "$dir"/pyarrow-*.whl "$dir"/pandas-*.whl "$dir"/bitsandbytes-*.whl <<'EOF'
import os, sys, zipfile
keep = ("libbitsandbytes_cpu.so", f"libbitsandbytes_cuda{os.environ.get('BNB_CUDA', '130')}.so")
def cut(name):  # unused here: test suites, Arrow Flight (pyarrow.flight is never imported), other CUDA/ROCm builds
    base = name.rsplit("/", 1)[-1]
    return "/tests/" in name or "flight" in name or (base.startswith("libbitsandbytes_") and base not in keep)
for whl in sys.argv[1:]:
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(whl + ".part", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if cut(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True) if not cut(line.decode().split(",")[0]))
            dst.writestr(info, data)
    os.replace(whl + ".part", whl)
EOF
  du -sh "$dir"
  exit 0
fi

[ "$mode" = run ] || { echo "usage: bash bench/sft_device.sh fetch DIR | run DIR [DIR...]"; exit 2; }
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
missing=$(python3 - "$@" <<'EOF'
import importlib.metadata as md, pathlib, sys
for folder in sys.argv[1:]:
    for whl in sorted(pathlib.Path(folder).glob("*.whl")):
        try:
            md.version(whl.name.split("-")[0])
        except md.PackageNotFoundError:
            print(whl)
EOF
)
[ -n "$missing" ] && { python3 -m pip install -q --break-system-packages --no-index --no-deps $missing || exit 1; }
python3 -c "import torch, transformers, trl, peft, accelerate, deepspeed; print('versions', *(m.__name__ + ' ' + m.__version__ for m in (torch, transformers, trl, peft, accelerate, deepspeed)), 'cuda', torch.version.cuda)" || exit 1

work=$(mktemp -d /tmp/sft_device.XXXX)
python3 - "$work" <<'EOF' || exit 1
import sys
from pathlib import Path
sys.path[:0] = [".", "bench"]
import qlora_gpu
import sft_data
QWEN25_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1e6, "tie_word_embeddings": True}
work = Path(sys.argv[1])
qlora_gpu.random_qwen2(work / "model", QWEN25_05B, QWEN25_05B["num_hidden_layers"], qlora_gpu.byte_tokenizer())
sft_data.write_jsonl(work / "data.jsonl", qlora_gpu.log_rows())
EOF

sft=(train_lora.py sft --data "$work/data.jsonl" --model "$work/model" --env crafter --rank 16 --alpha 32 --lr 2e-3
     --batch 8 --micro-batch 4 --max-steps 30 --save-steps 10 --eval-examples 16)
record() {  # name, adapter folder, command...: run it, then card.json + GPU, command and wall time -> $OUT/name.json
  local name=$1 adapter=$2; shift 2
  local t0=$SECONDS
  "$@" > "$work/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $((SECONDS - t0)) s"
  [ $rc -ne 0 ] && { grep -v "it/s]\|s/it]" "$work/$name.log" | tail -30; return; }
  python3 - "$adapter/card.json" "$OUT/$name.json" "$((SECONDS - t0))" "$*" <<'EOF'
import json, subprocess, sys
card = json.load(open(sys.argv[1]))
gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout
card.update(gpu=gpus.strip().splitlines()[0], gpus=len(gpus.strip().splitlines()), wall_s=int(sys.argv[3]), command=sys.argv[4])
json.dump(card, open(sys.argv[2], "w"), indent=1)
losses = card["train_losses"]
print(f"{sys.argv[2]}: qlora {card['qlora']}, {card['processes']} process(es), {card['steps']} steps, eval loss "
      f"{card['loss_before']:.3f} -> {card['loss_after']:.3f}, train loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
      f"peak {card['peak_gpu_gib']} GiB (process 0), {card['seconds']} s")
EOF
}

qlora=off
python3 -c "import bitsandbytes" 2>/dev/null && qlora=on
record sft_1gpu "$work/a" env CUDA_VISIBLE_DEVICES=0 python3 "${sft[@]}" --out "$work/a" --qlora "$qlora"
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  record sft_2gpu_zero3 "$work/b" python3 -m accelerate.commands.launch --config_file configs/accelerate_zero3.yaml \
    --num_processes 2 "${sft[@]}" --out "$work/b" --zero3
else
  echo "== sft_2gpu_zero3 skipped: one GPU"
fi
