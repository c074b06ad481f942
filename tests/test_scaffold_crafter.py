"""crafter v5 (the authors' converged crafter_v5, re-expressed): one test per mechanism of reference §3.1 on
observations built with the env's own text function, then the scaffold on real Crafter with the scripted backend
(full and memory-only context, two-model hand-off)."""
import importlib.util
import json
import re
import string
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest

import automem
import envs
import jail
import llm
import memory_fs
import meta_loop
import scaffold_spec
import trace_format

V5 = Path(__file__).resolve().parent.parent / "scaffolds" / "crafter" / "v5"
SCAFFOLD = scaffold_spec.load_scaffold(V5)
spec = importlib.util.spec_from_file_location("crafter_v5_hooks", V5 / "hooks.py")
H = importlib.util.module_from_spec(spec)
spec.loader.exec_module(H)


def observation(inventory=None, status=None, things=(), front="grass"):
    """An observation as envs makes it: grass all around, `things` = (name, dx, dy) with dy < 0 north and dx > 0
    east; the player faces south onto `front`. The text comes from envs._crafter_texts, the state alongside."""
    ids = envs.CRAFTER_IDS
    semantic = np.full((20, 20), ids.index("grass"))
    semantic[10, 10] = ids.index("player")
    semantic[10, 11] = ids.index(front)
    for name, dx, dy in things:
        semantic[10 + dx, 10 + dy] = ids.index(name)
    status = {**dict.fromkeys(envs.VITALS, 9), **(status or {})}
    inventory = dict(inventory or {})
    long, short = envs._crafter_texts(semantic, (10, 10), (0, 1), {**status, **inventory}, False, False)
    return envs.Observation(text=long + "\n" + short, long=long, short=short,
                            state={"inventory": inventory, "status": status})


def context(tmp_path, obs, step=1, prev=None, files=None):
    memory = memory_fs.MemoryFS(tmp_path / "mem", SCAFFOLD["files"] if files is None else files)
    game = SimpleNamespace(actions=list(envs.CRAFTER_ACTIONS), task="default", env="crafter")
    return automem.Context(step, obs, memory, game, prev_action=prev, prev_executed=prev)


# ----------------------------------------------------------------------------- data: files, prompts, limits

def test_files_hold_their_facts_without_the_authors_slips():
    files = SCAFFOLD["files"]
    assert sorted(files) == ["actions_log.txt", "game_knowledge.txt", "goals.txt", "observations.txt", "progress.txt"]
    assert files["observations.txt"] == files["actions_log.txt"] == ""
    know = files["game_knowledge.txt"]
    assert [int(n) for n in re.findall(r"^TIER (\d)", know, re.M)] == list(range(1, 9))
    for line in ("Place Table: spends 2 wood", "Place Furnace: spends 4 stone", "Place Stone: spends 1 stone",
                 "Make Wood Pickaxe: spends 1 wood", "Make Stone Pickaxe: next to a table; spends 1 wood + 1 stone",
                 "Make Iron Pickaxe: next to both; spends 1 wood + 1 coal + 1 iron", "3 wood or more BEFORE",
                 "With 4 wood", "under 3/9"):
        assert line in know
    assert re.search(r"Collect Sapling: face a grass tile .* 1 try in 10", know)  # theirs: from trees
    assert "grass, sand or path" in re.search(r"Place Table:.*", know).group()  # theirs: grass only
    assert len(re.findall(r"^  (\d+)\. ", know, re.M)) == 10  # the 10-step opening
    goals = files["goals.txt"].splitlines()
    assert [g.split(":")[0] for g in goals] == ["CURRENT GOAL", "NEXT GOALS", "PREREQUISITES FOR CURRENT GOAL",
                                                "ACHIEVEMENTS UNLOCKED", "RECENT FAILURES"]
    assert "4 or more" in goals[0] and "Place Table -> " not in goals[1] and "Wood Pickaxe" in goals[1]
    progress = files["progress.txt"].splitlines()
    assert len(progress) == 24 and sorted(p[4:] for p in progress[2:]) == sorted(envs.CRAFTER_ACHIEVEMENT_NUMBER)
    assert all(p.startswith("[ ] ") for p in progress[2:])


