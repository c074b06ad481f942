"""MiniHack v4 hooks: the programmatic context of the authors' converged minihack_v4, re-expressed (reference
automem_scaffolds.md §3.2). One function per mechanism; the hook entry points at the bottom call them in the
authors' order: observe (everything computed from this step's observation, before LOG; returns the MAP ANALYSIS),
before_plan (PLAN's slots, or the direction-only template during a game prompt), after_log (auto-log),
repair_action (v0's two-step repair, then go/move). Per-episode state lives in ctx.episode."""
import re

from hook_helpers import NEIGHBOURS, map_analysis_text, read_nle_map, repair_two_step, tile_kind

CARDINAL = ("north", "south", "east", "west")
PASSABLE_ORDER = ("northeast", "northwest", "southeast", "southwest", "north", "south", "east", "west")  # theirs
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east",
            "northeast": "southwest", "southwest": "northeast", "northwest": "southeast", "southeast": "northwest"}
BESIDE = {"north": ("northeast", "northwest"), "south": ("southeast", "southwest"),  # a direction's 2 neighbours
          "east": ("northeast", "southeast"), "west": ("northwest", "southwest"),
          "northeast": ("north", "east"), "northwest": ("north", "west"),
          "southeast": ("south", "east"), "southwest": ("south", "west")}
PERPENDICULAR = {"north": ("east", "west"), "south": ("east", "west"), "east": ("north", "south"),
                 "west": ("north", "south"), "northeast": ("northwest", "southeast"),
                 "northwest": ("northeast", "southwest"), "southeast": ("northeast", "southwest"),
                 "southwest": ("northwest", "southeast")}
STEP = {"north": (0, -1), "south": (0, 1), "east": (1, 0), "west": (-1, 0),  # (x, y) of the cursor line
        "northeast": (1, -1), "northwest": (-1, -1), "southeast": (1, 1), "southwest": (-1, 1)}
MOVE_KINDS = {"stairs down", "stairs up", "door", "monster", "passable", "item"}  # what CAN MOVE lists

HISTORY = 12           # actions the history keeps
OSCILLATION_MIN = 4    # actions needed before oscillation is checked
OSCILLATION_SPAN = 6   # ... over the last 6, with at least
OSCILLATION_PAIRS = 2  # 2 consecutive opposite pairs
ALTERNATIVES = 4       # directions the oscillation warning offers
REPEAT_RUN = 3         # the same action this many times in a row
VISITS_WARN = 3        # visits to a tile that earn a warning
MANDATORY_AT = 4       # visits to a tile from which a move is mandatory
LEAST_VISITED_AT = 5   # ... and from which the least-visited neighbour is mandatory when none is unvisited
PRIORITY_SHOWN = 3     # unvisited directions named in the PRIORITY line
LOOP_SPAN, LOOP_MAX = 6, 2                 # CRITICAL OSCILLATION: <= 2 distinct positions in the last 6
STUCK_SPAN, STUCK_MAX, STUCK_MIN = 10, 3, 10  # STUCK: <= 3 distinct in the last 6 and in the last 10, after 10 steps
FAR_DOORS = 4                              # distant '+' the map analysis lists (and 3 '>', as v0)
LOG_TAIL = 5           # lines of actions_log.txt shown in PLAN
ITEM_PROMPTS = tuple(f"What do you want to {verb}?" for verb in ("eat", "quaff", "wield", "wear", "read"))
DIRECTION_PROMPT = "In what direction?"
POSITION = re.compile(r"\(x=(\d+),\s*y=(\d+)\)")
BANNER = "*" * 51


def is_boxoban(task):
    return "boxoban" in (task or "").lower()


def valid_moves(task):
    """The moves a task accepts, as the authors fixed them: Boxoban the 4 cardinal ones, every other task all 8, in
    the order N, S, E, W, NE, NW, SE, SW (theirs iterates a frozenset, whose order varies from run to run)."""
    return [d for d in NEIGHBOURS if d in CARDINAL or not is_boxoban(task)]


# ----------------------------------------------------------------------------- map analysis

def tile(ch, task):
    """tile_kind of v0, except that Boxoban's '#' (iron bars) is not passable: their Boxoban passable set is '.{_'."""
    return "unknown" if ch == "#" and is_boxoban(task) else tile_kind(ch)


