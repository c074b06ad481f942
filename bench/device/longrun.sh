#!/usr/bin/env bash
# Runs longer than one device call (10 minutes at most): start one in a process session of its own, which outlives
# the call while the machine stays warm, then look in and take the results home in later calls.
#
#   bash bench/device/longrun.sh start NAME CMD...   # CMD runs from a copy of the repo (each call replaces the repo
#                                                    # folder there); log /tmp/longrun/NAME.log
#   bash bench/device/longrun.sh progress RUNS       # per run under RUNS: finished episodes, steps of unfinished ones
#   bash bench/device/longrun.sh collect RUNS        # each run folder as $OUT/RUN.tar.xz (traces, results, config)
#
# e.g. start table bash bench/embedded_table.sh /tmp/runs/table; then, a call at a time, progress /tmp/runs/table
# until every run is done, then collect /tmp/runs/table.
set -euo pipefail
LONGRUN=/tmp/longrun

case "${1:-}" in
  start)
    name=${2:?start NAME CMD...}; shift 2
    mkdir -p "$LONGRUN"
    rm -rf "$LONGRUN/$name.src" && mkdir "$LONGRUN/$name.src"
    tar --exclude=./.gpu --exclude=./.git -cf - . | tar -xf - -C "$LONGRUN/$name.src"
    (cd "$LONGRUN/$name.src" && PYTHONUNBUFFERED=1 setsid nohup "$@" > "$LONGRUN/$name.log" 2>&1 < /dev/null &)
    echo "started $name: $*"
    ;;
  progress)
    for run in "${2:?progress RUNS}"/*/; do
      done_=$(find "$run" -path '*/traces/*' -name '*.jsonl' | wc -l)
      steps=$(find "$run" -path '*/traces/*' -name '*.part' -exec sh -c 'echo $(( $(wc -l < "$1") - 1 ))' _ {} \; | sort -n | tr '\n' ' ')
      echo "$(basename "$run"): $done_ finished; unfinished at steps [ ${steps}]"
    done
    echo "load $(cut -d' ' -f1-3 /proc/loadavg); $(pgrep -c python3 || true) python3 processes"
    ;;
  collect)
    cd "${2:?collect RUNS}"
    for run in */; do tar -cJf "$OUT/${run%/}.tar.xz" --exclude='*.lock' "$run" $(ls "${run%/}".log 2>/dev/null); done
    ls -l "$OUT"
    ;;
  *) echo "longrun.sh: say start NAME CMD..., progress RUNS or collect RUNS" >&2; exit 2 ;;
esac