def test_prompts_limits_and_texts():
    prompts, limits = SCAFFOLD["prompts"], SCAFFOLD["limits"]
    assert prompts["system"] == "" and SCAFFOLD["fallback_action"] == "Noop"
    assert (limits["log_turns"], limits["plan_turns"], limits["gate_retries"], limits["stuck_after"]) == (10, 10, 2, 3)
    plan = prompts["plan"]
    for action, cost in H.COSTS.items():  # the opening rules list each action with what it spends
        line = re.search(rf"^  {action}: .*$", plan, re.M).group()
        assert all(f"{n} {item}" in line for item, n in cost.items()), line
    assert "22 ACHIEVEMENTS" in plan and "below 3" in plan and "grass, sand or path" in plan
    assert "four moves" in plan and "3/9 or below" in plan and "game_knowledge.txt" in plan
    rules = prompts["log"].split("RULES FOR CRAFTER:")[1]
    assert re.findall(r"^(\d)\. ", rules, re.M) == list("456789") and "under 25 lines" in rules
    assert "WRITE goals.txt" in rules and "[X]" in rules
    assert "Search results:\n{results}" in SCAFFOLD["texts"]["handoff_results"]


def order(template, markers):
    """Where each marker first appears in the template filled with its slots named <slot>."""
    names = {field for text, field, spec, conv in string.Formatter().parse(template) if field}
    text = template.format(**{n: f"<{n}>" for n in names})
    return [text.index(m) for m in markers]


def test_slot_orders_of_log_and_plan():
    log = ["<prev_action>", "<notices>", "<inventory_changes>", "<craft_failure>", "<threat>", "<vitals>",
           "SPATIAL AWARENESS", "<analysis>", "<observation>", "<file_index>", "<compaction>", "COMMANDS YOU CAN USE",
           "RULES THAT MATTER", "RULES FOR CRAFTER"]
    plan = ["You are playing Crafter", "external memory", "SPATIAL AWARENESS", "<notices>", "<vitals>", "<threat>",
            "<repetition>", "<craft_context>", "<tech_tree>", "<stagnation>", "<noops>", "<analysis>",
            "YOUR CURRENT GOALS:\n<goals>", "<file_index>", "<observation>", "HOW TO PROCEED",
            "RULES FOR PLANNING", "COMMANDS YOU CAN USE"]
    for template, markers in ((SCAFFOLD["prompts"]["log"], log), (SCAFFOLD["prompts"]["plan"], plan)):
        where = order(template, markers)
        assert where == sorted(where), [m for m, w in sorted(zip(markers, where), key=lambda x: x[1])]


# ----------------------------------------------------------------------------- observation parsing

def test_things_in_view_come_from_the_text_and_the_tile_in_front():
    obs = observation(things=[("tree", -2, -1), ("zombie", 3, 0)], front="water")
    seen = H.things_in_view(obs)
    assert ("tree", 3, "north-west") in seen and ("zombie", 3, "east") in seen
    assert seen[-1] == ("water", 0, "in front") and H.nearest(obs)["water"] == (0, "in front")


# ----------------------------------------------------------------------------- notices

@pytest.mark.parametrize("status, expected", [
    ({"health": 2}, ["CRITICAL: health is 2/9"]), ({"health": 4}, ["WARNING: health is 4/9"]), ({"health": 5}, []),
    ({"food": 1}, ["CRITICAL: food is 1/9"]), ({"food": 3}, ["WARNING: food is 3/9"]), ({"food": 4}, []),
    ({"drink": 1}, ["CRITICAL: drink is 1/9"]), ({"drink": 3}, ["WARNING: drink is 3/9"]), ({"drink": 4}, []),
    ({"energy": 0}, []), ({"health": 1, "food": 2, "drink": 0},
                          ["CRITICAL: health is 1/9", "WARNING: food is 2/9", "CRITICAL: drink is 0/9"]),
])
def test_vital_urgency_thresholds(status, expected):
    lines = H.vital_urgency(observation(status=status)).splitlines()[1:]
    assert len(lines) == len(expected) and all(line.startswith(e) for line, e in zip(lines, expected)), lines


def test_inventory_changes_against_the_previous_step():
    assert H.inventory_changes({}, {"wood": 1}) == ""  # the previous inventory was empty
    assert H.inventory_changes({"wood": 1}, {"wood": 1}) == ""
    text = H.inventory_changes({"wood": 3, "sapling": 1}, {"wood": 1, "sapling": 1, "wood_pickaxe": 1})
    assert text.splitlines()[1:3] == ["LOST: -2 wood (now 1)", "GAINED: +1 wood_pickaxe (now 1)"]
    assert "PROVES" in text
    assert H.inventory_changes({"sapling": 1, "wood": 1}, {"wood": 1}).splitlines()[1] == "LOST: -1 sapling (now 0)"