def map_analysis(facts, task):
    """v0's MAP ANALYSIS of hook_helpers.read_nle_map's facts, with Boxoban's bars blocked and DOORS ON MAP (up to 4
    doors more than 1 tile away)."""
    return map_analysis_text(facts, kind=lambda ch: tile(ch, task), doors_on_map=FAR_DOORS)


def passable_moves(facts, task):
    """The directions CAN MOVE lists, in their order NE, NW, SE, SW, N, S, E, W, kept to the task's valid moves."""
    if facts is None:
        return []
    ok = valid_moves(task)
    return [d for d in PASSABLE_ORDER if d in ok and facts["around"][d] is not None
            and tile(facts["around"][d], task) in MOVE_KINDS]


# ----------------------------------------------------------------------------- action history

def oscillation(actions):
    """(last action, its opposite) when, with >= 4 actions, the last 6 hold >= 2 consecutive opposite pairs; else None."""
    if len(actions) < OSCILLATION_MIN:
        return None
    recent = actions[-OSCILLATION_SPAN:]
    pairs = sum(OPPOSITE.get(a) == b for a, b in zip(recent, recent[1:]))
    last = recent[-1]
    return (last, OPPOSITE[last]) if pairs >= OSCILLATION_PAIRS and last in OPPOSITE else None


def repetition(actions):
    """The action when the last 3 are the same one; else None."""
    tail = actions[-REPEAT_RUN:]
    return tail[0] if len(tail) == REPEAT_RUN and len(set(tail)) == 1 else None


def action_history(actions, task):
    """RECENT ACTION HISTORY (the last 12 executed actions, numbered) and its OSCILLATION/REPETITION warnings."""
    lines = [f"RECENT ACTION HISTORY (last {len(actions)} actions):"] + [
        f"  {i}: {a}" for i, a in enumerate(actions, 1)] if actions else []
    warnings = []
    pair = oscillation(actions)
    if pair:
        others = [d for d in valid_moves(task) if d not in pair][:ALTERNATIVES]
        warnings.append(f"OSCILLATION DETECTED: you keep switching between '{pair[0]}' and '{pair[1]}'. That gets "
                        f"you NOWHERE and burns steps. Pick a COMPLETELY DIFFERENT direction, such as one of: "
                        + ", ".join(others))
    same = repetition(actions)
    if same:
        warnings.append(f"REPETITION DETECTED: '{same}' three times in a row and nothing gained. Do something else.")
    return "\n\n".join(part for part in ("\n".join(lines), "\n".join(warnings)) if part)


# ----------------------------------------------------------------------------- position tracker

def track_position(state, text):
    """Record the cursor's (x=N, y=N): visits, path; a mandatory direction that left us in place counts as failed,
    and any move clears the failed ones."""
    m = POSITION.search(text)
    if not m:
        return
    pos = (int(m.group(1)), int(m.group(2)))
    if state["pos"] is not None and pos == state["pos"]:
        if state["directive"] is not None:
            state["failed"].append(state["directive"])
    else:
        state["failed"] = []
    state["pos"] = pos
    state["path"].append(pos)
    state["visits"][pos] = state["visits"].get(pos, 0) + 1


def neighbour_visits(state, direction):
    x, y = state["pos"]
    dx, dy = STEP[direction]
    return state["visits"].get((x + dx, y + dy), 0)


def least_visited(state, directions):
    """The first direction whose neighbour has the fewest visits, among neighbours visited at least once; or None."""
    seen = [(neighbour_visits(state, d), i, d) for i, d in enumerate(directions) if neighbour_visits(state, d) > 0]
    return min(seen)[2] if seen else None


