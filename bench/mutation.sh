#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the code that decides a reported number or guards the machine. A mutant is the
# code with one small change (> for >=, a constant off by one, a condition negated, an argument dropped); a test
# must fail on it ("killed"). A surviving mutant is a bug the suite would not notice, or an equivalent change.
#
#   pip install mutmut==3.8.1
#   bash bench/mutation.sh                  # the score and each survivor's diff (README, "Tests that bite")
#   bash bench/mutation.sh /tmp/mut-work    # work folder (default /tmp/automem-mutation)
#   bash bench/mutation.sh /tmp/mut-work envs.py eval.py    # only these areas (the others' results stay)
#   cd /tmp/automem-mutation/eval && mutmut show <name>    # one mutant's diff; `mutmut apply <name>` writes it
#
# One mutmut session per area (AREAS: the file it mutates, the tests that may kill its mutants), each in its
# own subfolder holding a copy of the committed files (HEAD). Only the mutants of
# bench/mutation_targets.py's TARGETS run (a function, or the lines of it that match a pattern), each against
# the area's tests that reach its function, fastest first. Message text is not mutated (raise and print
# lines, lines that are a string alone): no number or guard depends on its wording.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/automem-mutation}
AREAS=(  # "file|pytest arguments" (in a -k expression, _or_ stands for " or ")
    "memory_fs.py|tests/test_memory_fs.py"
    "metrics.py|tests/test_report.py -k rate_or_per_step_or_per_search_or_metric_or_table_numbers_or_unproductive_or_stats_or_aliased"
    "envs.py|tests/test_envs.py"
    "eval.py|tests/test_eval.py tests/test_reliability.py -k seed_or_resume_skips_or_bad_input_or_changed_config_or_damage_or_half_done"
    "run_folder.py|tests/test_eval.py tests/test_reliability.py -k seed_or_resume_skips_or_changed_config_or_damage_or_half_done"
    "trace_format.py|tests/test_eval.py tests/test_reliability.py -k damage"
    "meta_loop.py|tests/test_meta_loop.py -k loop_accepts_or_margin"
    "replay.py|tests/test_replay.py -k escapes_or_planted"
)
python3 -c "import mutmut" 2>/dev/null || { echo "error: mutmut is not installed: pip install mutmut==3.8.1"; exit 2; }
ONLY=" ${*:2} "
echo "mutation testing in $WORK ($(date +%T))"

for area in "${AREAS[@]}"; do
    file=${area%%|*}; tests=${area#*|}; dir="$WORK/${file%.py}"
    [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $file "* ]] || continue
    rm -rf "$dir" && mkdir -p "$dir"
    git -C "$ROOT" archive HEAD | tar -x -C "$dir"
    cd "$dir"
    {
        echo "[mutmut]"
        echo "source_paths = $file"
        echo "also_copy ="
        for f in pytest.ini *.py data scaffolds templates seeds.txt; do [ "$f" = "$file" ] || echo "    $f"; done
        echo "pytest_add_cli_args_test_selection ="
        for arg in $tests; do echo "    ${arg//_or_/ or }"; done
        echo "pytest_add_cli_args ="
        printf '    %s\n' -p no:cacheprovider -m "not slow"
        echo "do_not_mutate_patterns ="
        echo '    ^\s*(raise|print)\b'
        echo '    ^\s*f?"[^"]*"\s*\)*,?\s*$'
    } > setup.cfg
    # generate the file's mutants and record which tests reach which function (mutmut stops there, as no
    # mutant is named), pick the TARGETS' mutants, run them
    nice -n 15 mutmut run "no-such-mutant" > generate.log 2>&1 || true
    [ -f mutants/mutmut-stats.json ] || { tail -20 generate.log; echo "error: mutmut failed in $dir (generate.log)"; exit 1; }
    python3 "$ROOT/bench/mutation_targets.py" > selected.txt
    echo "$file: $(wc -l < selected.txt) mutants ($(date +%T))"
    if [ -s selected.txt ]; then
        xargs -a selected.txt -d '\n' nice -n 15 mutmut run > run.log 2>&1 ||
            { tail -20 run.log; echo "error: mutmut run failed in $dir (run.log)"; exit 1; }
    fi
done
cd "$WORK" && python3 "$ROOT/bench/mutation_targets.py" --report
echo "done ($(date +%T))"
