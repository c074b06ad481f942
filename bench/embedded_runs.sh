# Sourced by bench/embedded_table.sh and bench/loop2_mini.sh: eval.py runs of the embedded model, each
# against its own llama-server on the GPU (one slot per episode), in the background.
#   serve SLOTS [llama-server args...]    start a server; sets URL
#   play NAME SLOTS [eval.py args...]     one eval.py run against a new server; EPISODES=n overrides
#                                         --episodes (per task); MEMORY_LORA=adapter.gguf adds a second
#                                         server with that LoRA applied, for LOG and memory consultation
#   finish                                wait for every run; non-zero if one failed
# A slot holds 32,768 tokens so that no prompt is refused mid-episode: the in-process llamacpp backend
# cuts a prompt to its 8,192-token window instead (bench/prompt_lengths.py counts the calls above it).
SERVER=${LLAMA_SERVER:-llama-server}
MODEL=${MODEL:-$(python3 -c "import llm; print(llm.DEFAULT_MODEL)")}
SLOT_CTX=32768
PORT=${PORT:-8100}
SERVERS=(); JOBS=()
trap 'kill "${SERVERS[@]}" 2>/dev/null || true' EXIT

serve() {
  local slots=$1; shift
  PORT=$((PORT + 1))
  mkdir -p "$RUNS/servers"
  "$SERVER" -m "$MODEL" -ngl 999 -np "$slots" -c $((slots * SLOT_CTX)) -fa on --host 127.0.0.1 --port "$PORT" \
    -a smollm2 "$@" > "$RUNS/servers/$PORT.log" 2>&1 &
  SERVERS+=($!)
  URL=http://127.0.0.1:$PORT/v1
  python3 - "$URL" "$RUNS/servers/$PORT.log" <<'PY' || exit 1
import sys, time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(sys.argv[1] + "/models", timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit(f"llama-server at {sys.argv[1]} did not start: see {sys.argv[2]}")
PY
}

play() {
  local name=$1 slots=$2; shift 2
  local memory=()
  if [ -n "${MEMORY_LORA:-}" ]; then serve "$slots" --lora "$MEMORY_LORA"; memory=(--memory-base-url "$URL"); fi
  serve "$slots"
  python3 eval.py --backend openai --base-url "$URL" "${memory[@]}" --model smollm2 --grammar on \
    --workers "$slots" --episodes "${EPISODES:-$slots}" --runs-dir "$RUNS" --run-name "$name" --no-replay "$@" \
    > "$RUNS/$name.log" 2>&1 &
  JOBS+=($!)
}

finish() {
  local status=0 job
  for job in "${JOBS[@]}"; do wait "$job" || status=1; done
  JOBS=()
  return $status
}
