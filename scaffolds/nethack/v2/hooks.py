"""nethack v2 hooks: the programmatic part of the authors' converged nethack_v2, re-expressed (one function per
mechanism; the hook entry points at the bottom call them in their order).

Step order, as theirs: observe (position tracker, v0 MAP ANALYSIS) -> LOG -> after_log (auto-prune) -> before_plan
(current_status.txt and inventory.txt rewritten, step 0 included; stairs, oscillation and game status slots) ->
PLAN -> repair_action (v0's two-step repair). UPSERT_MAP is a custom op (custom_op -> upsert_map).

Where this differs from their code, on purpose:
- Stairs next to you (stairs_notices): FIXED. Theirs takes the direction from the first entry of a frozenset of the
  8 directions found as a substring of a map-analysis line mentioning stairs and DOWN or '>', so a stair to the
  northeast may come out as "east" or "north" depending on Python's string hash seed (different per process), and a
  '>' seen several tiles away is announced as "1 tile" away when the stair next to you is '<'. Their output is not
  reproducible from run to run, so this version names the exact direction of a '>' next to you, and only that.
- Tiles explored (track_position): REPRODUCED. Their position pattern looks for digits right after "position" or
  "cursor", but the observation's cursor block is "cursor:\\n<what is there>\\n(x=.., y=..)", so it never matches:
  no position line and "Tiles explored: 0" on every step, in the PLAN status block and in current_status.txt.
- Op order and refusals (kit core): ops run in the order written (theirs grouped by type, UPSERT_MAP after APPEND
  and before WRITE), and a malformed UPSERT_MAP answers with an error line where theirs dropped it silently.
"""
import re

from hook_helpers import nle_map_analysis, repair_two_step
from memory_fs import TAG, TERMINATORS

MAP_FILE = "dungeon_map.txt"
PRUNE = {"actions_log.txt": (200, 100), "strategy.txt": (60, 25), "monster_encounters.txt": (150, 50)}  # over, keep
RECENT_ACTIONS = 20      # committed actions remembered (repaired, lower-cased)
OSCILLATION_WINDOW = 10  # last committed actions looked at
OSCILLATION_REVERSALS = 3
STATUS_ACTIONS = 6       # last actions in the PLAN status block
STATUS_FILE_ACTIONS = 10  # ... and in current_status.txt
HUNGER = ("Satiated", "Hungry", "Weak", "Fainting")  # the first one found wins; none: Normal
CONDITIONS = ("FoodPois", "Ill", "Conf", "Stun", "Hallu", "Blind")  # substrings of the whole text, as theirs
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east",
            "northeast": "southwest", "southwest": "northeast", "northwest": "southeast", "southeast": "northwest"}
BACK = {**OPPOSITE, **{f"far {a}": f"far {b}" for a, b in OPPOSITE.items()}}  # each move and the one undoing it


def op_body(op):
    """The op's text between its tags as written (op.args lose the spaces around every '|')."""
    tags = list(TAG.finditer(op.raw))
    last = tags[-1]
    closed = len(tags) > 1 and last.end() == len(op.raw) and last.group(3).upper() in TERMINATORS + (op.name,)
    return op.raw[tags[0].end():last.start() if closed else len(op.raw)]


def whole_number(text):
    """int(text) as Python reads it (spaces and a sign allowed), or None."""
    try:
        return int(text)
    except ValueError:
        return None


def upsert_map(ctx, op):
    """UPSERT_MAP x,y|description: drop every dungeon_map.txt line starting "(x,y):" and append "(x,y): description";
    x and y must be whole numbers (parentheses and spaces tolerated), else nothing is written."""
    coords, bar, description = op_body(op).partition("|")
    parts = coords.strip().strip("()").split(",")
    x, y = (whole_number(p) for p in parts) if len(parts) == 2 else (None, None)
    if x is None or y is None or not description.strip():
        raise ValueError("nothing written; write whole-number coordinates and a description: "
                         "<|UPSERT_MAP|>x,y|description<|END|>")
    key = f"({x},{y})"
    old = ctx.memory.read(MAP_FILE).splitlines() if MAP_FILE in ctx.memory.names() else []
    ctx.write("WRITE", MAP_FILE, "\n".join([line for line in old if not line.startswith(key + ":")]
                                           + [f"{key}: {description.strip()}"]))
    return f"[UPSERT_MAP {key}] map entry for {key} stored (any older {key} entry replaced)"


