"""The inner agent on real Crafter with the scripted backend: LOG writes, PLAN reads, fallback,
hooks (stuck notice, action gate), two-model split, baselines, scaffold validation."""
import ast
import re
import shutil
from pathlib import Path

import pytest

import automem
import envs
import hook_helpers
import llm
import scaffold_spec
import trace_format
from test_llm import lora_dir  # noqa: F401 (a fixture: a LoRA adapter shaped for SmolLM2)

ROOT = Path(__file__).resolve().parent.parent
CRAFTER_V0 = ROOT / "scaffolds" / "crafter" / "v0"


@pytest.fixture(scope="module")
def game():
    g = envs.make("crafter", max_steps=3)
    yield g
    g.close()


def play(tmp_path, game, replies, steps=2, kind="memory", scaffold=None, **agent_kw):
    scaffold = scaffold or scaffold_spec.load_scaffold(CRAFTER_V0)
    backend = llm.load("scripted", replies=replies)
    agent = automem.Agent(scaffold, backend, game, tmp_path / "mem", kind=kind, **agent_kw)
    end = automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=steps)
    header, recs, end2 = trace_format.read_trace(tmp_path / "t.jsonl")
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
    scaffold = scaffold_spec.load_scaffold(CRAFTER_V0)
    scaffold["limits"]["plan_turns"] = 3
    agent, recs, _ = play(tmp_path, game, ["<|COUNT|>strategy.txt|x<|END|>"] * 3, steps=1, scaffold=scaffold)
    assert len(recs[0]["plan"]["turns"]) == 3 and recs[0]["plan"]["ended"] == "limit" and recs[0]["fallback"]


def test_stuck_notice_when_observation_unchanged(tmp_path, game):
    plans = []

    def reply(messages):
        if messages[0]["content"].startswith(game.instruction):  # PLAN's first message opens with the instruction
            plans.append(messages[0]["content"])
            return "<|ACTION|>Noop<|END|>"
        return "<|DONE|>"
    scaffold = scaffold_spec.load_scaffold(CRAFTER_V0)
    texts = scaffold["texts"]
    agent = automem.Agent(scaffold, llm.load("scripted", replies=reply), envs.make("crafter"), tmp_path / "m")
    automem.run_episode(agent, agent.game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=5)
    warning, repeat = texts["unchanged"], texts["repeat"].format(action="Noop")
    assert warning not in plans[0] and repeat not in plans[0]
    assert warning in plans[1] and warning in plans[2] and repeat in plans[2]  # Noop: the view did not change
    assert texts["stuck"].format(count=3) in plans[3] and warning not in plans[3]  # from stuck_after (3) on
    assert texts["stuck"].format(count=4) in plans[4]


def hooked_scaffold(tmp_path, hooks, **yaml_edits):
    """A copy of Crafter v0 with this hooks.py and these top-level scaffold.yaml keys."""
    scaffold_dir = tmp_path / "scaffold"
    shutil.copytree(CRAFTER_V0, scaffold_dir)
    (scaffold_dir / "hooks.py").write_text(hooks)
    path = scaffold_dir / "scaffold.yaml"
    path.write_text(path.read_text() + "".join(f"\n{k}: {v}\n" for k, v in yaml_edits.items()))
    return scaffold_spec.load_scaffold(scaffold_dir)


def test_hooks_observe_gate_and_after_log(tmp_path, game):
    scaffold = hooked_scaffold(tmp_path,
        "def observe(ctx):\n    return 'STEP-MARK %d' % ctx.step\n"
        "def check_action(ctx, action):\n    return 'standing still wastes time' if action == 'Noop' else None\n"
        "def after_log(ctx):\n    ctx.write('WRITE', 'status.txt', 'step %d after %s' % (ctx.step, ctx.log_ops))\n")
    replies = ["<|ACTION|>Noop<|END|>", "<|ACTION|>Noop<|END|>", "<|ACTION|>Noop<|END|>",  # step 0: gate x2, then kept
               "<|DONE|>", "<|ACTION|>Do<|END|>"]
    agent, recs, _ = play(tmp_path, game, replies, scaffold=scaffold)
    assert [(g["action"], g["reason"], g["turn"]) for g in recs[0]["gate"]] == [
        ("Noop", "standing still wastes time", 0), ("Noop", "standing still wastes time", 1)]
    turns = recs[0]["plan"]["turns"]  # the refusals go back into the same PLAN chat, each costing a call
    assert recs[0]["action"] == "Noop" and len(turns) == 3 and recs[0]["plan"]["ended"] == "action"
    refusal = scaffold["texts"]["sent_back"].format(action="Noop", reason="standing still wastes time")
    assert turns[1]["messages"] == [{"role": "user", "content": refusal}]
    assert recs[0]["hooks"]["observe"] == ["STEP-MARK 0"]
    assert "STEP-MARK 1" in recs[1]["log"]["turns"][0]["messages"][0]["content"]  # {analysis} in LOG and PLAN
    assert "STEP-MARK 1" in recs[1]["plan"]["turns"][0]["messages"][0]["content"]
    # hook writes land in the trace like the model's, and after_log sees LOG's ops
    assert recs[1]["writes"] == [["WRITE", ["status.txt", "step 1 after [['DONE', []]]"]]]
    assert agent.memory.read("status.txt") == "step 1 after [['DONE', []]]\n"