def exploration_guidance(state, passable):
    """EXPLORATION STATUS: position and visits, tiles explored, unvisited passable directions (PRIORITY to the first
    3) or else the least-visited one and a door tip, visited neighbours' counts, a warning from 3 visits, and
    CRITICAL OSCILLATION (<= 2 distinct positions in the last 6) or else STUCK (<= 3 in the last 6 and in the
    last 10, after 10 steps)."""
    if state["pos"] is None:
        return ""
    x, y = state["pos"]
    visits = state["visits"].get(state["pos"], 1)
    new = [d for d in passable if neighbour_visits(state, d) == 0]
    old = [f"{d} ({neighbour_visits(state, d)}x)" for d in passable if neighbour_visits(state, d) > 0]
    lines = ["EXPLORATION STATUS:", f"  You are at ({x}, {y}), visited {visits} time(s)",
             f"  Explored: {len(state['visits'])} distinct tiles in {len(state['path'])} steps"]
    if new:
        lines += [f"  UNVISITED passable directions: {', '.join(new)}",
                  f"  >>> PRIORITY: go {' or '.join(new[:PRIORITY_SHOWN])} to reach NEW ground!"]
    else:
        lines.append("  Every passable neighbour has been visited already.")
        best = least_visited(state, passable)
        if best:
            lines.append(f"  Least-visited direction: {best} ({neighbour_visits(state, best)}x): go that way.")
        lines += ["  TIP: nothing new around here. Look at DOORS ON MAP, or for corridors further off,",
                  "  to reach new areas."]
    if old:
        lines.append(f"  Visited before: {', '.join(old)}")
    if visits >= VISITS_WARN:
        lines += ["", f"  *** You have stood at ({x},{y}) {visits} times! Go to NEW tiles!"]
    path = state["path"]
    if len(path) >= LOOP_SPAN and len(set(path[-LOOP_SPAN:])) <= LOOP_MAX:
        lines += ["", f"  *** CRITICAL OSCILLATION: only {len(set(path[-LOOP_SPAN:]))} distinct positions in the "
                      f"last {LOOP_SPAN} steps!",
                  "  Path: " + " -> ".join(f"({px},{py})" for px, py in path[-LOOP_SPAN:]),
                  "  Break out of it: take ANOTHER direction!"] + ([f"  Suggested: {new[0]}"] if new else [])
    elif (len(path) >= STUCK_MIN and len(set(path[-LOOP_SPAN:])) <= STUCK_MAX
          and len(set(path[-STUCK_SPAN:])) <= STUCK_MAX):
        lines += ["", f"  *** STUCK: only {len(set(path[-STUCK_SPAN:]))} distinct positions in the last {STUCK_SPAN} steps.",
                  "  Take a direction you have NOT taken lately."]
    return "\n".join(lines)


def mandatory_direction(state, passable):
    """From 4 visits to this tile: the first unvisited passable neighbour (failed directions skipped, unless that
    leaves none); else, from 5 visits, the least-visited one; else None. Remembered to spot a failed directive."""
    state["directive"] = None
    if state["pos"] is None or state["visits"].get(state["pos"], 1) < MANDATORY_AT:
        return None
    options = [d for d in passable if d not in state["failed"]]
    if not options:
        state["failed"] = []
        options = list(passable)
    new = [d for d in options if neighbour_visits(state, d) == 0]
    if new:
        state["directive"] = new[0]
    elif state["visits"][state["pos"]] >= LEAST_VISITED_AT:
        state["directive"] = least_visited(state, options)
    return state["directive"]


def mandatory_directive(visits, direction):
    """The MANDATORY MOVEMENT DIRECTIVE text."""
    return "\n".join([BANNER, "*** MANDATORY MOVEMENT DIRECTIVE ***",
                      f"You have stood on this tile {visits} times: you are going round in a loop.",
                      f"THE MOVE YOU MUST MAKE: {direction.upper()}",
                      f"No other direction. Go {direction} NOW.", BANNER])


# ----------------------------------------------------------------------------- stairs navigator

def stairs_directive(facts, passable):
    """'>' next to us: a banner dictating the move. Else the first distant '>': a GOAL with its distance and
    direction and the passable ones among it and its 2 neighbours, or, when lava ('}') lies next to us in 2 of
    those 3, a LAVA BARRIER with a detour along the perpendiculars. "" when no '>' is on the map."""
    if facts is None:
        return ""
    near = next((d for d, ch in facts["around"].items() if ch == ">"), None)
    if near:
        return "\n".join([BANNER, f"*** STAIRS DOWN '>' ARE RIGHT NEXT TO YOU, {near.upper()}! ***",
                          f"*** Step {near} NOW to finish the level! ***", BANNER,
                          f"Output: <|ACTION|>{near}<|END|>"])
    if not facts["far_stairs"]:
        return ""
    distance, goal = facts["far_stairs"][0]
    toward = (goal, *BESIDE[goal])
    lava = [d for d in toward if facts["around"][d] == "}"]
    if len(lava) >= 2:
        detour = [d for d in PERPENDICULAR[goal] if d in passable] or list(PERPENDICULAR[goal])
        way = " or ".join(detour[:2])
        return "\n".join(["*** LAVA BARRIER BETWEEN YOU AND THE STAIRS ***",
                          f"The stairs '>' are about {distance} tiles {goal}, but lava lies in the way.",
                          "Lava is DEADLY: you can NOT walk through it.",
                          f"DETOUR NEEDED: go {way} to get AROUND the lava.",
                          f"Keep going {way} until a gap opens, then turn {goal}.",
                          "Do not go back and forth beside the lava: stick to the detour!"])
    # theirs falls back to 3 passable directions in set order (arbitrary); ours takes the first 3 in CAN MOVE order
    ways = [d for d in toward if d in passable] or passable[:3]
    return "\n".join([f"*** GOAL: the stairs down '>' are about {distance} tiles {goal}. ***",
                      f"Head {goal}: every move should bring you nearer."]
                     + ([f"Passable directions toward the goal: {', '.join(ways)}"] if ways else [])
                     + [f"If {goal} is blocked, go round by {BESIDE[goal][0]} or {BESIDE[goal][1]}."])


