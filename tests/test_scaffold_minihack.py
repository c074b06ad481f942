"""MiniHack v4 (the authors' converged minihack_v4, re-expressed): one test per mechanism of reference §3.2 on
constructed observations, then the scaffold loads, passes loop 1's checks and plays 3 real steps (scripted backend)
with its programmatic context on and off."""
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

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
V4 = ROOT / "scaffolds" / "minihack" / "v4"
MAZE, BOXOBAN, CORRIDOR = "MiniHack-MazeWalk-9x9-v0", "MiniHack-Boxoban-Medium-v0", "MiniHack-Corridor-R3-v0"
ALL = ["north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest"]


def load_hooks_module():
    spec = importlib.util.spec_from_file_location("minihack_v4_hooks", V4 / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks_module()


def observation(x=5, y=5, rows=("-----", "|...|", "|.@.|", "|...|", "-----"), message=""):
    """An observation text shaped like envs' MiniHack text: message, cursor line with (x=, y=), map."""
    return (f"message:\n{message}\n\nlanguage observation:\nfloor\n\ncursor:\nYourself a knight\n(x={x}, y={y})\n\n"
            "map:\n" + "\n".join(rows) + "\n\ninventory:\na: a long sword\n")


def context(tmp_path, task=MAZE, text=None, step=1, files=None, **kw):
    game = SimpleNamespace(task=task, actions=ALL)
    memory = memory_fs.MemoryFS(tmp_path / "mem", files if files is not None else {"actions_log.txt": ""})
    obs = envs.Observation(text=text or observation(), long="", short="")
    return automem.Context(step, obs, memory, game, **kw)


def fresh_state(pos, visits, path=None):
    return {"actions": [], "pos": pos, "path": path or [pos], "visits": dict(visits), "failed": [], "directive": None}


# ----------------------------------------------------------------------------- per-task overrides (Boxoban)

def test_boxoban_overrides_files_instruction_and_fallback():
    scaffold = scaffold_spec.load_scaffold(V4)
    box, maze = scaffold_spec.for_task(scaffold, BOXOBAN), scaffold_spec.for_task(scaffold, MAZE)
    assert sorted(box["files"]) == ["actions_log.txt", "dungeon_map.txt", "game_rules.txt", "nethack_symbols.txt",
                                    "strategy.txt"]  # no inventory.txt
    assert "inventory.txt" in maze["files"] and maze["files"]["game_rules.txt"] != box["files"]["game_rules.txt"]
    rules = box["files"]["game_rules.txt"]
    assert "IRON BARS" in rules and "north, south, east, west" in rules and rules.count("\n") == 31
    assert box["files"]["nethack_symbols.txt"] == maze["files"]["nethack_symbols.txt"]
    assert "# : corridor (you can walk on it); in Boxoban" in maze["files"]["nethack_symbols.txt"]
    assert (box["fallback_action"], maze["fallback_action"]) == ("north", "search")
    assert box["prompts"]["plan"].startswith("You are solving a Boxoban puzzle")
    assert maze["prompts"]["plan"].startswith("You are playing MiniHack")
    # the Boxoban PLAN differs only in its instruction: the rest is the same template
    rest = lambda s: s["prompts"]["plan"].split("To decide better", 1)[1]
    assert rest(box) == rest(maze)
    game = SimpleNamespace(task=BOXOBAN, actions=ALL[:4], instruction="", default_action="north")
    assert automem.Agent(scaffold, llm.load("scripted", replies=["x"]), game, "unused").fallback == "north"


# ----------------------------------------------------------------------------- map analysis

def test_map_analysis_boxoban_bars_and_doors_on_map():
    rows = ("+ + + + +", "", "-----", "|.@#|", "|.+.|", "-----")
    maze = hooks.map_analysis(hook_helpers.read_nle_map(observation(rows=rows)), MAZE).split("\n")
    box = hooks.map_analysis(hook_helpers.read_nle_map(observation(rows=rows)), BOXOBAN).split("\n")
    assert maze[0] == "MAP ANALYSIS (computed from the map):"
    assert "CAN MOVE: south (door '+'), east ('#'), west ('.'), southeast ('.'), southwest ('.')" in maze
    assert "CAN MOVE: south (door '+'), west ('.'), southeast ('.'), southwest ('.')" in box  # '#' = iron bars
    assert "BLOCKED: north (wall '-'), east (unknown '#'), northeast (wall '-'), northwest (wall '-')" in box
    assert "DOORS: south: '+' closed door ('open' it)" in maze  # the adjacent door is not "on map"
    assert ("DOORS ON MAP: '+' about 2 tiles northwest; '+' about 2 tiles north; '+' about 2 tiles northeast; "
            "'+' about 4 tiles northeast") in maze  # the first 4 of 5, row by row; the blank row is skipped
    assert hook_helpers.read_nle_map("no map here") is None and hooks.map_analysis(None, MAZE) == ""
    stairs = hooks.map_analysis(hook_helpers.read_nle_map(observation(rows=("> > > >", "-------", "|.@.|"))), MAZE)
    assert "STAIRS IN VIEW: '>' about 2 tiles northwest; '>' about 2 tiles north; '>' about 2 tiles northeast\n" in stairs


def test_passable_directions_in_their_order_filtered_to_the_tasks_moves():
    facts = hook_helpers.read_nle_map(observation())
    assert hooks.passable_moves(facts, MAZE) == ["northeast", "northwest", "southeast", "southwest",
                                                 "north", "south", "east", "west"]
    assert hooks.passable_moves(facts, BOXOBAN) == ["north", "south", "east", "west"]


# ----------------------------------------------------------------------------- action history

def test_action_history_oscillation_and_repetition():
    assert hooks.oscillation(["north", "south", "north"]) is None  # 2 pairs, but only 3 actions
    assert hooks.oscillation(["east", "north", "south", "north"]) == ("north", "south")
    assert hooks.oscillation(["north", "south", "east", "east", "east", "west"]) == ("west", "east")
    assert hooks.oscillation(["north", "south", "east", "east"]) is None  # 1 pair
    assert hooks.oscillation(["north", "south", "north", "east", "east", "east", "east", "east"]) is None  # not in the last 6
    assert hooks.oscillation(["north", "south", "north", "search"]) is None  # the last action has no opposite
    assert hooks.repetition(["west", "east", "east", "east"]) == "east" and hooks.repetition(["east", "east"]) is None
    text = hooks.action_history(["east", "north", "south", "north"], MAZE)
    assert text.startswith("RECENT ACTION HISTORY (last 4 actions):\n  1: east\n  2: north\n")
    assert "OSCILLATION DETECTED" in text and "one of: east, west, northeast, northwest" in text  # 4 alternatives
    assert "one of: east, west" in hooks.action_history(["east", "north", "south", "north"], BOXOBAN)
    assert "REPETITION DETECTED: 'search'" in hooks.action_history(["search"] * 3, MAZE)
    assert hooks.action_history([], MAZE) == ""


def test_history_keeps_the_last_12_executed_actions(tmp_path):
    ctx = context(tmp_path)
    for step in range(14):
        ctx.step, ctx.prev_executed = step, None if step == 0 else f"a{step}"
        hooks.observe(ctx)
    assert ctx.episode["actions"] == [f"a{i}" for i in range(2, 14)]
    assert "(last 12 actions)" in hooks.before_plan(ctx)["recent_actions"]


# ----------------------------------------------------------------------------- position tracker, exploration

def test_position_is_parsed_and_paused_during_game_prompts(tmp_path):
    ctx = context(tmp_path, text=observation(3, 4))
    hooks.observe(ctx)
    ctx.obs = envs.Observation(text=observation(3, 4, message="In what direction?"), long="", short="")
    hooks.observe(ctx)
    ctx.obs = envs.Observation(text=observation(3, 4, message="What do you want to eat? [d or ?*]"), long="", short="")
    hooks.observe(ctx)
    assert ctx.episode["visits"] == {(3, 4): 1} and ctx.episode["path"] == [(3, 4)]
    ctx.obs = envs.Observation(text=observation(4, 4), long="", short="")
    hooks.observe(ctx)
    assert ctx.episode["pos"] == (4, 4) and ctx.episode["path"] == [(3, 4), (4, 4)]


def test_exploration_guidance_unvisited_order_and_warnings():
    passable = list(hooks.PASSABLE_ORDER)
    state = fresh_state((5, 5), {(5, 5): 2, (6, 4): 1})  # the northeast neighbour seen once
    text = hooks.exploration_guidance(state, passable)
    assert "  You are at (5, 5), visited 2 time(s)" in text and "Explored: 2 distinct tiles in 1 steps" in text
    assert "UNVISITED passable directions: northwest, southeast, southwest, north, south, east, west" in text
    assert ">>> PRIORITY: go northwest or southeast or southwest to reach NEW ground!" in text
    assert "Visited before: northeast (1x)" in text and "times! Go to NEW tiles!" not in text  # 2 visits
    state["visits"][(5, 5)] = 3
    assert "*** You have stood at (5,5) 3 times! Go to NEW tiles!" in hooks.exploration_guidance(state, passable)
    around = {(5 + dx, 5 + dy): 2 for dx, dy in hooks.STEP.values()}
    state = fresh_state((5, 5), {(5, 5): 1, **around, (4, 6): 1})  # all seen; southwest least
    text = hooks.exploration_guidance(state, passable)
    assert "Every passable neighbour has been visited already." in text and "DOORS ON MAP" in text
    assert "Least-visited direction: southwest (1x)" in text
    assert hooks.exploration_guidance(fresh_state(None, {}), passable) == ""


def test_critical_oscillation_and_stuck():
    passable = ["east"]
    loop = [(1, 1), (2, 1)] * 3
    text = hooks.exploration_guidance(fresh_state((2, 1), {(1, 1): 3, (2, 1): 3}, loop), passable)
    assert "CRITICAL OSCILLATION: only 2 distinct positions in the last 6 steps!" in text
    assert "Path: (1,1) -> (2,1) -> (1,1) -> (2,1) -> (1,1) -> (2,1)" in text and "Suggested: east" in text
    three = [(1, 1), (2, 1), (3, 1)]
    ten = (three * 4)[:10]
    text = hooks.exploration_guidance(fresh_state(ten[-1], {p: 3 for p in three}, ten), passable)
    assert "*** STUCK: only 3 distinct positions in the last 10 steps." in text and "CRITICAL" not in text
    nine = ten[:9]
    assert "STUCK" not in hooks.exploration_guidance(fresh_state(nine[-1], {p: 3 for p in three}, nine), passable)
    wider = [(9, 9)] + ten[1:]  # 4 distinct in the last 10
    assert "STUCK" not in hooks.exploration_guidance(fresh_state(wider[-1], {p: 3 for p in wider}, wider), passable)


# ----------------------------------------------------------------------------- mandatory movement directive

def test_mandatory_move_from_4_visits_skipping_failed_directions():
    passable = list(hooks.PASSABLE_ORDER)
    state = fresh_state((5, 5), {(5, 5): 3, (6, 4): 1})
    assert hooks.mandatory_direction(state, passable) is None  # 3 visits
    state["visits"][(5, 5)] = 4
    assert hooks.mandatory_direction(state, passable) == "northwest"  # the first unvisited (northeast is visited)
    hooks.track_position(state, observation(5, 5))  # the directive was given and we did not move: it failed
    assert state["failed"] == ["northwest"] and hooks.mandatory_direction(state, passable) == "southeast"
    hooks.track_position(state, observation(6, 5))  # any move clears the failed ones
    assert state["failed"] == []
    text = hooks.mandatory_directive(4, "northwest")
    assert "*** MANDATORY MOVEMENT DIRECTIVE ***" in text and "THE MOVE YOU MUST MAKE: NORTHWEST" in text


def test_mandatory_least_visited_from_5_visits():
    passable = ["north", "east"]
    state = fresh_state((5, 5), {(5, 5): 4, (5, 4): 3, (6, 5): 2})  # both neighbours seen
    assert hooks.mandatory_direction(state, passable) is None  # 4 visits: only an unvisited one is mandatory
    state["visits"][(5, 5)] = 5
    assert hooks.mandatory_direction(state, passable) == "east"  # the least visited
    state["failed"] = ["north", "east"]  # every option failed: the failed ones are forgotten
    assert hooks.mandatory_direction(state, passable) == "east" and state["failed"] == []


def test_mandatory_directive_is_hidden_during_game_prompts(tmp_path):
    ctx = context(tmp_path)
    for step in range(4):
        ctx.step = step
        hooks.observe(ctx)
    assert "MANDATORY MOVEMENT DIRECTIVE" in hooks.before_plan(ctx)["mandatory"]  # 4 visits
    ctx.obs = envs.Observation(text=observation(message="In what direction?"), long="", short="")
    hooks.observe(ctx)
    assert hooks.before_plan(ctx)["mandatory"] == ""


# ----------------------------------------------------------------------------- stairs navigator

def test_stairs_banner_goal_and_lava_barrier():
    def directive(rows):
        facts = hook_helpers.read_nle_map(observation(rows=rows))
        return hooks.stairs_directive(facts, hooks.passable_moves(facts, MAZE))
    banner = directive(("-----", "|.@>|", "-----"))
    assert "STAIRS DOWN '>' ARE RIGHT NEXT TO YOU, EAST!" in banner and banner.endswith("<|ACTION|>east<|END|>")
    goal = directive(("-------", "|.....|", "|.@-.>|", "|.....|", "-------"))
    assert "*** GOAL: the stairs down '>' are about 3 tiles east. ***" in goal
    assert "Passable directions toward the goal: northeast, southeast" in goal  # east is a wall
    lava = directive(("-------", "|..}..|", "|.@}.>|", "|.....|", "-------"))
    assert "LAVA BARRIER" in lava and "go north or south to get AROUND" in lava  # lava east and northeast
    one = directive(("-------", "|.....|", "|.@}.>|", "|.....|", "-------"))
    assert "GOAL" in one and "LAVA" not in one  # 1 of the 3 is lava
    assert directive(("-----", "|.@.|", "-----")) == ""


# ----------------------------------------------------------------------------- tips, game prompts, memory

def test_task_tips():
    assert hooks.task_tips(BOXOBAN).startswith("RULES OF THIS TASK (Boxoban")
    assert hooks.task_tips(MAZE).startswith("TIPS FOR THIS TASK (exploring a maze)")
    assert hooks.task_tips("MiniHack-CorridorBattle-Dark-v0").startswith("TIPS FOR THIS TASK (corridor battle)")
    assert hooks.task_tips(CORRIDOR).startswith("TIPS FOR THIS TASK (finding the way through corridors)")
    assert "LAVA" in hooks.task_tips("MiniHack-Quest-Medium-v0") and hooks.task_tips("MiniHack-Room-5x5-v0") == ""


def test_game_prompt_switches_plan_to_the_direction_only_template(tmp_path):
    ctx = context(tmp_path)
    hooks.observe(ctx)
    assert "prompt" not in hooks.before_plan(ctx)
    for message in ["In what direction?"] + [f"What do you want to {v}? [a or ?*]"
                                             for v in ("eat", "quaff", "wield", "wear", "read")]:
        ctx.obs = envs.Observation(text=observation(message=message), long="", short="")
        hooks.observe(ctx)
        slots = hooks.before_plan(ctx)
        assert slots["prompt"] == "plan_direction" and "*** GAME PROMPT" in slots["game_prompt"]
    assert "ONLY the one letter" in slots["game_prompt"]
    assert hooks.game_prompt(observation(message="What do you want to zap?")) == ""
    template = scaffold_spec.load_scaffold(V4)["prompts"]["plan_direction"]
    assert "{game_prompt}" in template and "{analysis}" in template and "{file_index}" not in template


def test_recent_log_tail_5_read_before_this_steps_log(tmp_path):
    ctx = context(tmp_path, files={"actions_log.txt": "".join(f"line {i}\n" for i in range(7))})
    hooks.observe(ctx)
    assert hooks.before_plan(ctx)["recent_log"] == "RECENT ACTIONS LOG (auto-loaded):\n" + "\n".join(
        f"line {i}" for i in range(2, 7))
    ctx.write("APPEND", "actions_log.txt", "written by LOG")  # after observe: PLAN still shows the old tail
    assert "written by LOG" not in hooks.before_plan(ctx)["recent_log"]
    assert hooks.recent_log(context(tmp_path / "e").memory).endswith("(no actions logged yet)")


def test_auto_log_when_log_wrote_nothing(tmp_path):
    ctx = context(tmp_path, step=3, prev_executed="east", log_ops=[["READ", ["actions_log.txt"]], ["DONE", []]])
    hooks.after_log(ctx)
    assert ctx.memory.read("actions_log.txt") == "Step 2 action 'east': [auto-logged]\n"
    for op in ("APPEND", "WRITE", "CREATE"):
        ctx = context(tmp_path / op, step=3, prev_executed="east", log_ops=[[op, ["notes.txt", "x"]]])
        hooks.after_log(ctx)
        assert ctx.memory.read("actions_log.txt") == ""


def test_repair_go_and_move_after_v0s_two_step_repair():
    assert hooks.repair("go north") == "north" and hooks.repair("Move West") == "west"
    assert hooks.repair("eat d") == "eat" and hooks.repair("far east") == "far east"
    assert hooks.repair("go home") == "go home" and hooks.repair(" south ") == "south"


# ----------------------------------------------------------------------------- prompts

def test_plan_slot_order_and_10_step_process():
    scaffold = scaffold_spec.load_scaffold(V4)
    plan = scaffold["prompts"]["plan"]
    order = ["You are playing MiniHack", "external memory", "{task_tips}", "SPATIAL AWARENESS", "{notices}",
             "{recent_actions}", "{analysis}", "{stairs}", "{exploration}", "{mandatory}", "{file_index}",
             "{recent_log}", "{observation}", "HOW TO PROCEED", "COMMANDS YOU CAN USE"]
    where = [plan.index(part) for part in order]
    assert where == sorted(where)
    steps = plan[plan.index("HOW TO PROCEED"):plan.index("COMMANDS YOU CAN USE")]
    marks = ["\n1. ", "\n2. ", "\n3. ", "MANDATORY MOVEMENT DIRECTIVE", "\n4. ", "stairs down '>'", "\n5. ", "GOAL",
             "LAVA BARRIER", "\n6. ", "EXPLORATION STATUS", "\n7. ", "DOORS ON MAP", "\n8. ", "\n9. ",
             "actions_log.txt", "game_rules.txt", "\n10. ", "<|ACTION|>"]
    where = [steps.index(m) for m in marks]
    assert where == sorted(where) and "\n11. " not in steps


def test_log_is_v0s_and_the_stuck_notice_drops_critical():
    v0, v4 = scaffold_spec.load_scaffold(V4.parent / "v0"), scaffold_spec.load_scaffold(V4)
    assert v4["prompts"]["log"] == v0["prompts"]["log"] and v4["prompts"]["log_continue"] == v0["prompts"]["log_continue"]
    assert "CRITICAL" in v0["texts"]["stuck"] and "CRITICAL" not in v4["texts"]["stuck"]
    assert "STUCK" in v4["texts"]["stuck"] and v4["texts"]["stuck"].isascii() and v4["texts"]["unchanged"].isascii()
    assert v4["texts"]["handoff_results"].startswith("Results:\n{results}")  # their MiniHack hand-off header


# ----------------------------------------------------------------------------- the whole scaffold

def test_loads_and_passes_loop_1s_checks():
    scaffold = scaffold_spec.load_scaffold(V4)
    assert set(scaffold["hooks"]) == {"observe", "before_plan", "after_log", "repair_action"}
    assert scaffold["limits"] == scaffold_spec.LIMITS and not scaffold["search_all"]
    meta_loop.check_schema(V4, "minihack")
    jail.check_source((V4 / "hooks.py").read_text())
    meta = json.loads((V4 / "meta.json").read_text())
    assert (meta["parent"], meta["version"], meta["name"]) == ("v0", "v4", "minihack-v4")
    assert meta["hash"] == scaffold["hash"], "scaffold changed: update meta.json's hash"


@pytest.mark.parametrize("context_mode", ["full", "memory-only"])
def test_plays_3_real_steps(tmp_path, context_mode):
    """Corridor-R3 seed 42: 'go east' (repaired), 'open' (the game asks for a direction), then PLAN in the
    direction-only template; LOG writes nothing, so auto-log appends. memory-only: no hooks but repair."""
    game = envs.make("minihack", CORRIDOR, max_steps=3)
    replies = ["<|ACTION|>go east<|END|>",
               "<|DONE|>", "<|ACTION|>open<|END|>",
               "<|DONE|>", "<|ACTION|>south<|END|>"]
    agent = automem.Agent(scaffold_spec.load_scaffold(V4), llm.load("scripted", replies=replies), game, tmp_path / "m",
                          context=context_mode)
    automem.run_episode(agent, game, seed=42, trace_path=tmp_path / "t.jsonl", max_steps=3)
    header, recs, end = trace_format.read_trace(tmp_path / "t.jsonl")
    assert [r["action"] for r in recs] == ["east", "open", "south"] and recs[0]["repaired"] == ["go east", "east"]
    assert "In what direction?" in recs[2]["observation"]
    full = context_mode == "full"
    assert (recs[2]["plan"].get("template") == "plan_direction") == full
    assert ("EXPLORATION STATUS:\n  You are at" in recs[1]["plan"]["turns"][0]["messages"][0]["content"]) == full
    auto = [w for r in recs for w in r["writes"]]
    assert auto == ([["APPEND", ["actions_log.txt", "Step 0 action 'east': [auto-logged]"]],
                     ["APPEND", ["actions_log.txt", "Step 1 action 'open': [auto-logged]"]]] if full else [])