def test_slots_prompt_switch_repair_custom_op_and_memory_only(tmp_path, game):
    hooks = ("def before_plan(ctx):\n"
             "    return {'banner': 'BANNER %d' % ctx.step, 'prompt': 'plan_short' if ctx.step == 1 else None}\n"
             "def repair_action(ctx, action):\n    return 'Do' if action == 'do it' else None\n"
             "def custom_op(ctx, op):\n"
             "    ctx.write('APPEND', 'marks.txt', '|'.join(op.args))\n    return 'marked ' + op.args[0]\n")
    scaffold = hooked_scaffold(tmp_path, hooks, slots="[banner]", custom_ops="[MARK]")
    scaffold["ops"]["log"] = scaffold["ops"]["log"] + ["MARK"]
    scaffold["prompts"]["plan"] = "{banner}\n" + scaffold["prompts"]["plan"]
    scaffold["prompts"]["plan_short"] = "SHORT {banner} {observation}"
    replies = ["<|ACTION|>do it<|END|>", "<|MARK|>3,4|tree<|END|><|DONE|>", "<|ACTION|>Noop<|END|>"]
    agent, recs, _ = play(tmp_path, game, replies, scaffold=scaffold)
    assert recs[0]["plan"]["turns"][0]["messages"][0]["content"].startswith("BANNER 0\n" + game.instruction)
    assert recs[1]["plan"]["turns"][0]["messages"][0]["content"].startswith("SHORT BANNER 1 ")
    assert recs[1]["plan"]["template"] == "plan_short" and "template" not in recs[0]["plan"]
    assert recs[0]["repaired"] == ["do it", "Do"] and recs[0]["action"] == "Do" and recs[0]["valid"]
    assert recs[1]["log"]["turns"][0]["results"][0]["text"] == "marked 3,4"
    assert recs[1]["writes"] == [["APPEND", ["marks.txt", "3,4|tree"]]] and agent.memory.read("marks.txt") == "3,4|tree\n"
    # memory-only: programmatic context (before_plan here) off; repair and custom ops stay
    agent, recs, _ = play(tmp_path, game, replies, scaffold=scaffold, context="memory-only")
    assert "BANNER" not in recs[0]["plan"]["turns"][0]["messages"][0]["content"]
    assert recs[0]["action"] == "Do" and agent.memory.read("marks.txt") == "3,4|tree\n"


def test_custom_op_refusals_grammar_and_parsing(tmp_path, game):
    hooks = "def custom_op(ctx, op):\n    raise ValueError('x and y must be numbers')\n"
    scaffold = hooked_scaffold(tmp_path, hooks, custom_ops="[MARK]")
    scaffold["ops"]["log"] = scaffold["ops"]["log"] + ["MARK"]
    replies = ["<MARK>3,4|tree</MARK> <|ACTION|>Noop<|END|>",  # PLAN: not allowed; written without pipes, still parsed
               "<|MARK|>a,b|tree<|END|><|DONE|>", "<|ACTION|>Noop<|END|>"]
    agent, recs, _ = play(tmp_path, game, replies, scaffold=scaffold)
    refused = recs[0]["plan"]["turns"][0]["results"][0]
    assert not refused["ok"] and "MARK is not allowed here" in refused["text"]
    failed = recs[1]["log"]["turns"][0]["results"][0]
    assert failed == {"text": "[MARK] error: x and y must be numbers", "ok": False, "wrote": False, "redundant": False,
                      "matches": None}
    rules = agent.grammar("log", last=False)
    assert 'op-mark ::= "<|MARK|>" word ("|" text)? "<|END|>"' in rules