# ----------------------------------------------------------------------------- task tips, game prompts, memory

TIPS = {  # the first key the task id contains (lower case), in this order
    "boxoban": ["RULES OF THIS TASK (Boxoban, a Sokoban puzzle):",
                "- Only the cardinal directions are valid: north, south, east, west.",
                "- Diagonal moves (northeast and the rest) are INVALID and get refused.",
                "- 'search', 'open' and 'kick' are INVALID here as well.",
                "- '#' on the map is IRON BARS: you can NOT walk through it.",
                "- Walk into a boulder ('`') to push it. Plan every push.",
                "- A boulder against a wall cannot be pushed further that way.",
                "- When a direction does nothing, switch to ANOTHER one at once."],
    "mazewalk": ["TIPS FOR THIS TASK (exploring a maze):",
                 "- The goal is to find the stairs down '>' and step onto them.",
                 "- Explore depth-first: go on until you hit a dead end, then go back and try a new branch.",
                 "- Once '>' shows on the map or in the observation, head for it AT ONCE: nothing matters more.",
                 "- NEVER go back and forth. Where you have already been, take ANOTHER direction.",
                 "- When EXPLORATION STATUS lists UNVISITED directions, you MUST take one of them. No exceptions.",
                 "- An action with NO EFFECT (observation unchanged) means that way is BLOCKED: switch direction "
                 "at once."],
    "corridorbattle": ["TIPS FOR THIS TASK (corridor battle):",
                       "- Make your way through dark corridors, fighting monsters, to the stairs '>'.",
                       "- Attack a monster you can see by moving INTO its tile.",
                       "- FIGHT WHILE ADVANCING: keep moving TOWARD the goal while you fight.",
                       "  Moving into a monster's tile hits it AND keeps you going forward.",
                       "- Do NOT stand still in a fight: keep pushing east/northeast.",
                       "- Do NOT run from monsters: FIGHT them, or they will",
                       "  surround you and kill you.",
                       "- In the DARK, the language observation tells of things beyond what you can see:",
                       "  trust it!",
                       "- When HP runs low, eat something ('eat', then the item's letter).",
                       "- Watch for the stairs down '>': reaching them finishes the level."],
    "corridor": ["TIPS FOR THIS TASK (finding the way through corridors):",
                 "- Go from room to room through corridors and doors.",
                 "- A door '+' is opened in TWO separate steps:",
                 "  Step 1: output 'open'",
                 "  Step 2: when the game asks 'In what direction?', output ONLY the direction (such as "
                 "'east'). Do NOT output 'open' again.",
                 "- A locked door may give way to 'kick' and then the direction.",
                 "- When stuck, 'search' for hidden doors or passages.",
                 "- The stairs DOWN '>' are the goal. The stairs UP '<' are NOT.",
                 "- DOORS are how you get on! When a '+' shows on the map,",
                 "  go to it and open it. See DOORS ON MAP in the map analysis.",
                 "- Once a door is open, walk THROUGH it to the far side.",
                 "- Move methodically: unvisited directions first."],
    "quest": ["TIPS FOR THIS TASK (quest):",
              "- Get to the stairs down '>': that is the main goal.",
              "- When the stairs show on the map, keep heading TOWARD them.",
              "- Attack monsters by moving into their tile. Fight at once.",
              "- LAVA ('}') KILLS and can NOT be crossed. Never step into lava.",
              "- When lava stands between you and the stairs, you MUST go AROUND it:",
              "  follow the lava far north or south until there is a gap,",
              "  then turn back toward the stairs. Stick to the detour!",
              "- Do NOT go back and forth beside the lava. Choose a direction and keep to it.",
              "- Explore methodically: always prefer UNVISITED directions.",
              "- Do NOT circle around the start. Push outward, toward the stairs.",
              "- Watch HP! When it is low, eat something or pray."],
}


