"""scaffolds/nethack/v2 (the authors' converged nethack_v2, re-expressed): one test per mechanism on constructed
observations and contexts, then the scaffold's checks and 3 steps on real NetHack with the scripted backend."""
import importlib.util
import json
from pathlib import Path

import pytest

import automem
import envs
import hook_helpers
import jail
import llm
import memory_fs
import meta_loop
import scaffold_spec
import trace_format

ROOT = Path(__file__).resolve().parent.parent
V2 = ROOT / "scaffolds" / "nethack" / "v2"
module_spec = importlib.util.spec_from_file_location("nethack_v2_hooks", V2 / "hooks.py")
hooks = importlib.util.module_from_spec(module_spec)
module_spec.loader.exec_module(hooks)
SCAFFOLD = scaffold_spec.load_scaffold(V2)
STATUS_LINES = ("Agent the Plunderess           St:18/03 Dx:16 Co:16 In:7 Wi:8 Ch:6 Neutral S:0\n"
                "Dlvl:3 $:12 HP:7(11) Pw:2(2) AC:7 Xp:2/30 T:400 Hungry FoodPois Conf")


def context(tmp_path, text="", short="", step=0, actions=(), files=None):
    memory = memory_fs.MemoryFS(tmp_path / "mem", SCAFFOLD["files"] if files is None else files)
    obs = envs.Observation(text=text + "\n" + short, long=text, short=short)
    return automem.Context(step, obs, memory, game=None, actions=list(actions))


def op(text):
    [parsed] = memory_fs.parse_ops(text)
    return parsed


def map_text(rows):
    """An observation text whose map block holds `rows` (the player is '@')."""
    return "message:\n\nlanguage observation:\n\ncursor:\nYourself a barbarian\n(x=5, y=3)\n\nmap:\n" + "\n".join(rows)


# ----------------------------------------------------------------------------- UPSERT_MAP

def test_upsert_map_replaces_every_line_of_the_coordinate_and_appends_the_new_one(tmp_path):
    ctx = context(tmp_path, files={"dungeon_map.txt": "(3,4): old\n(1,1): wall\n(3,4):dup\n(3,41): other\n"
                                                      " (3,4): indented\n"})
    result = hooks.upsert_map(ctx, op("<|UPSERT_MAP|>( 3 , 4 )|floor | N:wall | E:door<|END|>"))
    assert "(3,4)" in result and "error" not in result
    assert ctx.memory.read("dungeon_map.txt") == ("(1,1): wall\n(3,41): other\n (3,4): indented\n"
                                                  "(3,4): floor | N:wall | E:door\n")
    hooks.upsert_map(ctx, op("<|UPSERT_MAP|>-2,7|stairs down\n"))  # unterminated; negative numbers are whole numbers
    assert ctx.memory.read("dungeon_map.txt").endswith("(3,4): floor | N:wall | E:door\n(-2,7): stairs down\n")


@pytest.mark.parametrize("body", ["x,4|floor", "3|floor", "3,4,5|floor", "3.5,4|floor", "3,4|  ", "3,4"])
def test_upsert_map_without_whole_coordinates_and_a_description_writes_nothing(tmp_path, body):
    ctx = context(tmp_path, files={"dungeon_map.txt": "(3,4): old\n"})
    with pytest.raises(ValueError, match="whole-number coordinates"):  # the agent turns it into an error result
        hooks.upsert_map(ctx, op(f"<|UPSERT_MAP|>{body}<|END|>"))
    assert ctx.memory.read("dungeon_map.txt") == "(3,4): old\n"


def test_upsert_map_creates_the_map_file_when_missing(tmp_path):
    ctx = context(tmp_path, files={})
    hooks.upsert_map(ctx, op("<|UPSERT_MAP|>1,2|door<|END|>"))
    assert ctx.memory.read("dungeon_map.txt") == "(1,2): door\n"


def test_ops_upsert_map_in_log_only_and_write_accepted_but_not_shown():
    assert SCAFFOLD["custom_ops"] == ["UPSERT_MAP"] and "UPSERT_MAP" in SCAFFOLD["ops"]["log"]
    assert "UPSERT_MAP" not in SCAFFOLD["ops"]["plan"] and "WRITE" in SCAFFOLD["ops"]["log"]
    log = SCAFFOLD["prompts"]["log"]
    assert "<|UPSERT_MAP|>x,y|description<|END|>" in log and "<|WRITE|>" not in log and "<|APPEND|>" in log


# ----------------------------------------------------------------------------- auto-pruning

@pytest.mark.parametrize("name,most,keep", [("actions_log.txt", 200, 100), ("strategy.txt", 60, 25),
                                            ("monster_encounters.txt", 150, 50)])