def test_log_runs_ops_written_after_done_and_a_reply_without_allowed_ops_ends(tmp_path, game):
    replies = ["<|ACTION|>Noop<|END|>", "<|DONE|> <|APPEND|>strategy.txt|after done<|END|>",
               "<|APPEND|>strategy.txt|not in PLAN<|END|>"]
    agent, recs, _ = play(tmp_path, game, replies)
    assert recs[1]["log"]["ended"] == "done" and agent.memory.read("strategy.txt") == "after done\n"
    assert recs[1]["plan"]["ended"] == "no_op" and len(recs[1]["plan"]["turns"]) == 1 and recs[1]["fallback"]


def test_fallback_is_the_scaffolds_where_the_task_has_it():
    scaffold = scaffold_spec.load_scaffold(ROOT / "scaffolds" / "minihack" / "v0")
    assert scaffold["fallback_action"] == "search"
    backend = llm.load("scripted", replies=["unused"])
    corridor = automem.Agent(scaffold, backend, envs.make("minihack", "MiniHack-Corridor-R3-v0"), "unused")
    maze = automem.Agent(scaffold, backend, envs.make("minihack", "MiniHack-MazeWalk-9x9-v0"), "unused")
    assert (corridor.fallback, maze.fallback) == ("search", "north")  # MazeWalk has no search: the env default


def test_two_model_split(tmp_path, game):
    memory_replies = ["<|SEARCH|>strategy.txt|tree<|END|>", "<|ACTION|>Sleep<|END|>",   # step 0 consult, action dropped
                      "<|APPEND|>strategy.txt|find trees<|END|><|DONE|>",                # step 1 LOG
                      "<|SEARCH|>strategy.txt|trees<|END|> <|ACTION|>Sleep<|END|>"]      # step 1 consult
    base_replies = ["<|ACTION|>Move East<|END|>", "<|ACTION|>Do<|END|>"]
    agent, recs, _ = play(tmp_path, game, base_replies, memory_llm=llm.load("scripted", replies=memory_replies))
    assert [r["action"] for r in recs] == ["Move East", "Do"]
    plan0, plan1 = recs[0]["plan"]["turns"], recs[1]["plan"]["turns"]
    assert [t["model"] for t in plan0] == ["memory", "memory", "base"] and plan0[1]["dropped_action"] == "Sleep"
    assert {t["model"] for t in recs[1]["log"]["turns"]} == {"memory"}
    # the base model continues the same chat, which holds the consultation's search result and a hand-off
    assert "[SEARCH strategy.txt|tree]" in plan0[1]["messages"][0]["content"]
    texts = agent.scaffold["texts"]
    assert plan0[1]["kept"] == texts["consult_done"] and plan0[2]["messages"] == [{"role": "user", "content": texts["handoff"]}]
    # a consultation that read and proposed in one reply: its results travel with the hand-off, the action tag is cut
    assert plan1[0]["kept"] == "<|SEARCH|>strategy.txt|trees<|END|>"
    assert plan1[1]["messages"][0]["content"].startswith(texts["handoff_results"].split("{results}")[0])
    assert "find trees" in plan1[1]["messages"][0]["content"]
    _, chat = list(trace_format.routine_runs({"system": ""}, recs[1]))[-1][1][-1]  # what the base model was sent
    assert chat[-2] == {"role": "assistant", "content": plan1[0]["kept"]}


@pytest.mark.slow
def test_two_model_split_on_transformers_keeps_the_action_call_base_only(tmp_path, game, lora_dir):
    """One SmolLM2 with a LoRA adapter: LOG replies come from the adapter and differ from the base
    model's; every committed-action call is byte-identical to a base-only model's on the same messages."""
    split = llm.load("transformers", adapters={"memory": lora_dir})
    scaffold = scaffold_spec.load_scaffold(CRAFTER_V0)
    scaffold["limits"].update(log_turns=1, plan_turns=3, max_tokens=16)
    scaffold["prompts"].update(log="Log with <|APPEND|>file|text<|END|>. {observation}",  # short: CPU time
                               plan="Use <|SEARCH|>file|word<|END|> and <|ACTION|>name<|END|>. {actions}\n{observation}")
    agent = automem.Agent(scaffold, split, game, tmp_path / "mem", memory_adapter="memory", seed=7)
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=2)
    header, recs, _ = trace_format.read_trace(tmp_path / "t.jsonl")
    base_only = llm.load("transformers")  # a second copy without adapters
    log_differs = base_calls = 0
    for r in recs:
        for routine, turn, messages in trace_format.model_calls(header, r):
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