def test_craft_failure_notice_counts_until_a_craft_works():
    episode = {}
    assert H.craft_failure_notice(episode, "Make Wood Pickaxe", changed=False).startswith("=== CRAFT FAILED ===")
    assert H.craft_failure_notice(episode, "Move West", changed=False) == ""  # does not reset the count
    second = H.craft_failure_notice(episode, "Make Wood Sword", changed=False)
    assert second.startswith("=== CRAFT FAILED (attempt 2) ===") and "place a NEW table" in second
    assert H.craft_failure_notice(episode, "Make Wood Sword", changed=True) == "" and episode["craft_fails"] == 0
    assert H.craft_failure_notice(episode, "Make Wood Sword", changed=False).startswith("=== CRAFT FAILED ===")
    assert H.craft_failure_notice(episode, None, changed=True) == ""


@pytest.mark.parametrize("things, front, health, last, expected", [
    ([("zombie", 0, -2)], "grass", 4, None, ["THREAT: zombie 2 step(s) north"]),
    ([("zombie", 0, -2)], "grass", 3, None, ["CRITICAL: zombie 2 step(s) north, RUN NOW"]),
    ([], "zombie", 9, None, ["THREAT: zombie 1 step(s) south", "THREAT: zombie 0 step(s) in front"]),  # listed twice
    ([("zombie", 0, -3)], "grass", 9, None, []),
    ([("skeleton", 4, 0)], "grass", 9, None, ["CAUTION: skeleton 4 steps east"]),
    ([("skeleton", 4, 1)], "grass", 9, None, []),
    ([("arrow", 2, 0)], "grass", 9, None, ["ARROW INCOMING 2 step(s) east"]),
    ([("arrow", 3, 0)], "grass", 9, None, []),
    ([], "grass", 5, 7, ["YOU LOST 2 HEALTH last step (now 5/9)"]),
    ([], "grass", 7, 7, []),
])
def test_threat_warning(things, front, health, last, expected):
    lines = H.threat_warning(observation(status={"health": health}, things=things, front=front), last).splitlines()[1:]
    assert len(lines) == len(expected) and all(line.startswith(e) for line, e in zip(lines, expected)), lines


def test_repetition_warning_over_the_last_pairs():
    fail, ok = False, True
    assert H.repetition_warning([]) == ""
    alert = H.repetition_warning([["Do", fail]] * 3)
    assert alert.startswith("=== REPETITION ALERT ===") and "3 of its last 3" in alert
    assert H.repetition_warning([["Do", fail]] * 2) == ""
    assert H.repetition_warning([["Make Wood Pickaxe", fail]] * 3).startswith("=== CRAFTING KEEPS FAILING ===")
    assert H.repetition_warning([["Do", fail]] * 3 + [["Do", ok]] * 8) == ""  # only the last 8 count
    assert H.repetition_warning([["Do", fail]] * 3 + [["Do", ok]] * 5).startswith("=== REPETITION ALERT")
    assert H.repetition_warning([["Do", fail]] * 3 + [["Do", ok]] * 6).startswith("=== REPETITION WARNING")
    warn = H.repetition_warning([["Do", fail]] * 2 + [["Do", ok]] * 3)
    assert warn.startswith("=== REPETITION WARNING ===") and "5 times, 2 of them" in warn
    assert H.repetition_warning([["Do", fail]] * 2 + [["Do", ok]] * 2) == ""
    back_and_forth = [["Move West", ok], ["Move East", ok]] * 3
    assert H.repetition_warning(back_and_forth).startswith("=== STUCK WARNING ===")
    assert H.repetition_warning(back_and_forth[1:]) == ""  # fewer than 6 pairs
    assert H.repetition_warning(back_and_forth[:4] + [["Do", ok], ["Move East", ok]]) == ""  # 5 moves, 3 distinct
    assert H.repetition_warning([["Move West", ok]] * 4 + [["Do", ok]] * 2) == ""  # 4 moves
    assert H.repetition_warning([["Move West", ok]] * 5 + [["Do", ok]]).startswith("=== STUCK WARNING")
    assert H.remember_action([["Do", ok]] * 20, "Noop", fail) == [["Do", ok]] * 19 + [["Noop", fail]]  # last 20