def test_prune_keeps_the_newest_lines_under_a_header(tmp_path, name, most, keep):
    lines = [f"entry {i}" for i in range(most + 1)]
    ctx = context(tmp_path, files={name: "\n".join(lines[:most]) + "\n"})
    hooks.prune(ctx)
    assert ctx.memory.read(name).count("\n") == most  # at the limit: untouched
    ctx = context(tmp_path, files={name: "\n".join(lines) + "\n"})
    hooks.prune(ctx)
    assert ctx.memory.read(name).split("\n")[:-1] == [f"[{most + 1 - keep} older entries pruned]"] + lines[-keep:]


# ----------------------------------------------------------------------------- status: slot and files

def test_read_status_and_the_game_status_block(tmp_path):
    ctx = context(tmp_path, text=STATUS_LINES, step=5, actions=["North", "eat", "D", "search", "far east", "west",
                                                                 "Up "])
    status = hooks.read_status(ctx.obs.text)
    assert status == {"dlvl": 3, "xp": 2, "gold": 12, "hp": 7, "hp_max": 11, "hunger": "Hungry",
                      "conditions": ["FoodPois", "Conf"]}
    assert hooks.game_status(ctx, status).split("\n") == [
        "=== GAME STATUS ===", "Dlvl:3 | HP:7/11 (63%) | Hunger:Hungry | Xp:2 | Step:5",
        "!!! CONDITIONS: FoodPois, Conf: deal with them now !!!",
        "Last actions: eat, d, search, far east, west, up", "Tiles explored: 0"]
    assert hooks.game_status(ctx, hooks.read_status("HP:3(0) Satiated Weak Dlvl:0")) == ""  # no level: no block
    zero = hooks.read_status("Dlvl:1 HP:3(0) Weak Satiated")
    assert zero["hunger"] == "Satiated" and "HP:3/0 (0%) | Hunger:Satiated | Step:5" in hooks.game_status(ctx, zero)
    assert hooks.read_status("Dlvl:1 unhungry")["hunger"] == "Normal"


def test_status_files_written_before_plan_at_step_0(tmp_path):
    ctx = context(tmp_path, text=STATUS_LINES, short="inventory:\na: a sword\n")
    slots = hooks.before_plan(ctx)
    assert ctx.memory.read("current_status.txt").split("\n")[1:-1] == [
        "Dungeon level: 3", "HP: 7/11", "Hunger: Hungry", "!!! CONDITIONS: FoodPois, Conf !!!", "Experience level: 2",
        "Gold: 12", "Step: 0", "Tiles explored: 0"]
    assert ctx.memory.read("inventory.txt").split("\n")[1:] == ["inventory:", "a: a sword", ""]
    assert slots["game_status"].startswith("=== GAME STATUS ===\nDlvl:3")
    actions = [f"step {i}" for i in range(12)]
    ctx = context(tmp_path, text="no status line", step=12, actions=actions)
    hooks.before_plan(ctx)
    status = ctx.memory.read("current_status.txt").split("\n")
    assert status[1:5] == ["Dungeon level: Unknown", "Hunger: Normal", "Step: 12", "Tiles explored: 0"]
    assert status[6:-1] == ["=== LAST ACTIONS ==="] + [f"  step {i}" for i in range(2, 12)]


def test_tiles_explored_reproduces_their_position_pattern(tmp_path):
    """Their pattern wants digits right after 'position'/'cursor'; the real cursor block never has them."""
    game = envs.make("nethack", max_steps=3)
    ctx = context(tmp_path)
    ctx.obs = game.reset(42)
    game.close()
    assert "(x=" in ctx.obs.text and "position" not in hooks.read_status(ctx.obs.text)
    hooks.track_position(ctx)
    assert ctx.episode["visited"] == set()
    ctx.obs = envs.Observation(text="Position: (3, 4) Dlvl:1", long="", short="")
    hooks.track_position(ctx)
    hooks.track_position(ctx)
    assert ctx.episode["visited"] == {(3, 4)} and "Tiles explored: 1" in hooks.game_status(ctx, {"dlvl": 1, **hooks.read_status(ctx.obs.text)})


# ----------------------------------------------------------------------------- stairs and oscillation

def test_stairs_notices_on_the_stairs_and_next_to_them():
    alert, reminder = hooks.stairs_notices("message:\nThere is a staircase down here.\n", "")
    assert "STAIRS DOWN" in alert and alert.endswith("\n\n") and "<|ACTION|>down<|END|>" in reminder
    assert reminder.startswith("\n\n")
    for rows, direction in ((["-----", "|..>.", "|.@..", "|....", "-----"], "northeast"),
                            (["-----", "|....", "|.@..", "|>...", "-----"], "southwest"),
                            (["-----", "|....", "|.@>.", "|....", "-----"], "east")):
        alert, reminder = hooks.stairs_notices(map_text(rows), hook_helpers.nle_map_analysis(map_text(rows)))
        assert f"1 TILE {direction.upper()} OF YOU" in alert and reminder.endswith(f"Go {direction} NOW.")
    # fixed: a '<' next to you and a '>' further away is not "1 tile" (theirs said so)
    rows = ["--------", "|.<....", "|.@....", "|.....>", "--------"]
    assert "'>' about 4 tiles" in hook_helpers.nle_map_analysis(map_text(rows))
    assert hooks.stairs_notices(map_text(rows), hook_helpers.nle_map_analysis(map_text(rows))) == ("", "")


