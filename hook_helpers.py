"""
hook_helpers.py: what the shipped scaffolds' hooks.py share, and what a hook written by loop 1's meta-LLM
may import (jail.ALLOWED_IMPORTS): the authors' v0 helpers, re-expressed: their MAP ANALYSIS of a
MiniHack/NetHack text map and their repair of two-step commands. No model, no env, no memory.

Usage (in a scaffold's hooks.py; scaffolds/minihack/v0 and v4 use them so):
    text = nle_map_analysis(ctx.obs.text)                       # v0's MAP ANALYSIS, "" without a map
    facts = read_nle_map(ctx.obs.text)                          # the 8 tiles around '@', far stairs and doors
    text = map_analysis_text(facts, kind=my_tile_kind, doors_on_map=4)   # the same text, classified your way
    action = repair_two_step("eat d")                           # -> "eat" (the game asks for the item next)
"""

NEIGHBOURS = {"north": (-1, 0), "south": (1, 0), "east": (0, 1), "west": (0, -1),  # (row, column) steps, their order
              "northeast": (-1, 1), "northwest": (-1, -1), "southeast": (1, 1), "southwest": (1, -1)}
ITEMS = set("$)[!?/=\"(*%~")


def tile_kind(ch):
    """What a map character is to the v0 map analysis: stairs, door, wall, rock, danger, passable, item, monster, unknown."""
    if ch in "><":
        return {">": "stairs down", "<": "stairs up"}[ch]
    if ch == "+":
        return "door"
    return ("wall" if ch in "-|" else "rock" if ch == " " else "danger" if ch in "}^" else "passable" if ch in ".#{_"
            else "item" if ch in ITEMS else "monster" if ch.isalpha() and ch != "@" else "unknown")


def letter_share(line):
    return sum(c.isalpha() and c != "@" for c in line) / max(len(line), 1)


def compass(drow, dcol):
    return ("north" if drow < 0 else "south" if drow > 0 else "") + ("east" if dcol > 0 else "west" if dcol < 0 else "") or "here"


def read_nle_map(text):
    """The map around '@' in a MiniHack/NetHack observation text, by the authors' v0 rules: the player's row is the
    first line with '@' (3+ characters, under half letters); the map is the non-blank lines 15 above to 14 below it
    that are under 55% letters (blank lines are skipped, so a blank row shifts north/south as in their code).
    Returns {"around": {direction: character, or None off the map}, "far_stairs" / "far_doors": [(Chebyshev
    distance, compass direction)] of the '>' / '+' more than 1 tile away, row by row}, or None without a player row."""
    lines = text.split("\n")
    me = next((i for i, line in enumerate(lines) if "@" in line and len(line.rstrip()) >= 3
               and letter_share(line.rstrip()) < 0.5), None)
    if me is None:
        return None
    col = lines[me].find("@")
    kept = [(i, lines[i].rstrip()) for i in range(max(0, me - 15), min(len(lines), me + 15))
            if lines[i].rstrip() and (letter_share(lines[i].rstrip()) < 0.55 or i == me)]
    at, rows = [i for i, _ in kept].index(me), [row for _, row in kept]
    around = {}
    for name, (drow, dcol) in NEIGHBOURS.items():
        r, c = at + drow, col + dcol
        around[name] = rows[r][c] if 0 <= r < len(rows) and 0 <= c < len(rows[r]) else None
    far = {">": [], "+": []}
    for j, row in enumerate(rows):
        for c, ch in enumerate(row):
            if ch in far and max(abs(j - at), abs(c - col)) > 1:
                far[ch].append((max(abs(j - at), abs(c - col)), compass(j - at, c - col)))
    return {"around": around, "far_stairs": far[">"], "far_doors": far["+"]}


def map_analysis_text(facts, kind=tile_kind, doors_on_map=0):
    """The MAP ANALYSIS text of read_nle_map's facts, each neighbour classified by `kind`: stairs, monsters and doors
    next to you, up to 3 stairs in view, optionally up to `doors_on_map` doors farther away, danger, CAN MOVE and
    BLOCKED (in the authors' order). "" for None."""
    if facts is None:
        return ""
    found = {"stairs": [], "monsters": [], "doors": [], "danger": [], "move": [], "blocked": []}
    for name, ch in facts["around"].items():
        k = "off the map" if ch is None else kind(ch)
        if k.startswith("stairs"):
            found["stairs"].append(f"{name}: '{ch}' {k}" + (", step onto it!" if ch == ">" else ""))
            found["move"].append(f"{name} ({k} '{ch}')")
        elif k == "door":
            found["doors"].append(f"{name}: '+' closed door ('open' it)")
            found["move"].append(f"{name} (door '+')")
        elif k == "monster":
            found["monsters"].append(f"{name}: '{ch}' (attack by moving into it)")
            found["move"].append(f"{name} (monster '{ch}')")
        elif k in ("passable", "item"):
            found["move"].append(f"{name} ('{ch}')")
        elif k == "danger":
            found["danger"].append(f"{name}: '{ch}' dangerous")
        else:
            found["blocked"].append(f"{name} ({k})" if ch in (None, " ") else f"{name} ({k} '{ch}')")
    far = lambda symbol, places, n: [f"'{symbol}' about {d} tiles {where}" for d, where in places[:n]]
    out = ["MAP ANALYSIS (computed from the map):"]
    for label, items, sep in (("STAIRS NEXT TO YOU", found["stairs"], "; "),
                              ("STAIRS IN VIEW", far(">", facts["far_stairs"], 3), "; "),
                              ("MONSTERS NEXT TO YOU", found["monsters"], "; "), ("DOORS", found["doors"], "; "),
                              ("DOORS ON MAP", far("+", facts["far_doors"], doors_on_map), "; "),
                              ("DANGER", found["danger"], "; "), ("CAN MOVE", found["move"], ", "),
                              ("BLOCKED", found["blocked"], ", ")):
        if items:
            out.append(f"{label}: " + sep.join(items))
    return "\n".join(out)


def nle_map_analysis(text):
    """The v0 MAP ANALYSIS of a MiniHack/NetHack observation text ("" when no player row is found)."""
    return map_analysis_text(read_nle_map(text))


TWO_STEP = {"close", "fight", "fire", "kick", "open", "zap",  # the game asks for a direction next
            "apply", "cast", "dip", "drop", "eat", "force", "invoke", "loot", "offer", "pickup", "puton", "quaff",
            "quiver", "read", "remove", "rub", "takeoff", "throw", "wear", "wield"}  # ... or for an item letter


def repair_two_step(action):
    """The authors' v0 repair: a two-step command written with its argument ('eat d', 'open north') becomes the
    command alone, as the game asks for the argument next; 'far <direction>' is a real action and stays."""
    words = action.split(None, 1)
    if len(words) < 2:
        return action.strip()
    command = words[0].lower()
    if command == "far" and words[1].strip().lower() in NEIGHBOURS:
        return action.strip()
    return command if command in TWO_STEP else action.strip()