def test_craft_context():
    table = observation(inventory={"wood": 1}, things=[("table", 1, 0)])
    assert H.craft_context(table, "Place Table", True).startswith("=== TABLE JUST PLACED ===")
    assert H.craft_context(table, "Place Furnace", True).startswith("=== FURNACE JUST PLACED ===")
    assert H.craft_context(table, "Place Table", False).endswith("you can make: Make Wood Pickaxe, Make Wood Sword")
    stone = observation(inventory={"wood": 2, "stone": 1, "wood_pickaxe": 1, "wood_sword": 1}, things=[("table", 1, 0)])
    assert H.craft_context(stone, "Do", True).endswith("you can make: Make Stone Pickaxe, Make Stone Sword")
    done = observation(inventory={"wood": 2, "stone_pickaxe": 1, "stone_sword": 1}, things=[("table", 1, 0)])
    assert H.craft_context(done, "Do", True) == ""
    iron = observation(inventory={"wood": 1, "stone": 1, "iron_pickaxe": 1, "iron_sword": 1}, things=[("table", 1, 0)])
    assert H.craft_context(iron, "Do", True) == ""
    assert H.craft_context(observation(inventory={"wood": 1}), "Do", True) == ""  # no table in view


EASY_SLEEP = "EASY WINS: Sleep, to earn Wake Up (a free achievement)"


def tree(inventory, things=(), front="grass", status=None, done=()):
    """The planner's lines after its heading."""
    return H.tech_tree_status(observation(inventory, status, things, front), list(done)).splitlines()[1:]