def test_stairs_slots_open_and_close_the_plan_prompt():
    plan = SCAFFOLD["prompts"]["plan"]
    assert plan.startswith("{stairs_alert}You are playing NetHack.") and plan.endswith("to commit.{stairs_reminder}")
    assert plan.index("{notices}") < plan.index("{oscillation}\n{game_status}") < plan.index("{analysis}")


@pytest.mark.parametrize("recent,reversals", [
    (["north", "south", "north", "south"], 3),
    (["far east", "search", "far west", "far east", "wait", "far west"], 3),
    (["north", "south", "north", "east"], None),              # 2 reversals
    (["north", "south", "north"], None),                      # 3 moves
    (["far north", "south", "north", "far south", "north"], None),  # far only reverses far
    (["north", "south", "north", "south"] + ["search"] * 7, None),  # the first move left the last 10
    (["east", "west"] + ["search"] * 4 + ["east", "west", "east", "west"], 5),
])
def test_oscillation_warning(recent, reversals):
    warning = hooks.oscillation_warning(recent)
    moves = [a for a in recent[-10:] if a in hooks.BACK]
    assert (warning == "") == (reversals is None)
    if reversals:
        assert f"({reversals} reversals in your last {len(moves)} moves: {' -> '.join(moves[-6:])})" in warning


# ----------------------------------------------------------------------------- files, prompts, texts

def test_files_and_texts_of_v2():
    files = SCAFFOLD["files"]
    rules = files["game_rules.txt"]
    assert len(rules.splitlines()) == 41 and "[yn]" in rules and "'esc'" in rules and "'space'" in rules
    assert "Satiated" in rules and "fresh" in rules and "'quit'" in rules and "dungeon level 1" in rules
    strategy = files["strategy.txt"].splitlines()
    assert len(strategy) == 20 and "NAVIGATION NOTES" in strategy[15] and "LESSONS LEARNED" in strategy[18]
    assert "If HP < 15 and your last prayer is 300+ turns ago, pray." in files["strategy.txt"]
    assert files["current_status.txt"] == "" and files["inventory.txt"] == ""
    v0 = scaffold_spec.load_scaffold(ROOT / "scaffolds" / "nethack" / "v0")
    assert files["nethack_symbols.txt"] == v0["files"]["nethack_symbols.txt"]
    texts = SCAFFOLD["texts"]
    for name in ("unchanged", "stuck"):
        assert "'esc'" in texts[name] and "CRITICAL" not in texts[name]
    assert "'space'" in texts["stuck"]
    plan = SCAFFOLD["prompts"]["plan"]
    assert "before you commit to an action, search" not in plan.lower() and "Think step by step" not in plan
    ladder = ["a. Stairs down", "b. FoodPois or Ill", "c. HP dangerously low (<15)", "d. Hungry/Weak/Fainting",
              "e. Satiated", "3. With nothing urgent", "4. BEFORE you commit"]
    assert [plan.index(step) for step in ladder] == sorted(plan.index(step) for step in ladder)
    assert "current_status.txt and inventory.txt are rewritten by the program at every step" in plan


def test_log_rules_and_instruction_additions_of_v2():
    """The prompt rules v2 added (reference §3.3): a tripwire for each, as these mechanisms are text the model reads."""
    log, plan = SCAFFOLD["prompts"]["log"], SCAFFOLD["prompts"]["plan"]
    assert "Only FIXED terrain goes there" in log and "Never monsters or pets" in log  # the map holds terrain only
    assert "ALWAYS record them in dungeon_map.txt AND append them to strategy.txt" in log  # '>' in both files
    assert "Append to it ONLY when you learn something really new and important" in log  # strategy: big insights only
    assert "Log only meetings with HOSTILE monsters" in log and "tame pet" in log
    assert "NOTHING worth noting happened" in log and "output <|DONE|> at once" in log  # quick DONE after a dull move
    assert "ANSWERS TO MENUS AND PROMPTS: esc" in plan and "y, n, 0-9" in plan  # menus and yes/no questions
    assert "old or rotten corpses POISON and KILL you" in plan and "NEVER eat while" in plan  # corpse safety
    assert "When FoodPois or Ill shows, quaff a healing potion or pray at once" in plan
    assert "find the stairs down '>' and get as deep as you can" in plan  # descend at once


