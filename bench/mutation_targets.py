"""What bench/mutation.sh mutates, and its report.

    python bench/mutation_targets.py            # in an area's folder (after mutmut generated): the mutants to run
    python bench/mutation_targets.py --report   # in the work folder: score and each survivor's diff, all areas

TARGETS maps mutmut's name of a function ("module.x_function", "module.xǁClassǁmethod") to None (every mutant of
it) or a regex (only mutants that change a line matching it).
"""
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path

TARGETS = {
    # memory_fs.py: names and the sandboxed directory (guards), which ops a routine may run, the match and
    # redundancy flags that metrics.py counts. Left out: the parser and the GBNF grammar (about 440 mutants;
    # hypothesis fuzzes the parser), and result texts other than those.
    **{f"memory_fs.x_{fn}": None for fn in ("valid_name", "_lines", "_utf8", "_has_key", "_keyed")},
    **{f"memory_fs.xǁMemoryFSǁ{fn}": None for fn in (
        "__init__", "execute", "apply", "_search", "_count", "_append", "_write", "_create", "_upsert", "_grep",
        "_existing", "_name", "_valid", "_check", "_room", "_replace", "_put", "_load")},
    # metrics.py: every number of the tables
    **{f"metrics.x_{fn}": None for fn in (
        "progression_stats", "calls", "op_results", "ratio", "game_state", "unproductive_steps", "unproductive_rate",
        "redundant_write_rate", "empty_search_rate", "log_writes_per_search", "invalid_action_rate", "fallback_rate",
        "per_step", "behaviour")},
    # envs.py: progression, success, and what step() reports
    **{f"envs.x_{fn}": None for fn in ("crafter_progression", "_crafter_score", "nethack_progression",
                                        "_nethack_score", "minihack_success", "_minihack_score")},
    "envs.xǁGameǁstep": None,
    # eval.py, run_folder.py and trace_format.py: which seed each episode plays, where its trace goes, what a
    # resumed run keeps or redoes (a damaged trace)
    **{f"eval.x_{fn}": None for fn in ("read_seeds", "hash_seed")},
    "run_folder.x_trace_path": None,
    "trace_format.x_damage": None,
    "run_folder.x_check_run_dir": r"trace|damage|stale|\.part",
    "eval.x_make_config": r"seeds|jobs",
    "eval.x_run": r"\btodo = ",
    # meta_loop.py: the acceptance rule
    "meta_loop.x_run_iteration": r'score\["mean"\] >',
    # replay.py: the escaping of the replay page's title, the one text written into its HTML
    "replay.x_write_replay": r"autoescape",
}
KILLED = ("killed", "timeout")


def selected():
    """Names of the TARGETS' mutants that mutmut generated in ./mutants."""
    for meta in sorted(Path("mutants").glob("*.py.meta")):
        module = meta.name.removesuffix(".py.meta")
        source = (meta.parent / f"{module}.py").read_text().splitlines()
        spans = json.loads((meta.parent / f"{module}.py.spans").read_text())["spans"]  # function -> line range
        for name in json.loads(meta.read_text())["exit_code_by_key"]:
            function = name.rsplit("__mutmut_", 1)[0]
            if function not in TARGETS:
                continue
            pattern = TARGETS[function]
            if pattern:  # the lines of the original function that this mutant changed
                first, last = spans[function.split(".", 1)[1] + "__mutmut_orig"]
                m_first, m_last = spans[name.split(".", 1)[1]]
                changed = [line[2:] for line in difflib.ndiff(source[first:last], source[m_first:m_last])
                           if line.startswith("- ")]
                if not any(re.search(pattern, line) for line in changed):
                    continue
            yield name


def report():
    from mutmut.stats import status_by_exit_code
    status = {}  # name -> (status, area folder)
    for chosen in sorted(Path(".").glob("*/selected.txt")):
        names = set(chosen.read_text().split())
        for meta in chosen.parent.glob("mutants/*.py.meta"):
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                if name in names:
                    status[name] = (status_by_exit_code[code], chosen.parent)
    for area in sorted({folder.name for _, folder in status.values()}):
        mine = [s for s, folder in status.values() if folder.name == area]
        print(f"{area}: {sum(s in KILLED for s in mine)}/{len(mine)} killed")
    killed = sum(s in KILLED for s, _ in status.values())
    print(f"mutation score: {killed}/{len(status)} killed ({100 * killed / max(1, len(status)):.1f}%)")
    for name, (s, folder) in sorted(status.items()):
        if s not in KILLED:
            diff = subprocess.run(["mutmut", "show", name], cwd=folder, capture_output=True, text=True).stdout
            print(f"\n{s}: {name}\n" + "\n".join(line for line in diff.splitlines()
                                                   if line[:1] in "-+" and line[:3] not in ("---", "+++")))


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:
        report()
    else:
        print("\n".join(selected()))