def task_tips(task):
    """The tips of the first TIPS key the task id contains ('corridorbattle' before 'corridor'), or ""."""
    key = next((k for k in TIPS if k in (task or "").lower()), None)
    return "\n".join(TIPS[key]) if key else ""


def game_prompt(text):
    """The notice for a game prompt in the observation ("In what direction?" or one of the 5 item questions), or ""."""
    if DIRECTION_PROMPT in text:
        return ("*** GAME PROMPT: the game asks 'In what direction?' ***\n"
                "The command you gave before ('open', 'kick', 'fight' and the like) needs a DIRECTION to finish.\n"
                "Output ONLY a direction word: north, south, east, west, northeast, northwest, southeast, southwest.\n"
                "No other command now ('open', 'search' and so on).")
    asked = next((p for p in ITEM_PROMPTS if p in text), None)
    return (f"*** GAME PROMPT: the game asks '{asked}' ***\n"
            "Answer with ONLY the one letter of the item (such as 'a', 'b', 'c').\n"
            "No full command.") if asked else ""


def recent_log(memory):
    """RECENT ACTIONS LOG: the last 5 lines of actions_log.txt (read before this step's LOG, as theirs)."""
    try:
        text = memory.read("actions_log.txt")
    except FileNotFoundError:
        text = ""
    tail = "\n".join(text.splitlines()[-LOG_TAIL:]) if text.strip() else "(no actions logged yet)"
    return "RECENT ACTIONS LOG (auto-loaded):\n" + tail


def auto_log(ctx):
    """When LOG wrote nothing (no APPEND, WRITE or CREATE), append "Step N action 'X': [auto-logged]" to actions_log.txt
    (N the previous step, X the action the env ran)."""
    if ctx.prev_executed and not any(name in ("APPEND", "WRITE", "CREATE") for name, args in ctx.log_ops):
        ctx.write("APPEND", "actions_log.txt", f"Step {ctx.step - 1} action '{ctx.prev_executed}': [auto-logged]")


def repair(action):
    """v0's two-step repair ('eat d' -> 'eat'), then 'go <direction>' and 'move <direction>' -> '<direction>'."""
    action = repair_two_step(action)
    words = action.split(None, 1)
    if len(words) == 2 and words[0].lower() in ("go", "move") and words[1].strip().lower() in NEIGHBOURS:
        return words[1].strip().lower()
    return action


# ----------------------------------------------------------------------------- hook entry points

def observe(ctx):
    """Everything from this step's observation, in the authors' order (before LOG): position (paused during a game
    prompt), action history, map analysis, exploration, stairs, mandatory move, tips, log tail. Returns the analysis."""
    state = ctx.episode
    if not state:
        state.update(actions=[], pos=None, path=[], visits={}, failed=[], directive=None)
    text, task = ctx.obs.text, ctx.game.task
    notice = game_prompt(text)
    if not notice:
        track_position(state, text)
    if ctx.prev_executed is not None:
        state["actions"] = (state["actions"] + [ctx.prev_executed])[-HISTORY:]
    facts = read_nle_map(text)
    passable = passable_moves(facts, task)
    mandatory = mandatory_direction(state, passable)  # computed during prompts too (it marks failed directives)
    state["plan"] = {
        "task_tips": task_tips(task),
        "recent_actions": action_history(state["actions"], task),
        "exploration": exploration_guidance(state, passable),
        "stairs": stairs_directive(facts, passable),
        "mandatory": mandatory_directive(state["visits"].get(state["pos"], 0), mandatory)
        if mandatory and not notice else "",
        "game_prompt": notice,
        "recent_log": recent_log(ctx.memory),
    }
    return map_analysis(facts, task)


def before_plan(ctx):
    """PLAN's slots; during a game prompt the direction-only template (no memory, a passable direction)."""
    slots = dict(ctx.episode["plan"])
    return {**slots, "prompt": "plan_direction"} if slots["game_prompt"] else slots


def after_log(ctx):
    auto_log(ctx)


def repair_action(ctx, action):
    return repair(action)