@pytest.mark.parametrize("old,new,message", [  # scaffold.yaml with old replaced by new (old None: new appended)
    ("name: crafter-v0", "name: [unclosed", "line "),
    ("{prev_action}", "{oops}", "unknown placeholder"),
    ("  plan: [READ, SEARCH, TAIL, COUNT, ACTION]", "  plan: [READ]", "ACTION"),
    ("  log: [READ,", "  log: [FLY, READ,", "FLY"),
    ("\nops:\n", "\nops: [READ]\naliases:\n", "ops must be a mapping"),
    ("  log_turns: 10", "  log_turns: ten", "limits.log_turns must be a whole number"),
    ("  log_turns: 10", "  log_turns: 0", "limits.log_turns must be a whole number >= 1"),
    ("  strategy.txt: \"\"", "  strategy.txt: 5", "files.strategy.txt must be text"),
    ("  strategy.txt: \"\"", "  ../x.txt: \"\"", "bad file name '../x.txt'"),
    ("name: crafter-v0", "name: [a, b]", "name must be a non-empty string"),
    ("fallback_action: Noop", "fallback_action: Fly", "'Fly' is not a crafter action"),
    ("grammar: false", "grammar: false\nwhatever: 1", "unknown key"),
    (None, "\ntexts:\n  stuck: 'stuck {steps}'\n", "texts.stuck uses unknown placeholder"),
    (None, "\ntasks:\n  Boxoban: {fallback_action: Fly}\n", "tasks.Boxoban"),
    ("grammar: false", "grammar: maybe", "grammar must be true or false"),
])
def test_scaffold_validation(tmp_path, old, new, message):
    shutil.copytree(CRAFTER_V0, tmp_path / "s")
    path = tmp_path / "s" / "scaffold.yaml"
    text = path.read_text()
    assert old is None or old in text
    path.write_text(text + new if old is None else text.replace(old, new))
    with pytest.raises(ValueError, match=message):
        scaffold_spec.load_scaffold(tmp_path / "s")


@pytest.mark.slow
def test_grammar_makes_the_embedded_model_write_ops_and_valid_actions(tmp_path, game):
    scaffold = scaffold_spec.load_scaffold(CRAFTER_V0)
    scaffold["grammar"] = True
    scaffold["limits"].update(log_turns=2, plan_turns=2, max_tokens=48)
    agent = automem.Agent(scaffold, llm.load("llamacpp", n_ctx=4096), game, tmp_path / "mem")
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=3)
    _, recs, _ = trace_format.read_trace(tmp_path / "t.jsonl")
    assert all(not r["fallback"] and r["valid"] and r["action"] in game.actions for r in recs)
    for r in recs:
        for routine in ("log", "plan"):
            allowed = set(scaffold["ops"][routine]) | {"DONE", "ACTION"}
            turns = (r.get(routine) or {}).get("turns", [])
            assert all(turn["ops"] and {name for name, _ in turn["ops"]} <= allowed for turn in turns)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["window", "cot"])
def test_grammar_for_the_baselines(tmp_path, game, kind):
    scaffold = scaffold_spec.load_scaffold(CRAFTER_V0)
    scaffold["grammar"] = True
    scaffold["limits"]["max_tokens"] = 48
    agent = automem.Agent(scaffold, llm.load("llamacpp", n_ctx=4096), game, tmp_path / "mem", kind=kind)
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=2)
    _, recs, _ = trace_format.read_trace(tmp_path / "t.jsonl")
    assert all(r["valid"] and r["action"] in game.actions for r in recs)
    reply = recs[0]["plan"]["turns"][0]["reply"]
    assert reply == recs[0]["action"] if kind == "window" else reply.endswith("ACTION: " + recs[0]["action"])