@pytest.mark.parametrize("inventory, things, front, expected", [
    # no pickaxe
    ({}, [("tree", 0, -2)], "grass", ["TOOLS: None", "NEXT: Collect wood (Do on a tree): 4 more needed",
                                      "  -> Nearest tree: 2 step(s) north"]),
    ({"wood": 2}, [], "tree", ["TOOLS: None", "MATERIALS: wood:2", "NEXT: Collect wood (Do on a tree): 2 more needed",
                               "  -> Tree right in front of you: Do NOW"]),
    ({"wood": 1}, [], "grass", ["TOOLS: None", "MATERIALS: wood:1", "NEXT: Collect wood (Do on a tree): 3 more needed",
                                "  -> No tree in view: explore to find some"]),
    ({"wood": 3}, [], "grass", ["TOOLS: None", "MATERIALS: wood:3", "NEXT: Place Table (2 wood, 1 left for the "
                                "pickaxe). Better: get 1 more wood first, for the sword too!"]),
    ({"wood": 4}, [], "grass", ["TOOLS: None", "MATERIALS: wood:4", "NEXT: Place Table (face grass, sand or path; 2 "
                                "wood), then Make Wood Pickaxe and Make Wood Sword!"]),
    ({"wood": 3}, [("table", 1, 0)], "grass", ["TOOLS: None", "MATERIALS: wood:3",
                                               "NEXT: >>> Make Wood Pickaxe NOW (a table is in view, you hold 3 wood) <<<"]),
    # a pickaxe, no sword
    ({"wood_pickaxe": 1, "wood": 1}, [("table", 1, 0)], "grass",
     ["TOOLS: Wood Pickaxe", "MATERIALS: wood:1", "NEXT: >>> Make Wood Sword NOW (a table is in view, you hold 1 wood) <<<",
      EASY_SLEEP]),
    ({"wood_pickaxe": 1, "wood": 3}, [], "grass",
     ["TOOLS: Wood Pickaxe", "MATERIALS: wood:3", "NEXT: Place Table (2 wood), then Make Wood Sword (1 wood)", EASY_SLEEP]),
    ({"wood_pickaxe": 1, "wood": 2}, [], "tree",
     ["TOOLS: Wood Pickaxe", "MATERIALS: wood:2",
      "NEXT: Find a table, or collect 1 more wood to place a new table and make the sword",
      "  -> Nearest tree: 0 step(s) in front", EASY_SLEEP]),
    ({"wood_pickaxe": 1}, [], "grass", ["TOOLS: Wood Pickaxe", "NEXT: Collect wood (3 needed: 2 for a table, 1 for the "
                                        "sword)", EASY_SLEEP]),
    # wood pickaxe and a sword
    ({"wood_pickaxe": 1, "wood_sword": 1, "wood": 2, "stone": 2}, [("table", 1, 0)], "grass",
     ["TOOLS: Wood Pickaxe, Wood Sword", "MATERIALS: wood:2, stone:2", "NEXT: >>> Make Stone Pickaxe NOW: a table is "
      "in view, you hold 2 wood + 2 stone <<< Then Make Stone Sword!", "EASY WINS: Sleep, to earn Wake Up (a free "
      "achievement); Place Stone (face grass, sand or path): a free achievement"]),
    ({"wood_pickaxe": 1, "wood_sword": 1, "wood": 1, "stone": 1}, [("table", 1, 0)], "grass",
     ["TOOLS: Wood Pickaxe, Wood Sword", "MATERIALS: wood:1, stone:1", "NEXT: >>> Make Stone Pickaxe NOW: a table is "
      "in view, you hold 1 wood + 1 stone <<<", "EASY WINS: Sleep, to earn Wake Up (a free achievement); Place Stone "
      "(face grass, sand or path): a free achievement"]),
    ({"wood_pickaxe": 1, "wood_sword": 1, "wood": 1}, [("stone", -3, 0)], "grass",
     ["TOOLS: Wood Pickaxe, Wood Sword", "MATERIALS: wood:1", "NEXT: Mine stone (face stone, Do; the Wood Pickaxe is "
      "enough)", "  -> Nearest stone: 3 step(s) west", EASY_SLEEP]),
    ({"wood_pickaxe": 1, "wood_sword": 1, "wood": 2, "stone": 1}, [], "grass",
     ["TOOLS: Wood Pickaxe, Wood Sword", "MATERIALS: wood:2, stone:1", "NEXT: Place Table (face grass, sand or path; "
      "2 wood) to make the Stone Pickaxe", "  -> Grass in front: place the table now!",
      "EASY WINS: Sleep, to earn Wake Up (a free achievement); Place Stone (face grass, sand or path): a free achievement"]),
    ({"wood_pickaxe": 1, "wood_sword": 1, "stone": 1}, [("table", 1, 0), ("tree", 0, 3)], "grass",
     ["TOOLS: Wood Pickaxe, Wood Sword", "MATERIALS: stone:1", "NEXT: Collect wood to craft with (1 or more for the "
      "Stone Pickaxe)", "  -> Nearest tree: 3 step(s) south",
      "EASY WINS: Sleep, to earn Wake Up (a free achievement); Place Stone (face grass, sand or path): a free achievement"]),
    # stone pickaxe
    ({"stone_pickaxe": 1, "wood_sword": 1, "stone": 4, "wood": 1}, [("table", 1, 0)], "grass",
     ["TOOLS: Stone Pickaxe, Wood Sword", "MATERIALS: wood:1, stone:4", "NEXT: Place Furnace (face grass, sand or "
      "path; 4 stone, you hold 4), and put it NEAR the table!", "ALSO: Make Stone Sword (the materials are in hand, a "
      "table is in view)", EASY_SLEEP + "; Place Stone (face grass, sand or path): a free achievement"]),
    ({"stone_pickaxe": 1, "wood_sword": 1, "stone": 1, "wood": 1}, [("table", 1, 0)], "grass",  # the sword's least
     ["TOOLS: Stone Pickaxe, Wood Sword", "MATERIALS: wood:1, stone:1", "NEXT: Mine 3 more stone for the furnace (it "
      "costs 4 stone, you hold 1)", "  -> No stone in view: explore to find some", "ALSO: Make Stone Sword (the "
      "materials are in hand, a table is in view)", EASY_SLEEP + "; Place Stone (face grass, sand or path): a free "
      "achievement"]),
    ({"stone_pickaxe": 1, "stone_sword": 1, "stone": 1}, [], "stone",
     ["TOOLS: Stone Pickaxe, Stone Sword", "MATERIALS: stone:1", "NEXT: Mine 3 more stone for the furnace (it costs 4 "
      "stone, you hold 1)", "  -> Stone right in front of you: Do NOW",
      "EASY WINS: Sleep, to earn Wake Up (a free achievement); Place Stone (face grass, sand or path): a free achievement"]),
    ({"stone_pickaxe": 1, "stone_sword": 1, "coal": 1, "wood": 1}, [("table", 1, 0), ("furnace", -1, 0)], "grass",
     ["TOOLS: Stone Pickaxe, Stone Sword", "MATERIALS: wood:1, coal:1", "NEXT: Mine iron (face iron, Do; the Stone "
      "Pickaxe is enough)", "  -> No iron in view: explore to find some",
      EASY_SLEEP]),
    ({"stone_pickaxe": 1, "stone_sword": 1, "iron": 1, "wood": 1}, [("furnace", -1, 0), ("coal", 2, 2)], "grass",
     ["TOOLS: Stone Pickaxe, Stone Sword", "MATERIALS: wood:1, iron:1", "NEXT: Mine coal (face coal, Do; any pickaxe)",
      "  -> Nearest coal: 4 step(s) south-east", EASY_SLEEP]),
    ({"stone_pickaxe": 1, "stone_sword": 1, "iron": 1, "coal": 1, "wood": 1}, [("furnace", -1, 0)], "grass",
     ["TOOLS: Stone Pickaxe, Stone Sword", "MATERIALS: wood:1, coal:1, iron:1",
      "NEXT: Collect wood (2 for a table) to set up iron crafting", "EASY WINS: Sleep, to earn Wake Up (a free "
      "achievement)"]),
    ({"stone_pickaxe": 1, "stone_sword": 1, "iron": 2, "coal": 2, "wood": 2}, [("furnace", -1, 0), ("table", 1, 0)],
     "grass", ["TOOLS: Stone Pickaxe, Stone Sword", "MATERIALS: wood:2, coal:2, iron:2", "NEXT: >>> Make Iron Pickaxe "
               "NOW: a table and a furnace are in view, you hold 2 wood + 2 coal + 2 iron <<< Then Make Iron Sword!",
               EASY_SLEEP]),
    # iron pickaxe
    ({"iron_pickaxe": 1, "stone_sword": 1, "iron": 1, "coal": 1, "wood": 1}, [("furnace", -1, 0), ("table", 1, 0),
                                                                            ("diamond", 0, -3)], "grass",
     ["TOOLS: Iron Pickaxe, Stone Sword", "MATERIALS: wood:1, coal:1, iron:1", "NEXT: Mine diamond (face diamond, Do; "
      "the Iron Pickaxe is enough)", "  -> Nearest diamond: 3 step(s) north", "ALSO: Make Iron Sword (the materials "
      "are in hand, a table and a furnace are in view)", EASY_SLEEP]),
])
def test_tech_tree_ladder(inventory, things, front, expected):
    assert tree(inventory, things, front) == expected


