"""Loop 1 on real Crafter with a scripted agent and a scripted meta-LLM: a revision that helps is
accepted and published, every bad one (unparseable, invalid YAML, crashing, hanging, worse, equal,
hostile) is rejected with its reason and the incumbent stays intact; an interrupted iteration
resumes. Hostile hooks and the static check: tests/test_jail.py."""
import json
import re
import shutil
from pathlib import Path

import pytest

import digest
import eval as evaluation
import llm
import loop as machinery  # the name loop is this file's helper
import meta_loop

ROOT = Path(__file__).resolve().parent.parent
V0 = ROOT / "scaffolds" / "crafter" / "v0"
YAML = (V0 / "scaffold.yaml").read_text()

# The toy setting: the scripted agent commits the action named on a "HINT: <action>" line of its PLAN
# prompt and otherwise stands still (Noop), so v0 scores 0. A hook that steers it to the nearest tree
# and presses Do there collects wood (1 of 22 achievements) on seed 42 at step 5.
TREE_HOOKS = '''import re


def before_plan(ctx):
    if "You face tree" in ctx.obs.text:
        return "HINT: Do"
    seen = re.search(r"- tree \\d+ steps? to your ([a-z-]+)", ctx.obs.text)
    for word in ("east", "west", "north", "south"):
        if seen and word in seen.group(1):
            return "HINT: Move " + word.title()
    return "HINT: Move West"
'''
EVAL_ARGS = ["--episodes", "1", "--max-steps", "6"]


def agent_reply(messages):
    text = messages[-1]["content"]
    hint = re.search(r"^HINT: (.+)$", text, re.M)
    if hint:
        return f"<|ACTION|>{hint.group(1)}<|END|>"
    return "<|DONE|>" if "<|DONE|>" in text else "<|ACTION|>Noop<|END|>"  # LOG's prompts offer <|DONE|>


def proposal(hooks=None, yaml=YAML, why="steer to trees"):
    blocks = f"```yaml scaffold.yaml\n{yaml}```\n" + (f"```python hooks.py\n{hooks}```\n" if hooks is not None else "")
    return f"RATIONALE: {why}\n{blocks}"