def test_v0_scaffolds_are_the_authors_v0():
    for env in envs.ENVS:
        s = scaffold_spec.load_scaffold(ROOT / "scaffolds" / env / "v0")
        assert s["env"] == env and len(s["hash"]) == 12 and s["prompts"]["system"] == "" and not s["grammar"]
        assert s["ops"] == {"log": ["READ", "SEARCH", "TAIL", "COUNT", "APPEND", "WRITE", "CREATE", "DONE"],
                            "plan": ["READ", "SEARCH", "TAIL", "COUNT", "ACTION"]}  # no UPSERT, no UPSERT_MAP
        assert not s["search_all"] and not s["aliases"] and not s["custom_ops"] and s["limits"] == scaffold_spec.LIMITS
        assert s["fallback_action"] == {"crafter": "Noop"}.get(env, "search")
        assert set(s["hooks"]) == ({"repair_action"} if env == "crafter" else {"observe", "repair_action"})
        # LOG shows no instruction; PLAN opens with it (MiniHack/NetHack: the memory agent's own, inline)
        assert "{instruction}" not in s["prompts"]["log"] and ("{instruction}" in s["prompts"]["plan"]) == (env == "crafter")
    files = {env: scaffold_spec.load_scaffold(ROOT / "scaffolds" / env / "v0")["files"] for env in envs.ENVS}
    assert sorted(files["crafter"]) == ["actions_log.txt", "crafting_progress.txt", "map_notes.txt", "strategy.txt",
                                        "survival_log.txt"] and not any(files["crafter"].values())
    assert set(files["nethack"]) - set(files["minihack"]) == {"monster_encounters.txt"}
    for name, chars, lines in (("game_rules.txt", 3414, 33), ("nethack_symbols.txt", 1832, 65)):
        text = files["nethack"][name]  # our words, the authors' facts, about their length
        assert text == files["minihack"][name] and abs(len(text) - chars) < 0.15 * chars and text.count("\n") == lines


def test_repair_two_step():
    assert hook_helpers.repair_two_step("eat d") == "eat" and hook_helpers.repair_two_step("open north") == "open"
    assert hook_helpers.repair_two_step("far east") == "far east" and hook_helpers.repair_two_step(" north ") == "north"
    assert hook_helpers.repair_two_step("Move West") == "Move West" and hook_helpers.repair_two_step("far away") == "far away"


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
        scaffold = scaffold_spec.load_scaffold(scaffold_with_fallback(tmp_path / "fly", "Fly"))
        automem.Agent(scaffold, llm.load("scripted", replies=["<|DONE|>"]), game, tmp_path / "mem")
    scaffold = scaffold_spec.load_scaffold(scaffold_with_fallback(tmp_path / "do", "Do"))
    _, recs, _ = play(tmp_path, game, ["no action here"] * 10, steps=1, scaffold=scaffold)
    assert recs[0]["fallback"] and (recs[0]["action"], recs[0]["valid"]) == ("Do", True)


def test_map_analysis():
    text = "\n".join(["message:", "You see here a jackal.", "", "map:",
                      "  -----      ",
                      "  |.@>|   >  ",
                      "",                 # a blank row is skipped: the row below counts as south (their rule)
                      "  |+d}|      ",
                      "  -----      "])
    lines = hook_helpers.nle_map_analysis(text).split("\n")
    assert lines[0] == "MAP ANALYSIS (computed from the map):"
    assert "STAIRS NEXT TO YOU: east: '>' stairs down, step onto it!" in lines
    assert "STAIRS IN VIEW: '>' about 6 tiles east" in lines
    assert "MONSTERS NEXT TO YOU: south: 'd' (attack by moving into it)" in lines
    assert "DOORS: southwest: '+' closed door ('open' it)" in lines and "DANGER: southeast: '}' dangerous" in lines
    assert ("CAN MOVE: south (monster 'd'), east (stairs down '>'), west ('.'), southwest (door '+')") in lines
    assert "BLOCKED: north (wall '-'), northeast (wall '-'), northwest (wall '-')" in lines
    assert hook_helpers.nle_map_analysis("no map here") == ""


def test_reset_refuses_a_linked_memory_folder(tmp_path, game):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (tmp_path / "mem").symlink_to(outside, target_is_directory=True)
    agent = automem.Agent(scaffold_spec.load_scaffold(CRAFTER_V0), llm.load("scripted", replies=["x"]), game, tmp_path / "mem")
    with pytest.raises(ValueError, match="symbolic link"):
        agent.reset()
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]  # nothing deleted or written through the link