def test_tech_tree_easy_wins():
    held = {"wood_pickaxe": 1, "wood_sword": 1, "stone": 1, "sapling": 1}
    wins = lambda lines: lines[-1].removeprefix("EASY WINS: ").split("; ")
    assert [w.split(" ")[1] for w in wins(tree(held))] == ["to", "Stone"]  # Sleep, Place Stone: 2 at most
    assert wins(tree(held, done=["Sleep"]))[1] == "Place Plant (face grass): it grows into food"
    assert len(wins(tree(held, done=["Sleep", "Place Stone", "Place Plant"], things=[("water", 2, 0)],
                         status={"drink": 6}))) == 1
    assert wins(tree(held, done=["Sleep", "Place Stone", "Place Plant"], things=[("water", 2, 0)],
                     status={"drink": 6})) == ["Collect Drink: water 2 step(s) east"]
    assert not tree(held, done=["Sleep", "Place Stone", "Place Plant"], things=[("water", 2, 0)],
                    status={"drink": 7})[-1].startswith("EASY WINS")
    assert not tree({"sapling": 0, "stone": 1})[-1].startswith("EASY WINS")  # no pickaxe: no Sleep, no Place Stone


def test_stagnation_counts_steps_without_a_gain():
    assert H.count_idle(7, {}, {"wood": 1}) == H.count_idle(7, {}, {}) == 0  # the previous inventory was empty
    assert H.count_idle(7, {"wood": 1}, {"wood": 2}) == 0
    assert H.count_idle(7, {"wood": 2}, {"wood": 1, "wood_pickaxe": 1}) == 0
    assert H.count_idle(7, {"wood": 2}, {"wood": 1}) == 8
    assert H.stagnation_warning(29) == ""
    assert H.stagnation_warning(30).startswith("=== STAGNATION WARNING (30 steps")
    assert H.stagnation_warning(49).startswith("=== STAGNATION WARNING")
    assert H.stagnation_warning(50).startswith("=== CRITICAL STAGNATION (50 steps")


def test_noop_streak_warning():
    assert [H.count_noops(3, a) for a in ("Noop", "Do", None)] == [4, 0, 3]
    assert H.noop_warning(3) == ""
    assert H.noop_warning(4).startswith("=== NOOP WARNING (4 Noops")
    assert H.noop_warning(7).startswith("=== NOOP WARNING")
    assert H.noop_warning(8).startswith("=== NOOP SPIRAL ALERT (8 Noops")


def test_goals_and_compaction_read_memory(tmp_path):
    ctx = context(tmp_path, observation())
    assert H.goals_content(ctx.memory) == SCAFFOLD["files"]["goals.txt"]
    ctx.write("WRITE", "goals.txt", "")
    assert H.goals_content(ctx.memory).startswith("(no goals yet")
    assert H.compaction_warnings(ctx.memory) == ""  # game_knowledge.txt is long but exempt
    ctx.write("WRITE", "actions_log.txt", "\n".join(f"line {i}" for i in range(25)))
    ctx.write("WRITE", "progress.txt", "\n".join(f"line {i}" for i in range(40)))
    assert H.compaction_warnings(ctx.memory) == ""
    ctx.write("APPEND", "actions_log.txt", "line 25")
    assert H.compaction_warnings(ctx.memory).splitlines()[1].startswith("FILE TOO LARGE: actions_log.txt has 26 lines")