def test_repair_is_v0s():
    assert hooks.repair_action(None, "eat d") == "eat" and hooks.repair_action(None, "far east") == "far east"


# ----------------------------------------------------------------------------- the scaffold as a whole

def test_loads_and_passes_the_loops_checks():
    meta_loop.check_schema(V2, "nethack")
    jail.check_source((V2 / "hooks.py").read_text())
    assert set(SCAFFOLD["hooks"]) == {"observe", "after_log", "before_plan", "custom_op", "repair_action"}
    meta = json.loads((V2 / "meta.json").read_text())
    assert meta["parent"] == "v0" and meta["version"] == "v2" and meta["hash"] == SCAFFOLD["hash"]


def scripted_replies():
    """LOG: two UPSERT_MAPs of one tile and a WRITE; PLAN: a refused UPSERT_MAP and a read, then an action."""
    actions = iter(["open north", "esc", "west"])

    def reply(messages):
        if messages[0]["content"].startswith("You are playing a game and keeping"):  # LOG
            return ("<|UPSERT_MAP|>47,18|floor | door east<|END|><|WRITE|>notes.txt|seen<|END|>"
                    "<|UPSERT_MAP|>47,18|floor, start<|END|><|DONE|>")
        if len(messages) == 1:
            return "<|UPSERT_MAP|>1,1|not in PLAN<|END|><|READ|>strategy.txt<|END|>"
        return f"<|ACTION|>{next(actions)}<|END|>"
    return reply


@pytest.mark.parametrize("context_mode", ["full", "memory-only"])
def test_plays_3_steps_on_nethack(tmp_path, context_mode):
    game = envs.make("nethack", max_steps=10)
    agent = automem.Agent(SCAFFOLD, llm.load("scripted", replies=scripted_replies()), game, tmp_path / "mem",
                          context=context_mode)
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=3)
    game.close()
    header, recs, end = trace_format.read_trace(tmp_path / "t.jsonl")
    assert [r["action"] for r in recs] == ["open", "esc", "west"] and recs[0]["repaired"] == ["open north", "open"]
    assert "error" in recs[0]["plan"]["turns"][0]["results"][0]["text"]  # UPSERT_MAP is LOG's only
    memory = end["memory"]
    assert memory["dungeon_map.txt"] == "(47,18): floor, start\n" and memory["notes.txt"] == "seen\n"
    plan0 = recs[0]["plan"]["turns"][0]["messages"][0]["content"]
    status_writes = [w for w in recs[0]["writes"] if w[1][0] in ("current_status.txt", "inventory.txt")]
    if context_mode == "full":
        assert "log" not in recs[0] and [w[1][0] for w in status_writes] == ["current_status.txt", "inventory.txt"]
        assert "=== GAME STATUS ===\nDlvl:1 | HP:" in plan0 and "| Step:0\nTiles explored: 0" in plan0
        assert "MAP ANALYSIS" in plan0 and plan0.startswith("You are playing NetHack")
        assert "Step: 2" in memory["current_status.txt"] and memory["current_status.txt"].endswith("  open\n  esc\n")
        assert memory["inventory.txt"].split("\n")[1:3] == ["inventory:", "a: a +0 two-handed sword (weapon in hands)"]
    else:  # programmatic context off: no status files, no slots; the custom op and the repair stay
        assert status_writes == [] and memory["current_status.txt"] == "" and memory["inventory.txt"] == ""
        assert "=== GAME STATUS ===" not in plan0 and "MAP ANALYSIS (computed" not in plan0
        assert plan0.startswith("You are playing NetHack") and plan0.endswith("to commit.")


def test_two_model_hand_off_texts(tmp_path):
    game = envs.make("nethack", max_steps=1)
    memory_model = llm.load("scripted", replies=["<|SEARCH|>strategy.txt|stairs<|END|><|ACTION|>down<|END|>"])
    agent = automem.Agent(SCAFFOLD, llm.load("scripted", replies=["<|ACTION|>search<|END|>"]), game,
                          tmp_path / "mem", memory_llm=memory_model)
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=1)
    game.close()
    turns = trace_format.read_trace(tmp_path / "t.jsonl")[1][0]["plan"]["turns"]
    assert turns[0]["dropped_action"] == "down" and turns[1]["model"] == "base"
    handoff = turns[1]["messages"][0]["content"]
    assert handoff.startswith("What your searches returned:\n[SEARCH strategy.txt|stairs]")
    assert handoff.endswith("Now commit your action.\nYou may send more SEARCH/READ/TAIL/COUNT commands first, "
                            "or commit with <|ACTION|>your_action<|END|>.")
