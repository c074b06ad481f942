"""The inner agent on real Crafter with the scripted backend: LOG writes, PLAN reads, fallback,
hooks (stuck notice, action gate), two-model split, baselines, scaffold validation."""
import re
import shutil
from pathlib import Path

import pytest

import automem
import envs
import llm
from test_llm import lora_dir  # noqa: F401 (a fixture: a LoRA adapter shaped for SmolLM2)

ROOT = Path(__file__).resolve().parent.parent
CRAFTER_V0 = ROOT / "scaffolds" / "crafter" / "v0"


@pytest.fixture(scope="module")
def game():
    g = envs.make("crafter", max_steps=3)
    yield g
    g.close()


def play(tmp_path, game, replies, steps=2, kind="memory", scaffold=None, **agent_kw):
    scaffold = scaffold or automem.load_scaffold(CRAFTER_V0)
    backend = llm.load("scripted", replies=replies)
    agent = automem.Agent(scaffold, backend, game, tmp_path / "mem", kind=kind, **agent_kw)
    end = automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=steps)
    header, recs, end2 = automem.read_trace(tmp_path / "t.jsonl")
    assert end2 == end and header["seed"] == 42
    return agent, recs, end


def test_log_writes_and_plan_reads(tmp_path, game):
    replies = [
        "<|SEARCH|>strategy.txt|wood<|END|>",          # step 0 PLAN turn 1 (no LOG on the first step)
        "<|ACTION|>Move West<|END|>",                   # step 0 PLAN turn 2
        "<|APPEND|>map_notes.txt|Step 0 'Move West': grass west<|END|>\n<|DONE|>",  # step 1 LOG
        "<|READ|>map_notes.txt<|END|> then <|ACTION|>Do<|END|>",                   # step 1 PLAN
    ]
    agent, recs, _ = play(tmp_path, game, replies)
    assert "log" not in recs[0] and recs[0]["plan"]["ended"] == "action"
    assert recs[0]["plan"]["turns"][0]["results"][0]["matches"] == 0  # empty search, recorded
    assert [r["action"] for r in recs] == ["Move West", "Do"] and all(r["valid"] for r in recs)
    assert recs[1]["log"]["ended"] == "done"
    assert recs[1]["writes"] == [["APPEND", ["map_notes.txt", "Step 0 'Move West': grass west"]]]
    assert agent.memory.read("map_notes.txt") == "Step 0 'Move West': grass west\n"
    assert "grass west" in recs[1]["plan"]["turns"][0]["results"][0]["text"]  # READ in PLAN saw the LOG write
    # turn 0 stores its user message only: the system prompt sits once in the header
    assert [m["role"] for m in recs[1]["log"]["turns"][0]["messages"]] == ["user"]


def test_plan_is_read_only_and_garbage_falls_back(tmp_path, game):
    replies = ["<|APPEND|>strategy.txt|sneaky<|END|>", "I like turtles.", "<|DONE|>", "no action here"]
    agent, recs, _ = play(tmp_path, game, replies)
    first = recs[0]["plan"]["turns"][0]["results"][0]
    assert not first["ok"] and not first["wrote"]
    assert agent.memory.read("strategy.txt") == ""
    assert recs[0]["fallback"] and recs[0]["action"] == "Noop" and recs[0]["plan"]["ended"] == "no_op"
    assert recs[1]["fallback"] and recs[1]["valid"]


def test_turn_limit_then_fallback(tmp_path, game):
    scaffold = automem.load_scaffold(CRAFTER_V0)
    scaffold["limits"]["plan_turns"] = 3
    agent, recs, _ = play(tmp_path, game, ["<|COUNT|>strategy.txt|x<|END|>"] * 3, steps=1, scaffold=scaffold)
    assert len(recs[0]["plan"]["turns"]) == 3 and recs[0]["plan"]["ended"] == "limit" and recs[0]["fallback"]


def test_stuck_notice_when_observation_unchanged(tmp_path, game):
    seen = []

    def reply(messages):
        seen.append(messages[-1]["content"])
        return "<|ACTION|>Noop<|END|>" if "PLAN phase" in messages[-1]["content"] else "<|DONE|>"
    scaffold = automem.load_scaffold(CRAFTER_V0)
    agent = automem.Agent(scaffold, llm.load("scripted", replies=reply), game, tmp_path / "m")
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=3)
    plans = [s for s in seen if "PLAN phase" in s]
    assert "NOTICE" not in plans[0] and "NOTICE" in plans[2]  # Noop twice: the view did not change