# ----------------------------------------------------------------------------- trackers through observe

def test_observe_tracks_in_the_authors_order(tmp_path):
    """Step by step: the pairs, the Noop streak, the idle count and the 'done' actions, which the tech tree at the
    step after an action does not count yet."""
    ctx = context(tmp_path, observation({"wood_pickaxe": 1}), step=0)
    steps = [(None, {"wood_pickaxe": 1}), ("Noop", {"wood_pickaxe": 1}), ("Sleep", {"wood_pickaxe": 1, "wood": 1}),
             ("Noop", {"wood_pickaxe": 1, "wood": 1})]
    trees = []
    for i, (prev, inv) in enumerate(steps):
        ctx.step, ctx.obs, ctx.prev_executed = i, observation(inv, status={"energy": 9 - (i == 2)}), prev
        assert H.observe(ctx) is None
        trees.append(ctx.episode["now"]["tech_tree"])
    ep = ctx.episode
    assert ep["recent"] == [["Noop", False], ["Sleep", True], ["Noop", True]]
    assert ep["noops"] == 1 and ep["idle"] == 1 and ep["done"] == ["Sleep", "Noop"]
    assert "Sleep, to earn" in trees[2] and "Sleep, to earn" not in trees[3]
    assert ep["now"]["inventory_changes"] == "" and ep["last_inventory"] == {"wood_pickaxe": 1, "wood": 1}


def test_observe_feeds_threat_damage_and_inventory_changes(tmp_path):
    ctx = context(tmp_path, observation({"wood": 1}), step=0)
    H.observe(ctx)
    ctx.step, ctx.obs, ctx.prev_executed = 1, observation({"wood": 2}, status={"health": 6}), "Do"
    H.observe(ctx)
    log = H.before_log(ctx)
    assert "GAINED: +1 wood (now 2)" in log["inventory_changes"] and "YOU LOST 3 HEALTH" in log["threat"]
    assert log["vitals"] == "" and set(log) == {"inventory_changes", "craft_failure", "threat", "vitals", "compaction"}
    plan = H.before_plan(ctx)
    assert set(plan) == {"vitals", "threat", "repetition", "craft_context", "tech_tree", "stagnation", "noops", "goals"}
    assert plan["threat"] == log["threat"] and plan["goals"].startswith("CURRENT GOAL:")


# ----------------------------------------------------------------------------- gates and repair

def test_material_gate():
    assert H.material_gate(observation({"wood": 1}), "Place Table") == (
        "'Place Table' WILL FAIL, materials missing: need 2 wood, you have 1. Gather what is missing first, then try "
        "again.")
    assert H.material_gate(observation({"wood": 2}), "Place Table") is None
    assert H.material_gate(observation({"stone": 3}), "Place Furnace").startswith("'Place Furnace' WILL FAIL")
    assert H.material_gate(observation({"stone": 4}), "Place Furnace") is None
    assert "need 1 coal, you have 0; need 1 iron, you have 0" in H.material_gate(observation({"wood": 1}),
                                                                                 "Make Iron Sword")
    assert H.material_gate(observation(), "place table") is None  # the raw commit: only exact names are gated
    assert H.material_gate(observation(), "Do") is None


def test_sleep_and_noop_gates_and_their_order(tmp_path):
    assert H.sleep_gate(observation(things=[("skeleton", 3, 0)]), "Sleep").startswith("Sleep is DANGEROUS: a skeleton")
    assert H.sleep_gate(observation(things=[("zombie", 4, 0)]), "Sleep") is None
    assert H.sleep_gate(observation(front="zombie"), "Sleep") is not None
    assert H.sleep_gate(observation(things=[("zombie", 1, 0)]), "Do") is None
    assert H.noop_gate(4, "Noop") is None and H.noop_gate(5, "Noop").startswith("Noop REFUSED")
    assert H.noop_gate(9, "Do") is None
    ctx = context(tmp_path, observation(things=[("zombie", 1, 0)]))
    ctx.episode["noops"] = 5
    assert H.check_action(ctx, "Noop").startswith("Noop REFUSED")
    assert H.check_action(ctx, "Sleep").startswith("Sleep is DANGEROUS")
    assert H.check_action(ctx, "Place Plant").startswith("'Place Plant' WILL FAIL")
    assert H.check_action(ctx, "Move West") is None