def test_a_failed_consultation_leaves_the_plan_to_the_base_model(tmp_path, game):
    def specialist_down(messages):
        raise llm.BackendError("openai backend: chat at http://127.0.0.1:6211/v1 failed after 3 attempts")
    agent, recs, _ = play(tmp_path, game, ["<|ACTION|>Do<|END|>"], steps=1,
                          memory_llm=llm.load("scripted", replies=specialist_down))
    plan = recs[0]["plan"]
    assert recs[0]["action"] == "Do" and [t["model"] for t in plan["turns"]] == ["base"]
    assert "127.0.0.1:6211/v1 failed after 3 attempts" in plan["consult_error"]
    # the base model answers the PLAN prompt itself: no hand-off message
    assert plan["turns"][0]["messages"][0]["content"].endswith(agent.scaffold["prompts"]["plan"][-40:])


def test_two_model_gates_check_only_the_base_models_commit(tmp_path, game):
    scaffold = hooked_scaffold(tmp_path, "def check_action(ctx, action):\n    return 'no sleeping' if action == 'Sleep' else None\n")
    agent, recs, _ = play(tmp_path, game, ["<|ACTION|>Sleep<|END|>", "<|ACTION|>Do<|END|>"], steps=1, scaffold=scaffold,
                          memory_llm=llm.load("scripted", replies=["<|ACTION|>Sleep<|END|>"]))
    plan = recs[0]["plan"]
    assert [t["model"] for t in plan["turns"]] == ["memory", "base", "base"] and plan["turns"][0]["dropped_action"] == "Sleep"
    # the specialist's Sleep is dropped unchecked; the base model's Sleep is sent back (turn 1), its Do commits
    assert [(g["action"], g["turn"]) for g in recs[0]["gate"]] == [("Sleep", 1)] and recs[0]["action"] == "Do"


def literal_strings(source):
    """The string constants of a Python source that are not docstrings: the texts its code can produce."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


@pytest.mark.parametrize("scaffold", ["crafter/v5", "minihack/v4", "nethack/v2"])
def test_converged_scaffolds_write_ascii_only(scaffold):
    """The converged scaffolds put ASCII where v0 had an em-dash, arrows or a warning sign: in every prompt and
    text of scaffold.yaml and every string hooks.py can write."""
    folder = ROOT / "scaffolds" / scaffold
    texts = [(folder / "scaffold.yaml").read_text()] + literal_strings((folder / "hooks.py").read_text())
    assert [t for t in texts if not t.isascii()] == []


def test_two_model_budgets_as_theirs(tmp_path, game):
    """At most plan_turns consultation calls, then at most plan_turns base calls on the same chat; a consultation
    that spends its calls hands over the chat as it stands (its last results shown, no hand-off text)."""
    scaffold = scaffold_spec.load_scaffold(CRAFTER_V0)
    scaffold["limits"]["plan_turns"] = 3
    reads = ["<|SEARCH|>strategy.txt|tree<|END|>"] * 3
    agent, recs, _ = play(tmp_path, game, reads * 2, steps=1, scaffold=scaffold, memory_llm=llm.load("scripted", replies=reads))
    turns = recs[0]["plan"]["turns"]
    assert [t["model"] for t in turns] == ["memory"] * 3 + ["base"] * 3 and recs[0]["fallback"]
    assert turns[3]["messages"][0]["content"] == scaffold["prompts"]["plan_continue"].format(
        results=turns[2]["results"][0]["text"], file_index=agent.memory.index())
    # a consultation that ends at once leaves the base model its plan_turns calls, no more
    agent, recs, _ = play(tmp_path, game, reads * 2, steps=1, scaffold=scaffold,
                          memory_llm=llm.load("scripted", replies=["no op here"]))
    assert [t["model"] for t in recs[0]["plan"]["turns"]] == ["memory"] + ["base"] * 3


@pytest.mark.parametrize("picked", ["plan_continue", "plan_missing", "log"])
def test_a_hook_picks_only_a_plan_template_the_scaffold_defines(tmp_path, game, picked):
    scaffold = hooked_scaffold(tmp_path, f"def before_plan(ctx):\n    return {{'prompt': {picked!r}}}\n")
    with pytest.raises(ValueError, match=f"picked prompt '{picked}'"):
        play(tmp_path, game, ["<|ACTION|>Noop<|END|>"], steps=1, scaffold=scaffold)