def prune(ctx):
    """Cut each long file to its newest lines under a "[k older entries pruned]" line (over 200 -> 100 for
    actions_log.txt, 60 -> 25 for strategy.txt, 150 -> 50 for monster_encounters.txt)."""
    for name, (most, keep) in PRUNE.items():
        lines = ctx.memory.read(name).splitlines() if name in ctx.memory.names() else []
        if len(lines) > most:
            ctx.write("WRITE", name, "\n".join([f"[{len(lines) - keep} older entries pruned]"] + lines[-keep:]))


def read_status(text):
    """Their status parse of the whole observation text: Dlvl, HP, Xp, gold, hunger, conditions, position."""
    status = {}
    for key, pattern in (("dlvl", r"Dlvl:(\d+)"), ("xp", r"Xp:(\d+)"), ("gold", r"\$:(\d+)")):
        found = re.search(pattern, text)
        if found:
            status[key] = int(found[1])
    hp = re.search(r"HP:(\d+)\((\d+)\)", text)
    if hp:
        status["hp"], status["hp_max"] = int(hp[1]), int(hp[2])
    status["hunger"] = next((word for word in HUNGER if re.search(rf"\b{word}\b", text)), "Normal")
    status["conditions"] = [c for c in CONDITIONS if c in text]
    where = re.search(r"[Pp]osition[:\s]*\(?(\d+)[,\s]+(\d+)", text) or re.search(r"[Cc]ursor[:\s]*\(?(\d+)[,\s]+(\d+)", text)
    if where:
        status["position"] = (int(where[1]), int(where[2]))
    return status


def track_position(ctx):
    """Add this step's position to the episode's visited set (their pattern: stays empty on real observations)."""
    position = read_status(ctx.obs.text).get("position")
    visited = ctx.episode.setdefault("visited", set())
    if position:
        visited.add(position)


def recent_actions(ctx):
    """The last 20 committed actions (after repair, fallback included), lower-cased."""
    return [a.strip().lower() for a in ctx.actions[-RECENT_ACTIONS:]]


def oscillation_warning(recent):
    """A warning when the moves among the last 10 committed actions turn back >= 3 times (so they are >= 4 moves,
    their other threshold)."""
    moves = [a for a in recent[-OSCILLATION_WINDOW:] if a in BACK]
    reversals = sum(BACK[a] == b for b, a in zip(moves, moves[1:]))
    if reversals < OSCILLATION_REVERSALS:
        return ""
    return (f"WARNING: you keep going back and forth between opposite directions ({reversals} reversals in your last "
            f"{len(moves)} moves: {' -> '.join(moves[-6:])}). STOP this pattern and do something COMPLETELY "
            "DIFFERENT: 'search' for hidden passages, 'open' a door nearby, take a diagonal (northeast, southeast and "
            "so on), or explore a corridor you have not been in yet.")


def adjacent_stairs_down(analysis):
    """The direction of a '>' next to you in the v0 MAP ANALYSIS text, or None."""
    for line in analysis.splitlines():
        if line.startswith("STAIRS NEXT TO YOU: "):
            for entry in line.split(": ", 1)[1].split("; "):
                direction, colon, what = entry.partition(": ")
                if what.startswith("'>'"):
                    return direction
    return None


def stairs_notices(text, analysis):
    """(block before the instruction, reminder after the last line): on the stairs down ("staircase/stairway down
    here" in the text), output 'down'; a '>' next to you, go that way."""
    low = text.lower()
    if "staircase down here" in low or "stairway down here" in low:
        return ("!!! TOP PRIORITY: YOU ARE STANDING ON THE STAIRS DOWN ('>') !!!\n"
                "Output <|ACTION|>down<|END|> to go down to the next level.\n"
                "Going down is ALWAYS the right move: it is your MAIN GOAL.\n"
                "No exploring, no picking up, no fighting: only go DOWN.\n\n",
                "\n\nREMINDER: the stairs down ('>') are under you. Output <|ACTION|>down<|END|> NOW and "
                "nothing else.")
    direction = adjacent_stairs_down(analysis)
    if direction:
        return (f"!!! HIGH PRIORITY: THE STAIRS DOWN ARE 1 TILE {direction.upper()} OF YOU !!!\n"
                f"Move {direction} onto them, then output 'down' to descend.\n"
                "Nothing matters more now: do not get sidetracked.\n\n",
                f"\n\nREMINDER: the stairs down are {direction} of you. Go {direction} NOW.")
    return "", ""


