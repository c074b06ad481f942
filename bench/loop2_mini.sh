#!/usr/bin/env bash
# Loop 2 in miniature (issue #15): does training the embedded SmolLM2-135M as the memory specialist on its
# own traces change what it does with memory? On a GPU box, three stages (each resumable):
#
#   bash bench/loop2_mini.sh traces runs/loop2   # base agent, training seeds
#   bash bench/loop2_mini.sh train runs/loop2    # data engine, then LoRA SFT on the GPU (+ adapter.gguf)
#   bash bench/loop2_mini.sh eval runs/loop2     # base vs trained specialist on the evaluation seeds
#   python report.py loop2 runs/loop2/base-* runs/loop2/eval-* --out report
#
# Scaffolds: the converged ones (crafter v5, minihack v4), whose two-model split is the authors'.
# Training seeds: train_seeds.txt (disjoint from seeds.txt); 10 Crafter episodes of 300 steps, 10 per
# MiniHack task (MazeWalk-9x9, Corridor-R3) of 100 steps. Evaluation, on seeds.txt with the steps of
# bench/embedded_table.sh (3 Crafter episodes, 5 per MiniHack task): the base agent (base-<env>-<scaffold>-s<steps>)
# and the two-model agent with the adapter (eval-...-2model-s<steps>), the same steps and grammar; the two-model agent
# with the untrained base as its specialist (base-...-2model-s<steps>: what the split alone does); then the
# specialist with --grammar off (eval-...-2model-nogrammar-s<steps>; the base model's fallback rate without
# grammar is 1.0), NOGRAMMAR_STEPS steps (default the same; without the grammar each step takes longer).
# Smaller (e.g. a CPU check of the whole chain, or the README's device run): CRAFTER_STEPS, MAZE_STEPS,
# NOGRAMMAR_STEPS, TRAIN_EPISODES (per task), EVAL_EPISODES (per task), SFT_MICRO_BATCH (default 8) and SFT_ARGS
# (extra train_lora.py sft flags, e.g. "--epochs 1" or "--max-steps 2"). ENVS="minihack" runs a stage for that env
# alone (one chain per env can then run on its own GPU: CUDA_VISIBLE_DEVICES=1 ...).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:?usage: bash bench/loop2_mini.sh traces|train|eval RUNS-DIR}
RUNS=${2:-runs/loop2}
mkdir -p "$RUNS"
source bench/embedded_runs.sh
TRAIN_EPISODES=${TRAIN_EPISODES:-10}
ENVS=${ENVS:-crafter minihack}
wants() { [[ " $ENVS " == *" $1 "* ]]; }
CRAFTER_STEPS=${CRAFTER_STEPS:-300} MAZE_STEPS=${MAZE_STEPS:-100}
CRAFTER=(--env crafter --max-steps "$CRAFTER_STEPS" --scaffold scaffolds/crafter/v5)
MAZES=(--env minihack --task MiniHack-MazeWalk-9x9-v0 --task MiniHack-Corridor-R3-v0 --max-steps "$MAZE_STEPS"
       --scaffold scaffolds/minihack/v4)

evaluate() {  # ENV-SCAFFOLD STEPS EPISODES-PER-TASK TASKS ARGS...: base, the two-model control, trained specialist,
  # the same without grammar
  local name=$1 steps=$2 per_task=$3 tasks=$4; shift 4
  local adapter=(--memory-adapter "$RUNS/adapters/${name%%-*}/adapter.gguf") off=${NOGRAMMAR_STEPS:-$steps}
  EPISODES=$per_task play "base-$name-s$steps" $((tasks * per_task)) "$@"
  EPISODES=$per_task play "base-$name-2model-s$steps" $((tasks * per_task)) "$@" --memory-model "$MODEL"
  EPISODES=$per_task play "eval-$name-2model-s$steps" $((tasks * per_task)) "$@" "${adapter[@]}"
  EPISODES=$per_task play "eval-$name-2model-nogrammar-s$off" $((tasks * per_task)) "$@" "${adapter[@]}" \
    --max-steps "$off" --grammar off
}

case $STAGE in
  traces)
    if wants crafter; then play train-crafter "$TRAIN_EPISODES" "${CRAFTER[@]}" --seeds train_seeds.txt; fi
    if wants minihack; then
      EPISODES=$TRAIN_EPISODES play train-minihack $((2 * TRAIN_EPISODES)) "${MAZES[@]}" --seeds train_seeds.txt
    fi
    finish ;;
  train)
    for env in $ENVS; do
      python3 train_lora.py data --runs "$RUNS/train-$env" --out "$RUNS/data/$env.jsonl"
      # one GPU each (several visible to one process is DataParallel, which TRL's SFTTrainer refuses); micro-batch 8
      # of the same batch: a 135M model's step is kernel launches, 8x fewer of them ran it 4.5x faster
      # (bench/sft_overhead.py on the H200: 5.1 -> 1.1 s a step); the loss is the same mean over the batch's tokens
      CUDA_VISIBLE_DEVICES=$(next_gpu) \
      python3 train_lora.py sft --data "$RUNS/data/$env.jsonl" --out "$RUNS/adapters/$env" --env $env --model "$MODEL" \
        --micro-batch "${SFT_MICRO_BATCH:-8}" ${SFT_ARGS:-} > "$RUNS/sft-$env.log" 2>&1 &
      JOBS+=($!)
    done
    finish ;;
  eval)
    if wants crafter; then evaluate crafter-v5 "$CRAFTER_STEPS" "${EVAL_EPISODES:-3}" 1 "${CRAFTER[@]}"; fi
    if wants minihack; then evaluate minihack-v4 "$MAZE_STEPS" "${EVAL_EPISODES:-5}" 2 "${MAZES[@]}"; fi
    finish ;;
  *) echo "unknown stage $STAGE: traces, train or eval" >&2; exit 2 ;;
esac