def loop(tmp_path, meta_replies, iterations, agent=agent_reply, extra=()):
    """Run meta_loop.main with scripted agent and meta-LLM, versions in tmp_path/scaffolds."""
    scaffolds = tmp_path / "scaffolds"
    if not scaffolds.exists():
        shutil.copytree(V0, scaffolds / "crafter" / "v0")
    evaluation.WORKER.clear()
    evaluation.WORKER["llm"] = llm.load("scripted", replies=agent)
    machinery.META.clear()
    machinery.META["llm"] = llm.load("scripted", replies=meta_replies)
    meta_loop.main(["--env", "crafter", "--iterations", str(iterations), "--scaffolds-dir", str(scaffolds),
                    "--runs-dir", str(tmp_path / "runs"), "--run-name", "loop", *EVAL_ARGS, *extra])
    run_dir = tmp_path / "runs" / "loop"
    return run_dir, json.loads((run_dir / "state.json").read_text())


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_loop_accepts_the_improvement_and_rejects_the_rest(tmp_path, capsys):
    replies = [
        proposal(TREE_HOOKS),                                              # 1 helps: accepted as v1
        proposal(yaml=YAML + "files: {unclosed\n"),                        # 2 invalid YAML
        "I would add a map file.",                                         # 3 no file blocks
        proposal("def before_plan(ctx):\n    return 1 / 0\n"),             # 4 crashes when called
        proposal("raise ImportError('no such helper')\n"),               # 5 crashes on import
        proposal("def before_plan(ctx):\n    return 'HINT: Noop'\n"),      # 6 worse than v1
        proposal(TREE_HOOKS + "# same behaviour, new comment\n", yaml=YAML + "trusted: true\n"),  # 7 equal to v1; trusts itself
        proposal("def after_log(ctx):\n    open('/tmp/automem-escape.txt', 'w').write('x')\n"),  # 8 hostile
    ]
    run_dir, state = loop(tmp_path, replies[:1], 1)
    run_dir, state = loop(tmp_path, replies[1:], len(replies))  # more iterations continue the same loop
    its = state["iterations"]
    assert [it["verdict"] for it in its] == ["accepted"] + ["rejected"] * 7
    assert [it["stage"] for it in its] == ["score", "schema", "parse", "sandbox", "sandbox", "score", "score",
                                           "static check"]
    assert state["start"]["score"]["mean"] == 0.0 and its[0]["score"]["mean"] == pytest.approx(100 / 22)
    assert "invalid YAML" in its[1]["reason"] and "no ```yaml scaffold.yaml block" in its[2]["reason"]
    assert "before_plan raised ZeroDivisionError" in its[3]["reason"] and "hooks.py line 2" in its[3]["reason"]
    assert "import failed: ImportError: no such helper" in its[4]["reason"]
    assert its[5]["reason"].startswith("not better: 0.00 <= 4.55") and its[6]["reason"].startswith("not better: 4.55 <= 4.55")
    assert "line 2: name open" in its[7]["reason"] and not Path("/tmp/automem-escape.txt").exists()
    # v1 is published with its lineage; the rejected ones left the versions alone
    v1 = tmp_path / "scaffolds" / "crafter" / "v1"
    assert sorted(p.name for p in v1.parent.iterdir()) == ["v0", "v1"]
    assert (v1 / "hooks.py").read_text() == TREE_HOOKS and "name: crafter-v1" in (v1 / "scaffold.yaml").read_text()
    for yaml_path in (v1 / "scaffold.yaml", run_dir / "candidates" / "iter7" / "scaffold" / "scaffold.yaml"):
        assert yaml_path.read_text().endswith(meta_loop.UNTRUSTED) and "trusted: true" not in yaml_path.read_text()
    meta = json.loads((v1 / "meta.json").read_text())
    assert meta["parent"] == "v0" and meta["iteration"] == 1 and meta["rationale"] == "steer to trees"
    assert meta["meta_model"]["backend"] == "llamacpp" and meta["score"]["mean"] > meta["parent_score"]["mean"]
    assert state["incumbent"]["version"] == "v1" and all(it["parent"] == "v1" for it in its[1:])
    assert snapshot(v1.parent / "v0") == snapshot(V0)
    for k, it in enumerate(its, 1):  # every candidate is archived with its verdict
        assert json.loads((run_dir / "candidates" / f"iter{k}" / "verdict.json").read_text())["reason"] == it["reason"]
    # the meta-LLM's input: files, results, history with reasons, a digest citing steps
    prompt = (run_dir / "candidates" / "iter3" / "prompt.txt").read_text()
    assert "## Current scaffold v1" in prompt and TREE_HOOKS.strip() in prompt
    assert "iter2 (from v1): rejected" in prompt and "invalid YAML" in prompt
    assert re.search(r"progress \(1\):\n  step \d+: 'Do' -> progression 4.5 %", prompt)
    assert len(prompt) <= 60_000
    # the report
    capsys.readouterr()
    meta_loop.main(["--report", "--env", "crafter", "--runs-dir", str(tmp_path / "runs"),
                    "--scaffolds-dir", str(tmp_path / "scaffolds")])
    out = capsys.readouterr().out
    assert "| v1 | v0 | 4.55 ± 0.00 | 0.00 ± 0.00 | loop iter1 |" in out
    assert "| iter6 | - | v1 | 0.00 ± 0.00 | 4.55 ± 0.00 | rejected (score) | not better" in out


def test_min_margin_is_part_of_the_acceptance_rule(tmp_path):
    """Better by 4.55 points is not enough under --min-margin 5 (the rule: mean > incumbent's mean + margin)."""
    _, state = loop(tmp_path, [proposal(TREE_HOOKS)], 1, extra=["--min-margin", "5"])
    it, = state["iterations"]
    assert (it["verdict"], it["stage"], it["score"]["mean"]) == ("rejected", "score", pytest.approx(100 / 22))
    assert it["reason"] == "not better: 4.55 <= 0.00 (incumbent) + 5" and state["incumbent"]["version"] == "v0"


def test_resume_after_an_interruption_between_candidate_and_evaluation(tmp_path):
    def interrupted_agent(messages):  # the candidate's evaluation is killed at its first hinted step
        if "HINT:" in messages[-1]["content"]:
            raise KeyboardInterrupt
        return agent_reply(messages)
    with pytest.raises(KeyboardInterrupt):
        loop(tmp_path, [proposal(TREE_HOOKS)], 1, agent=interrupted_agent)
    it_dir = tmp_path / "runs" / "loop" / "candidates" / "iter1"
    assert (it_dir / "reply.txt").is_file() and (it_dir / "scaffold" / "hooks.py").is_file()
    assert not (it_dir / "verdict.json").exists() and not (tmp_path / "scaffolds" / "crafter" / "v1").exists()
    asked = []
    run_dir, state = loop(tmp_path, lambda messages: asked.append(1) or "", 1)
    assert not asked  # the saved reply was reused
    assert [it["verdict"] for it in state["iterations"]] == ["accepted"] and state["incumbent"]["version"] == "v1"
    assert len(list((it_dir / "eval" / "traces" / "crafter").glob("*.jsonl"))) == 1
    assert sorted(p.name for p in (tmp_path / "scaffolds" / "crafter").iterdir()) == ["v0", "v1"]