@pytest.mark.parametrize("raw, fixed", [
    ("noop", "Noop"), ("NOOP", "Noop"), ("make wood pickaxe", "Make Wood Pickaxe"), (" place table ", "Place Table"),
    ("move north-east", "Move North"), ("Move NorthWest", "Move North"), ("move south east", "Move South"),
    ("move south-west", "Move South"), ("Move West", "Move West"), ("fly", "fly"), ("eat cow", "eat"),
])
def test_repair_two_step_then_case_and_diagonals(tmp_path, raw, fixed):
    assert H.repair_action(context(tmp_path, observation()), raw) == fixed


# ----------------------------------------------------------------------------- the scaffold on real Crafter

def test_loads_and_passes_the_loop_checks():
    assert set(SCAFFOLD["hooks"]) == {"observe", "before_log", "before_plan", "check_action", "repair_action"}
    meta_loop.check_schema(V5, "crafter")
    jail.check_source((V5 / "hooks.py").read_text())
    meta = json.loads((V5 / "meta.json").read_text())
    assert meta["parent"] == "v0" and meta["version"] == "v5" and "re-expressed" in meta["source"]


@pytest.fixture(scope="module")
def game():
    g = envs.make("crafter", max_steps=3)
    yield g
    g.close()


def play(tmp_path, game, replies, context="full", steps=3, **agent_kw):
    agent = automem.Agent(SCAFFOLD, llm.load("scripted", replies=replies), game, tmp_path / context, context=context,
                          **agent_kw)
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / f"{context}.jsonl", max_steps=steps)
    return trace_format.read_trace(tmp_path / f"{context}.jsonl")[1]


def scripted(messages):
    """LOG writes goals.txt naming the step; PLAN first tries a table it cannot pay for, then moves west."""
    first = messages[0]["content"]
    if first.startswith("You are playing a game and keeping"):
        step = re.search(r"step (\d+)\)", first).group(1)
        return f"<|WRITE|>goals.txt|CURRENT GOAL: marker {step}<|END|><|DONE|>"
    return "<|ACTION|>Place Table<|END|>" if len(messages) < 5 else "<|ACTION|>move west<|END|>"


def test_plays_three_steps_with_its_context_and_memory_only(tmp_path, game):
    recs = play(tmp_path, game, scripted)
    assert [r["action"] for r in recs] == ["Move West"] * 3 and all(r["valid"] for r in recs)
    for r in recs:  # refused twice (no wood), then 'move west' is accepted and repaired
        assert [g["action"] for g in r["gate"]] == ["Place Table", "Place Table"]
        assert r["repaired"] == ["move west", "Move West"]
    sent = recs[0]["plan"]["turns"][1]["messages"][0]["content"]
    assert sent.startswith("ACTION REFUSED: 'Place Table' WILL FAIL, materials missing: need 2 wood, you have 0.")
    plan1 = recs[1]["plan"]["turns"][0]["messages"][0]["content"]
    assert "=== TECH TREE ===\nTOOLS: None\nNEXT: Collect wood" in plan1
    assert "YOUR CURRENT GOALS:\nCURRENT GOAL: marker 0\n" in plan1  # goals.txt as this step's LOG wrote it
    assert "CURRENT GOAL: Get wood" in recs[0]["plan"]["turns"][0]["messages"][0]["content"]  # step 0: the seed file
    # memory-only: the same prompts, files and repair; no notices, no gate
    recs = play(tmp_path, game, scripted, context="memory-only")
    assert [r["action"] for r in recs] == ["Place Table"] * 3 and not any(r["gate"] for r in recs)
    plan1 = recs[1]["plan"]["turns"][0]["messages"][0]["content"]
    assert "TECH TREE" not in plan1 and "YOUR CURRENT GOALS:\n\n" in plan1
    assert set(recs[1]["hooks"]) <= {"repair_action"}


def test_two_model_handoff_uses_the_scaffolds_texts(tmp_path, game):
    memory_model = llm.load("scripted", replies=["<|READ|>goals.txt<|END|><|ACTION|>Noop<|END|>"])
    recs = play(tmp_path, game, ["<|ACTION|>Do<|END|>"], steps=1, memory_llm=memory_model)
    turns = recs[0]["plan"]["turns"]
    assert turns[0]["model"] == "memory" and turns[0]["dropped_action"] == "Noop" and turns[1]["model"] == "base"
    assert turns[1]["messages"][-1]["content"].startswith("Search results:\n") and recs[0]["action"] == "Do"