def game_status(ctx, status):
    """The PLAN status block (only when Dlvl is read): Dlvl | HP cur/max (pct%) | Hunger | Xp | Step, the
    conditions, the last 6 actions, tiles explored."""
    if not status.get("dlvl"):
        return ""
    fields = [f"Dlvl:{status['dlvl']}"]
    if "hp" in status:
        percent = status["hp"] * 100 // status["hp_max"] if status["hp_max"] > 0 else 0
        fields.append(f"HP:{status['hp']}/{status['hp_max']} ({percent}%)")
    fields.append(f"Hunger:{status['hunger']}")
    if "xp" in status:
        fields.append(f"Xp:{status['xp']}")
    fields.append(f"Step:{ctx.step}")
    lines = ["=== GAME STATUS ===", " | ".join(fields)]
    if status["conditions"]:
        lines.append(f"!!! CONDITIONS: {', '.join(status['conditions'])}: deal with them now !!!")
    recent = recent_actions(ctx)
    if recent:
        lines.append("Last actions: " + ", ".join(recent[-STATUS_ACTIONS:]))
    lines.append(f"Tiles explored: {len(ctx.episode.get('visited', ()))}")
    return "\n".join(lines)


def write_status_file(ctx, status):
    """Rewrite current_status.txt: level, HP, hunger, conditions, XL, gold, position, step, tiles, last 10 actions."""
    lines = ["=== CURRENT STATUS (rewritten by the program every step) ===",
             f"Dungeon level: {status.get('dlvl', 'Unknown')}"]
    if "hp" in status:
        lines.append(f"HP: {status['hp']}/{status['hp_max']}")
    lines.append(f"Hunger: {status['hunger']}")
    if status["conditions"]:
        lines.append(f"!!! CONDITIONS: {', '.join(status['conditions'])} !!!")
    if "xp" in status:
        lines.append(f"Experience level: {status['xp']}")
    if "gold" in status:
        lines.append(f"Gold: {status['gold']}")
    if "position" in status:
        lines.append("Position: ({},{})".format(*status["position"]))
    lines += [f"Step: {ctx.step}", f"Tiles explored: {len(ctx.episode.get('visited', ()))}"]
    recent = recent_actions(ctx)
    if recent:
        lines += ["", "=== LAST ACTIONS ==="] + [f"  {a}" for a in recent[-STATUS_FILE_ACTIONS:]]
    ctx.write("WRITE", "current_status.txt", "\n".join(lines))


def write_inventory_file(ctx):
    """Rewrite inventory.txt with the observation's inventory block (left as it is when the block is empty)."""
    if ctx.obs.short.strip():
        ctx.write("WRITE", "inventory.txt", "=== INVENTORY (rewritten by the program every step) ===\n"
                  + ctx.obs.short.strip())


# ----------------------------------------------------------------------------- hook entry points

def observe(ctx):
    track_position(ctx)
    return nle_map_analysis(ctx.obs.text)


def after_log(ctx):
    prune(ctx)


def before_plan(ctx):
    status = read_status(ctx.obs.text)
    write_status_file(ctx, status)
    write_inventory_file(ctx)
    alert, reminder = stairs_notices(ctx.obs.text, nle_map_analysis(ctx.obs.text))
    return {"stairs_alert": alert, "stairs_reminder": reminder,
            "oscillation": oscillation_warning(recent_actions(ctx)), "game_status": game_status(ctx, status)}


def custom_op(ctx, op):
    return upsert_map(ctx, op)


def repair_action(ctx, action):
    return repair_two_step(action)