@pytest.fixture(scope="module")
def v0_run(tmp_path_factory):
    """A short scripted eval of v0 (the agent stands still): traces to digest and steps to replay."""
    runs = tmp_path_factory.mktemp("runs")
    evaluation.WORKER.clear()
    evaluation.WORKER["llm"] = llm.load("scripted", replies=agent_reply)
    evaluation.main(["--env", "crafter", "--episodes", "2", "--max-steps", "6", "--runs-dir", str(runs), "--run-name", "r"])
    return runs / "r"


@pytest.fixture(scope="module")
def replay(v0_run):
    return meta_loop.replay_request(v0_run)


def test_digest_cites_steps_and_fits_its_budget(v0_run):
    text = digest.trace_digest(v0_run, 3000)
    assert len(text) <= 3000 and text.count("### default seed") == 2
    assert "no new game state (1):\n  steps 0-5: 6 steps stuck or back to a recent state; actions 'Noop' x6" in text
    assert "step 0 verbatim" in text and "PLAN reply: '<|ACTION|>Noop<|END|>'" in text
    small = digest.trace_digest(v0_run, 1600)
    assert len(small) <= 1600 and "1 more episodes not shown" in small


def test_validation_passes_good_hooks_on_recorded_and_live_steps(tmp_path, replay):
    candidate = tmp_path / "candidate"
    shutil.copytree(V0, candidate)
    (candidate / "hooks.py").write_text(TREE_HOOKS + "def after_log(ctx):\n    ctx.episode['n'] = ctx.step\n")
    result = meta_loop.validate_hooks(candidate, tmp_path / "sandbox", "crafter", replay, timeout=120)
    assert result["calls"] >= 4 + 2 * meta_loop.SMOKE_STEPS


def test_parse_reply():
    files, why = machinery.parse_files("RATIONALE: map file.\n```yaml scaffold.yaml\na: 1\n```\ntext\n"
                                       "```python hooks.py\nx = 1\n```\n```bash\nls\n```", ("scaffold.yaml", "hooks.py"),
                                       required=["scaffold.yaml"])
    assert files == {"scaffold.yaml": "a: 1\n", "hooks.py": "x = 1\n"} and why.startswith("map file.")
    with pytest.raises(ValueError, match="two scaffold.yaml blocks"):
        machinery.parse_files("```yaml scaffold.yaml\na\n```\n```yaml scaffold.yaml\nb\n```", ["scaffold.yaml"], [])
    with pytest.raises(ValueError, match="no ```python hooks.py block"):
        machinery.parse_files("```yaml scaffold.yaml\na\n```", ["scaffold.yaml", "hooks.py"], ["hooks.py"])


def test_bad_input_is_one_line(tmp_path, capsys):
    for argv, message in [(["--env", "atari"], "choose one of crafter"), (["--env", "crafter", "--agent", "cot"], "--agent is set"),
                          (["--env", "crafter", "--meta-backend", "openai"], "needs --meta-model")]:
        with pytest.raises(SystemExit) as e:
            meta_loop.main(argv + ["--runs-dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_embedded_model_as_meta_llm(tmp_path):
    """One iteration offline with SmolLM2-135M as the meta-LLM: its reply rarely parses, so the
    candidate is usually rejected with the reason; either way the loop records a verdict."""
    shutil.copytree(V0, tmp_path / "scaffolds" / "crafter" / "v0")
    evaluation.WORKER.clear()
    evaluation.WORKER["llm"] = llm.load("scripted", replies=agent_reply)
    machinery.META.clear()
    meta_loop.main(["--env", "crafter", "--iterations", "1", "--quick", "--meta-n-ctx", "2048", "--meta-max-tokens", "128",
                    "--scaffolds-dir", str(tmp_path / "scaffolds"), "--runs-dir", str(tmp_path / "runs"),
                    "--run-name", "loop"])
    state = json.loads((tmp_path / "runs" / "loop" / "state.json").read_text())
    assert len(state["iterations"]) == 1 and state["iterations"][0]["reason"]
    assert (tmp_path / "runs" / "loop" / "candidates" / "iter1" / "reply.txt").read_text()