def test_hooks_observe_gate_and_after_log(tmp_path, game):
    scaffold_dir = tmp_path / "scaffold"
    shutil.copytree(CRAFTER_V0, scaffold_dir)
    (scaffold_dir / "hooks.py").write_text(
        "def observe(ctx):\n    return 'STEP-MARK %d' % ctx.step\n"
        "def check_action(ctx, action):\n    return 'standing still wastes time' if action == 'Noop' else None\n"
        "def after_log(ctx):\n    ctx.memory.apply(__import__('memory_fs').Op('WRITE', ['status.txt', 'step %d' % ctx.step], ''))\n")
    scaffold = automem.load_scaffold(scaffold_dir)
    replies = ["<|ACTION|>Noop<|END|>", "<|ACTION|>Noop<|END|>", "<|ACTION|>Noop<|END|>",  # step 0: gate x2, then kept
               "<|DONE|>", "<|ACTION|>Do<|END|>"]
    agent, recs, _ = play(tmp_path, game, replies, scaffold=scaffold)
    assert [(g["action"], g["reason"]) for g in recs[0]["gate"]] == [("Noop", "standing still wastes time")] * 2
    assert recs[0]["action"] == "Noop" and len(recs[0]["gate"][0]["turns"]) == 1
    assert recs[0]["hooks"]["observe"] == ["STEP-MARK 0"]
    assert "STEP-MARK 1" in recs[1]["log"]["turns"][0]["messages"][0]["content"]
    assert ["WRITE", ["status.txt", "step 1\n"]] in recs[1]["writes"]  # hook writes land in the trace


def test_two_model_split(tmp_path, game):
    memory_replies = ["<|SEARCH|>strategy.txt|tree<|END|>", "<|ACTION|>Sleep<|END|>",   # step 0 consult, action dropped
                      "<|APPEND|>strategy.txt|find trees<|END|><|DONE|>",                # step 1 LOG
                      "<|ACTION|>Sleep<|END|>"]                                          # step 1 consult
    base_replies = ["<|ACTION|>Move East<|END|>", "<|ACTION|>Do<|END|>"]
    agent, recs, _ = play(tmp_path, game, base_replies, memory_llm=llm.load("scripted", replies=memory_replies))
    assert [r["action"] for r in recs] == ["Move East", "Do"]
    plan0 = recs[0]["plan"]["turns"]
    assert [t["model"] for t in plan0] == ["memory", "memory", "base"] and plan0[1]["dropped_action"] == "Sleep"
    assert {t["model"] for t in recs[1]["log"]["turns"]} == {"memory"}
    # the base model continues the same chat, which holds the consultation's search result
    assert "[SEARCH strategy.txt|tree]" in plan0[1]["messages"][0]["content"]
    assert plan0[2]["messages"][0]["role"] == "user" and len(plan0[2]["messages"]) == 1


@pytest.mark.slow
def test_two_model_split_on_transformers_keeps_the_action_call_base_only(tmp_path, game, lora_dir):
    """One SmolLM2 with a LoRA adapter: LOG replies come from the adapter and differ from the base
    model's; every committed-action call is byte-identical to a base-only model's on the same messages."""
    split = llm.load("transformers", adapters={"memory": lora_dir})
    scaffold = automem.load_scaffold(CRAFTER_V0)
    scaffold["limits"].update(log_turns=1, plan_turns=3, max_tokens=16)
    scaffold["prompts"]["system"] = "Use <|SEARCH|>file|word<|END|> and <|ACTION|>name<|END|>. Actions: {actions}"  # short: CPU time
    agent = automem.Agent(scaffold, split, game, tmp_path / "mem", memory_adapter="memory", seed=7)
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=2)
    header, recs, _ = automem.read_trace(tmp_path / "t.jsonl")
    base_only = llm.load("transformers")  # a second copy without adapters
    log_differs = base_calls = 0
    for r in recs:
        for routine, turn, messages in automem.model_calls(header, r):
            again = base_only.chat(messages, max_tokens=16, seed=turn["seed"]).text
            if turn["model"] == "base":
                base_calls += 1
                assert again == turn["reply"]  # byte-identical: the adapter is off for the world action
            elif routine == "log":
                log_differs += again != turn["reply"]
    assert base_calls and log_differs


@pytest.mark.parametrize("kind,reply,action", [("window", "Move West.", "Move West"),
                                               ("cot", "Trees are east.\nACTION: Move East", "Move East")])
def test_baselines(tmp_path, game, kind, reply, action):
    agent, recs, _ = play(tmp_path, game, [reply, reply], kind=kind)
    assert [r["action"] for r in recs] == [action, action] and all(r["valid"] for r in recs)
    messages = recs[1]["plan"]["turns"][0]["messages"]
    assert messages[0]["content"] == game.instruction and messages[-1]["content"].startswith("Current Observation:")
    if kind == "cot":
        assert messages[-2]["content"].startswith("Previous plan:\nTrees are east.")


def test_sliding_window_keeps_16_messages(tmp_path):
    agent, recs, _ = play(tmp_path, envs.make("crafter"), ["Noop"] * 12, steps=12, kind="window")
    assert len(recs[11]["plan"]["turns"][0]["messages"]) == 1 + automem.WINDOW_MESSAGES


@pytest.mark.parametrize("edit,message", [
    (lambda y: y.replace("name: crafter-v0", "name: [unclosed"), "line "),
    (lambda y: y.replace("Your previous action (step {step})", "Your previous action {oops}"), "unknown placeholder"),
    (lambda y: y.replace("  plan: [READ, SEARCH, TAIL, COUNT, ACTION]", "  plan: [READ]"), "ACTION"),
    (lambda y: y.replace("  log: [READ,", "  log: [FLY, READ,"), "FLY"),
    (lambda y: y.replace("\nops:\n", "\nops: [READ]\nunused:\n"), "ops must be a mapping"),
    (lambda y: y.replace("grammar: false", "grammar: maybe"), "grammar must be true or false"),
])
def test_scaffold_validation(tmp_path, edit, message):
    shutil.copytree(CRAFTER_V0, tmp_path / "s")
    path = tmp_path / "s" / "scaffold.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=message):
        automem.load_scaffold(tmp_path / "s")


@pytest.mark.slow
def test_grammar_makes_the_embedded_model_write_ops_and_valid_actions(tmp_path, game):
    scaffold = automem.load_scaffold(CRAFTER_V0)
    scaffold["grammar"] = True
    scaffold["limits"].update(log_turns=2, plan_turns=2, max_tokens=48)
    agent = automem.Agent(scaffold, llm.load("llamacpp", n_ctx=4096), game, tmp_path / "mem")
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=3)
    _, recs, _ = automem.read_trace(tmp_path / "t.jsonl")
    assert all(not r["fallback"] and r["valid"] and r["action"] in game.actions for r in recs)
    for r in recs:
        for routine in ("log", "plan"):
            allowed = set(scaffold["ops"][routine]) | {"DONE", "ACTION"}
            turns = (r.get(routine) or {}).get("turns", [])
            assert all(turn["ops"] and {name for name, _ in turn["ops"]} <= allowed for turn in turns)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["window", "cot"])
def test_grammar_for_the_baselines(tmp_path, game, kind):
    scaffold = automem.load_scaffold(CRAFTER_V0)
    scaffold["grammar"] = True
    scaffold["limits"]["max_tokens"] = 48
    agent = automem.Agent(scaffold, llm.load("llamacpp", n_ctx=4096), game, tmp_path / "mem", kind=kind)
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=2)
    _, recs, _ = automem.read_trace(tmp_path / "t.jsonl")
    assert all(r["valid"] and r["action"] in game.actions for r in recs)
    reply = recs[0]["plan"]["turns"][0]["reply"]
    assert reply == recs[0]["action"] if kind == "window" else reply.endswith("ACTION: " + recs[0]["action"])


def test_v0_scaffolds_load_and_fit_their_envs():
    for env in envs.ENVS:
        s = automem.load_scaffold(ROOT / "scaffolds" / env / "v0")
        assert s["env"] == env and len(s["hash"]) == 12
    assert set(automem.load_scaffold(ROOT / "scaffolds" / "nethack" / "v0")["hooks"]) == {"observe"}


def scaffold_with_fallback(tmp_path, action):
    """Crafter v0 with `fallback_action: <action>` (replacing any it has)."""
    shutil.copytree(CRAFTER_V0, tmp_path / "fallback")
    path = tmp_path / "fallback" / "scaffold.yaml"
    path.write_text(re.sub(r"(?m)^fallback_action:.*$", "", path.read_text()) + f"\nfallback_action: {action}\n")
    return tmp_path / "fallback"


def test_fallback_action_must_be_a_game_action(tmp_path, game):
    """A fallback the game does not know (Fly) is refused, naming it, before any step (by load_scaffold or Agent);
    a valid one is what runs when PLAN never commits."""
    with pytest.raises(ValueError, match="fallback_action 'Fly' is not a"):
        scaffold = automem.load_scaffold(scaffold_with_fallback(tmp_path / "fly", "Fly"))
        automem.Agent(scaffold, llm.load("scripted", replies=["<|DONE|>"]), game, tmp_path / "mem")
    scaffold = automem.load_scaffold(scaffold_with_fallback(tmp_path / "do", "Do"))
    _, recs, _ = play(tmp_path, game, ["no action here"] * 10, steps=1, scaffold=scaffold)
    assert recs[0]["fallback"] and (recs[0]["action"], recs[0]["valid"]) == ("Do", True)


def test_map_analysis():
    rows = ["-----", "|.@>|", "|...|", "-----"]
    text = automem.nle_map_analysis(rows, 2, 1)
    assert "can move: east '>', southeast '.', south '.', southwest '.', west '.'" in text
    assert "blocked: north '-', northeast '-', northwest '-'" in text
    assert "stairs down '>' 1 tile(s) east" in text
