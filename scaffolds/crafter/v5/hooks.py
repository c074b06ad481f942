"""crafter v5 hooks: the programmatic context, gates and repair of the authors' converged crafter_v5, re-expressed.

One function per mechanism; the hook entry points at the bottom call them in the authors' order:
  observe (every step, before LOG): the trackers (last 20 (action, changed) pairs, Noop streak, steps without an
      inventory gain, craft failures, actions that took effect, the last inventory and health) and the notices that
      depend on them, kept in ctx.episode["now"] for the step;
  before_log: inventory changes, craft failure, threat, vitals, compaction (the scaffold's LOG slots);
  before_plan: vitals, threat, repetition, craft context, tech tree, stagnation, Noops, goals.txt (PLAN slots);
  check_action: materials, then sleep safety, then the Noop streak (the first reason wins; limits.gate_retries: 2);
  repair_action: v0's two-step repair, then case and diagonals.
What is read from the observation: its text, as the authors parsed it, for what only the text says (things in
view with distance and direction, the tile in front, a word in view, whether the observation changed); obs.state
for the inventory and the vitals, which the text prints from the same numbers (`inventory`, `vitals`).
"""
import re

from hook_helpers import repair_two_step

CRAFTS = ("Make Wood Pickaxe", "Make Stone Pickaxe", "Make Iron Pickaxe",
          "Make Wood Sword", "Make Stone Sword", "Make Iron Sword")
HOSTILE = ("zombie", "skeleton")
COSTS = {  # what each placement or craft spends (crafter's data.yaml); the gate checks these, not the table's distance
    "Place Table": {"wood": 2}, "Place Stone": {"stone": 1}, "Place Furnace": {"stone": 4},
    "Place Plant": {"sapling": 1},
    "Make Wood Pickaxe": {"wood": 1}, "Make Wood Sword": {"wood": 1},
    "Make Stone Pickaxe": {"wood": 1, "stone": 1}, "Make Stone Sword": {"wood": 1, "stone": 1},
    "Make Iron Pickaxe": {"wood": 1, "coal": 1, "iron": 1}, "Make Iron Sword": {"wood": 1, "coal": 1, "iron": 1},
}
RECENT_KEPT = 20  # (action, changed) pairs remembered
SEEN_LINE = re.compile(r"- (\S+) (\d+) steps? to your (.+)")  # "- tree 2 steps to your north-west"
FRONT = re.compile(r"You face (\S+) at your front")
DIAGONAL = re.compile(r"move (north|south)[- ]?(east|west)")


# ----------------------------------------------------------------------------- reading the observation

def inventory(obs):
    """Items held, zero counts left out (obs.state; the text's "Your inventory" list shows the same non-zero items)."""
    return {k: v for k, v in obs.state.get("inventory", {}).items() if v}


def vitals(obs):
    """health, food, drink, energy (obs.state; the text's "- health: N/9" lines print the same numbers)."""
    return obs.state.get("status", {})


def things_in_view(obs):
    """(name, distance, direction) for every "- name N steps to your DIR" line of the text, then the tile in front
    as (name, 0, "in front") (text: only the text has distances and directions)."""
    found = []
    for line in obs.text.splitlines():
        m = SEEN_LINE.match(line.strip())
        if m:
            found.append((m.group(1).lower(), int(m.group(2)), m.group(3).strip()))
    m = FRONT.search(obs.text)
    if m:
        found.append((m.group(1).lower(), 0, "in front"))
    return found


def nearest(obs):
    """{name: (distance, direction)} of the closest of each thing in view (the first one wins a tie)."""
    near = {}
    for name, dist, where in things_in_view(obs):
        if name not in near or dist < near[name][0]:
            near[name] = (dist, where)
    return near


# ----------------------------------------------------------------------------- trackers (observe)

def remember_action(recent, action, changed):
    """The last RECENT_KEPT (executed action, observation changed) pairs, for the repetition warning."""
    return (recent + [[action, changed]])[-RECENT_KEPT:]


def count_noops(noops, action):
    """Consecutive executed Noops: +1 after a Noop, 0 after any other action, unchanged at the first step."""
    return noops + 1 if action == "Noop" else 0 if action is not None else noops


def count_idle(idle, before, now):
    """Steps without an inventory gain: 0 when an item count rose, or when the previous inventory was empty."""
    gained = not before or any(n > before.get(item, 0) for item, n in now.items())
    return 0 if gained else idle + 1


# ----------------------------------------------------------------------------- notices

def vital_urgency(obs):
    """LOG and PLAN: health <= 2 critical, <= 4 warning; food and drink <= 1 critical, <= 3 warning; energy ignored."""
    v = vitals(obs)
    health, food, drink = v.get("health", 9), v.get("food", 9), v.get("drink", 9)
    lines = []
    if health <= 2:
        lines.append(f"CRITICAL: health is {health}/9, you are close to death. Get food (a cow or a plant) or "
                     "water RIGHT NOW.")
    elif health <= 4:
        lines.append(f"WARNING: health is {health}/9. Keep out of fights; go for food or water.")
    if food <= 1:
        lines.append(f"CRITICAL: food is {food}/9, you are about to starve. Hit a cow with Do or eat a plant NOW.")
    elif food <= 3:
        lines.append(f"WARNING: food is {food}/9 and falling. Find something to eat soon.")
    if drink <= 1:
        lines.append(f"CRITICAL: drink is {drink}/9, you are about to die of thirst. Face water and use Do NOW.")
    elif drink <= 3:
        lines.append(f"WARNING: drink is {drink}/9 and falling. Find water soon.")
    return "=== STAYING ALIVE ===\n" + "\n".join(lines) if lines else ""


def inventory_changes(before, now):
    """LOG: GAINED/LOST +-k item (now n) against the previous step's inventory, by item name; "" when that was empty."""
    if not before:
        return ""
    lines = []
    for item in sorted(set(before) | set(now)):
        old, new = before.get(item, 0), now.get(item, 0)
        if new != old:
            lines.append(f"{'GAINED' if new > old else 'LOST'}: {'+' if new > old else '-'}{abs(new - old)} "
                         f"{item} (now {new})")
    if not lines:
        return ""
    return ("=== INVENTORY CHANGES SINCE YOUR LAST ACTION ===\n" + "\n".join(lines) +
            "\nA change here PROVES that your last action did something: log what really changed.")


def craft_failure_notice(episode, action, changed):
    """LOG: after a Make action that changed nothing, a notice; from the 2nd failure on, 'attempt n' and the way to a
    table. The count goes back to 0 only after a Make action that worked (other actions leave it)."""
    if action not in CRAFTS:
        return ""
    if changed:
        episode["craft_fails"] = 0
        return ""
    episode["craft_fails"] = n = episode.get("craft_fails", 0) + 1
    if n >= 2:
        return (f"=== CRAFT FAILED (attempt {n}) ===\n"
                f"'{action}' did NOTHING: no crafting table is within reach. Stop crafting here. Either:\n"
                "  1. walk around until you find the table you placed, or\n"
                "  2. gather wood and place a NEW table (face grass, sand or path, then Place Table).\n"
                "Log this failure in actions_log.txt.")
    return ("=== CRAFT FAILED ===\n"
            f"'{action}' did NOTHING. Most of the time that means no crafting table is within one tile of you: "
            "stand next to a placed table before you craft. Log this failure.")


def threat_warning(obs, last_health):
    """LOG and PLAN: health lost since the last step; a zombie or skeleton within 2 steps (flee at health <= 3); a
    skeleton within 4; an arrow within 2."""
    health = vitals(obs).get("health", 9)
    lines = []
    if last_health is not None and health < last_health:
        lines.append(f"YOU LOST {last_health - health} HEALTH last step (now {health}/9): something hostile is "
                     "hitting you.")
    seen = things_in_view(obs)
    for name, dist, where in seen:
        if name in HOSTILE and dist <= 2:
            lines.append(f"CRITICAL: {name} {dist} step(s) {where}, RUN NOW! Health {health}/9: one more hit may "
                         "kill you." if health <= 3 else
                         f"THREAT: {name} {dist} step(s) {where}. Fight it (face it, then Do) or get away.")
        elif name == "skeleton" and dist <= 4:
            lines.append(f"CAUTION: skeleton {dist} steps {where}; skeletons shoot arrows from afar. Keep watch.")
    for name, dist, where in seen:
        if name == "arrow" and dist <= 2:
            lines.append(f"ARROW INCOMING {dist} step(s) {where}: a skeleton is shooting at you!")
    return "=== DANGER ===\n" + "\n".join(lines) if lines else ""


def repetition_warning(recent):
    """PLAN: of the last 8 pairs, those with the latest action: >= 3 without effect -> a craft alert (Make) or a
    repetition alert; else >= 5 of them with >= 2 failures -> a warning; else the last 6 actions with <= 2 distinct
    and >= 5 moves -> a stuck warning."""
    if not recent:
        return ""
    last = recent[-1][0]
    same = [changed for action, changed in recent[-8:] if action == last]
    fails = same.count(False)
    if fails >= 3 and last in CRAFTS:
        return ("=== CRAFTING KEEPS FAILING ===\n"
                f"'{last}' has FAILED {fails} times: no crafting table is beside you. STOP crafting. First either:\n"
                "  1. walk around to find the table you placed, or\n"
                "  2. gather wood and place a NEW table (face grass, sand or path, then Place Table).\n"
                "Craft again only once a table is next to you.")
    if fails >= 3:
        return ("=== REPETITION ALERT ===\n"
                f"'{last}' did NOTHING in {fails} of its last {len(same)} tries. It is NOT working: do something "
                "entirely different. READ game_knowledge.txt for the prerequisite you lack (a pickaxe to mine, "
                "a table to craft, a free tile to place).")
    if len(same) >= 5 and fails >= 2:
        return ("=== REPETITION WARNING ===\n"
                f"'{last}' done {len(same)} times, {fails} of them without effect. Think of another way.")
    last6 = [action for action, changed in recent[-6:]]
    if len(recent) >= 6 and len(set(last6)) <= 2 and sum(a.startswith("Move") for a in last6) >= 5:
        return ("=== STUCK WARNING ===\n"
                f"Your last 6 actions go back and forth ({', '.join(last6)}) and get nowhere: you are STUCK. "
                "Head off in a direction you have not tried lately.")
    return ""


def craft_context(obs, action, changed):
    """PLAN: right after a Place Table (or Place Furnace) that worked, make the tools now; else, with "table" in the
    text, the tools the inventory can make there (wood: wood tools not held; wood and stone: stone ones)."""
    if changed and action == "Place Table":
        return ("=== TABLE JUST PLACED ===\n"
                "Make your tools NOW, before you step away: 'Make Wood Pickaxe' and 'Make Wood Sword' work while "
                "the table is beside you. Walk off and you may never find it again.")
    if changed and action == "Place Furnace":
        return ("=== FURNACE JUST PLACED ===\n"
                "With wood, coal and iron in hand and a table near as well, make the iron tools NOW, before you "
                "move on.")
    if "table" not in obs.text.lower():
        return ""
    inv = inventory(obs)
    wood, stone = inv.get("wood", 0), inv.get("stone", 0)
    held = lambda *tools: any(inv.get(t, 0) for t in tools)
    can = [name for name, ok in (
        ("Make Wood Pickaxe", wood and not held("wood_pickaxe", "stone_pickaxe", "iron_pickaxe")),
        ("Make Wood Sword", wood and not held("wood_sword", "stone_sword", "iron_sword")),
        ("Make Stone Pickaxe", wood and stone and not held("stone_pickaxe", "iron_pickaxe")),
        ("Make Stone Sword", wood and stone and not held("stone_sword", "iron_sword"))) if ok]
    if not can:
        return ""
    return "=== TABLE IN VIEW ===\nA crafting table is in sight. Step next to it and you can make: " + ", ".join(can)


def resource_hint(near, name, in_front=True, absent=True):
    """The planner's '->' line for one resource: in front (when in_front), else the nearest, else (when absent) none
    in view."""
    if name in near:
        dist, where = near[name]
        if dist == 0 and in_front:
            return f"{name.capitalize()} right in front of you: Do NOW"
        return f"Nearest {name}: {dist} step(s) {where}"
    return f"No {name} in view: explore to find some" if absent else None


def best_tool(inv, kind):
    """'Iron', 'Stone' or 'Wood' for the best pickaxe or sword held, else None."""
    return next((tier for tier in ("Iron", "Stone", "Wood") if inv.get(f"{tier.lower()}_{kind}", 0)), None)


def tech_tree_status(obs, done):
    """PLAN, every step: TOOLS, MATERIALS, NEXT (the first rung of the ladder that fits), '->' a resource hint,
    ALSO, EASY WINS (2 at most, while under 6 lines). A table or furnace is "near" when its word is in the text;
    `done` lists the actions that took effect at earlier steps (the previous step's not yet counted)."""
    inv, near, text = inventory(obs), nearest(obs), obs.text.lower()
    pick, sword = best_tool(inv, "pickaxe"), best_tool(inv, "sword")
    table, furnace = "table" in text, "furnace" in text
    tools = [f"{pick} Pickaxe"] * bool(pick) + [f"{sword} Sword"] * bool(sword)
    lines = ["TOOLS: " + (", ".join(tools) or "None")]
    materials = [f"{k}:{inv[k]}" for k in ("wood", "stone", "coal", "iron", "sapling") if inv.get(k, 0)]
    if materials:
        lines.append("MATERIALS: " + ", ".join(materials))
    step, hint = next_rung(inv, near, pick, sword, table, furnace)
    if step:
        lines.append("NEXT: " + step)
    if hint:
        lines.append("  -> " + hint)
    lines += also_craft(inv, pick, sword, table, furnace)
    wins = easy_wins(obs, done, inv, near, pick)
    if wins and len(lines) < 6:
        lines.append("EASY WINS: " + "; ".join(wins[:2]))
    return "=== TECH TREE ===\n" + "\n".join(lines)


def next_rung(inv, near, pick, sword, table, furnace):
    """NEXT's step and its '->' hint, for the tier the tools put the agent on (None where no rung fits)."""
    if pick is None or sword is None:
        return wood_tools_rung(inv, near, pick, table)
    if pick == "Wood":
        return stone_pickaxe_rung(inv, near, table)
    if pick == "Stone":
        return iron_pickaxe_rung(inv, near, table, furnace)
    return "Mine diamond (face diamond, Do; the Iron Pickaxe is enough)", resource_hint(near, "diamond")


def wood_tools_rung(inv, near, pick, table):
    """The wood pickaxe first (4 wood: the table, the pickaxe, and one for the sword), then the wood sword."""
    wood, step, hint = inv.get("wood", 0), None, None
    if pick is None:
        if wood >= 3 and table:
            step = f">>> Make Wood Pickaxe NOW (a table is in view, you hold {wood} wood) <<<"
        elif wood >= 4:
            step = "Place Table (face grass, sand or path; 2 wood), then Make Wood Pickaxe and Make Wood Sword!"
        elif wood >= 3:
            step = "Place Table (2 wood, 1 left for the pickaxe). Better: get 1 more wood first, for the sword too!"
        else:
            step = f"Collect wood (Do on a tree): {4 - wood} more needed"
            hint = resource_hint(near, "tree")
    else:
        if wood >= 1 and table:
            step = f">>> Make Wood Sword NOW (a table is in view, you hold {wood} wood) <<<"
        elif wood >= 3:
            step = "Place Table (2 wood), then Make Wood Sword (1 wood)"
        elif wood >= 1:
            step = f"Find a table, or collect {3 - wood} more wood to place a new table and make the sword"
            hint = resource_hint(near, "tree", in_front=False, absent=False)
        else:
            step = "Collect wood (3 needed: 2 for a table, 1 for the sword)"
            hint = resource_hint(near, "tree", in_front=False, absent=False)
    return step, hint


def stone_pickaxe_rung(inv, near, table):
    """With a wood pickaxe: stone, a table and wood for the stone pickaxe (and the stone sword after it)."""
    wood, stone, step, hint = inv.get("wood", 0), inv.get("stone", 0), None, None
    if stone >= 1 and wood >= 1 and table:
        step = f">>> Make Stone Pickaxe NOW: a table is in view, you hold {wood} wood + {stone} stone <<<"
        if stone >= 2 and wood >= 2 and not inv.get("stone_sword", 0):
            step += " Then Make Stone Sword!"
    elif stone == 0:
        step = "Mine stone (face stone, Do; the Wood Pickaxe is enough)"
        hint = resource_hint(near, "stone")
    elif not table:
        if wood >= 2:
            step = "Place Table (face grass, sand or path; 2 wood) to make the Stone Pickaxe"
            if near.get("grass", (None,))[0] == 0:
                hint = "Grass in front: place the table now!"
        elif wood >= 1:
            step = "1 more wood for a table (it costs 2), then make the Stone Pickaxe"
            hint = resource_hint(near, "tree", in_front=False, absent=False)
        else:
            step = "Collect 2 wood for a table, then make the Stone Pickaxe (3 wood + 1 stone in all)"
            hint = resource_hint(near, "tree", in_front=False, absent=False)
    elif wood == 0:
        step = "Collect wood to craft with (1 or more for the Stone Pickaxe)"
        hint = resource_hint(near, "tree", in_front=False, absent=False)
    return step, hint


def iron_pickaxe_rung(inv, near, table, furnace):
    """With a stone pickaxe: a furnace (4 stone), iron, coal and a table for the iron pickaxe (and sword)."""
    wood, stone, coal, iron = (inv.get(k, 0) for k in ("wood", "stone", "coal", "iron"))
    step, hint = None, None
    if iron >= 1 and coal >= 1 and wood >= 1 and table and furnace:
        step = (f">>> Make Iron Pickaxe NOW: a table and a furnace are in view, you hold {wood} wood + {coal} "
                f"coal + {iron} iron <<<")
        if iron >= 2 and coal >= 2 and wood >= 2 and not inv.get("iron_sword", 0):
            step += " Then Make Iron Sword!"
    elif not furnace and stone >= 4:
        step = f"Place Furnace (face grass, sand or path; 4 stone, you hold {stone})"
        if table:
            step += ", and put it NEAR the table!"
    elif not furnace:
        step = f"Mine {4 - stone} more stone for the furnace (it costs 4 stone, you hold {stone})"
        hint = resource_hint(near, "stone")
    elif iron == 0:
        step = "Mine iron (face iron, Do; the Stone Pickaxe is enough)"
        hint = resource_hint(near, "iron")
    elif coal == 0:
        step = "Mine coal (face coal, Do; any pickaxe)"
        hint = resource_hint(near, "coal")
    elif not table:
        if wood >= 2:
            step = "Place Table (face grass, sand or path; 2 wood) near the furnace, to make iron tools"
        else:
            step = "Collect wood (2 for a table) to set up iron crafting"
            hint = resource_hint(near, "tree", in_front=False, absent=False)
    return step, hint


def also_craft(inv, pick, sword, table, furnace):
    """ALSO: the sword of the pickaxe's tier when its materials are in hand (an iron one needs the furnace too)."""
    wood, stone, coal, iron = (inv.get(k, 0) for k in ("wood", "stone", "coal", "iron"))
    if pick == "Stone" and sword == "Wood" and stone >= 1 and wood >= 1 and table:
        return ["ALSO: Make Stone Sword (the materials are in hand, a table is in view)"]
    if pick == "Iron" and sword != "Iron" and iron >= 1 and coal >= 1 and wood >= 1 and table and furnace:
        return ["ALSO: Make Iron Sword (the materials are in hand, a table and a furnace are in view)"]
    return []


def easy_wins(obs, done, inv, near, pick):
    """Achievements one action away that were not earned yet: sleep, place stone, place a sapling, drink."""
    wins = []
    if "Sleep" not in done and pick is not None:
        wins.append("Sleep, to earn Wake Up (a free achievement)")
    if "Place Stone" not in done and inv.get("stone", 0) > 0 and pick is not None:
        wins.append("Place Stone (face grass, sand or path): a free achievement")
    if "Place Plant" not in done and inv.get("sapling", 0) > 0:
        wins.append("Place Plant (face grass): it grows into food")
    if vitals(obs).get("drink", 9) < 7 and "water" in near:
        wins.append(f"Collect Drink: water {near['water'][0]} step(s) {near['water'][1]}")
    return wins


def stagnation_warning(idle):
    """PLAN: steps without an inventory gain: >= 50 critical, >= 30 warning."""
    if idle >= 50:
        return (f"=== CRITICAL STAGNATION ({idle} steps without a new item) ===\n"
                f"Nothing has entered your inventory for {idle} steps: what you are doing is NOT working. "
                "Change strategy:\n"
                "  1. look at the TECH TREE for what comes next\n"
                "  2. if you need resources, explore somewhere NEW\n"
                "  3. if you need a table, gather 2 wood and place one")
    if idle >= 30:
        return (f"=== STAGNATION WARNING ({idle} steps without a new item) ===\n"
                f"Your inventory has not grown for {idle} steps. Follow the tech tree: gather resources or make tools.")
    return ""


def noop_warning(noops):
    """PLAN: consecutive Noops: >= 8 a spiral alert, >= 4 a warning."""
    if noops >= 8:
        return (f"=== NOOP SPIRAL ALERT ({noops} Noops in a row) ===\n"
                f"You have done NOTHING for {noops} steps running: this throws the game away. Do something useful "
                "NOW: look at the TECH TREE and go for its next goal.")
    if noops >= 4:
        return (f"=== NOOP WARNING ({noops} Noops in a row) ===\n"
                f"You have stood idle for {noops} steps. Do something useful: explore, gather or craft.")
    return ""


def goals_content(memory):
    """PLAN: goals.txt as LOG left it, or a line asking for it when it is missing or blank."""
    text = memory.read("goals.txt") if "goals.txt" in memory.names() else ""
    return text if text.strip() else "(no goals yet: update goals.txt during LOG)"


def compaction_warnings(memory):
    """LOG: a FILE TOO LARGE line for every file over 25 lines but game_knowledge.txt and progress.txt (warns only)."""
    lines = []
    for name in memory.names():
        size = len(memory.read(name).splitlines())
        if name not in ("game_knowledge.txt", "progress.txt") and size > 25:
            lines.append(f"FILE TOO LARGE: {name} has {size} lines. WRITE it again as a summary that keeps only the "
                         "most important recent facts.")
    return "=== MEMORY UPKEEP ===\n" + "\n".join(lines) if lines else ""


# ----------------------------------------------------------------------------- gates and repair

def material_gate(obs, action):
    """Refuse a placement or craft whose COSTS the inventory cannot pay (the exact action name, as committed)."""
    inv = inventory(obs)
    missing = [f"need {n} {item}, you have {inv.get(item, 0)}"
               for item, n in COSTS.get(action, {}).items() if inv.get(item, 0) < n]
    if missing:
        return (f"'{action}' WILL FAIL, materials missing: {'; '.join(missing)}. Gather what is missing first, "
                "then try again.")
    return None


def sleep_gate(obs, action):
    """Refuse Sleep with a zombie or skeleton within 3 steps (the tile in front counts as 0)."""
    if action != "Sleep":
        return None
    for name, dist, where in things_in_view(obs):
        if name in HOSTILE and dist <= 3:
            return (f"Sleep is DANGEROUS: a {name} is {dist} step(s) {where}. It will hit you while you sleep and "
                    "you CANNOT fight back. Get away from hostiles first, then sleep.")
    return None


def noop_gate(noops, action):
    """Refuse Noop after 5 or more consecutive Noops."""
    if action == "Noop" and noops >= 5:
        return f"Noop REFUSED: you already did Noop {noops} times in a row. Pick a USEFUL action."
    return None


def repair_crafter(action, names):
    """Case fixed to the game's action name (noop -> Noop); a diagonal move becomes its north or south part."""
    low = action.strip().lower()
    diagonal = DIAGONAL.fullmatch(low)
    if diagonal:
        return "Move " + diagonal.group(1).capitalize()
    return next((name for name in names if name.lower() == low), action.strip())


# ----------------------------------------------------------------------------- hook entry points

def observe(ctx):
    ep, obs, action = ctx.episode, ctx.obs, ctx.prev_executed
    first = "last_text" not in ep
    changed = first or obs.text.strip() != ep["last_text"]
    if not first and action is not None:
        ep["recent"] = remember_action(ep.get("recent", []), action, changed)
    ep["noops"] = count_noops(ep.get("noops", 0), action)
    inv, before = inventory(obs), ep.get("last_inventory", {})
    ep["idle"] = count_idle(ep.get("idle", 0), before, inv)
    done = ep.setdefault("done", [])
    ep["now"] = {"inventory_changes": inventory_changes(before, inv),
                 "craft_failure": craft_failure_notice(ep, action, changed),
                 "threat": threat_warning(obs, ep.get("last_health")),
                 "craft_context": craft_context(obs, action, changed),
                 "tech_tree": tech_tree_status(obs, done),
                 "stagnation": stagnation_warning(ep["idle"]),
                 "noops": noop_warning(ep["noops"])}
    if action is not None and changed and action not in done:
        done.append(action)
    ep["last_text"], ep["last_inventory"], ep["last_health"] = obs.text.strip(), inv, vitals(obs).get("health", 9)
    return None  # no {analysis}: Crafter has no map analysis


def before_log(ctx):
    now = ctx.episode["now"]
    return {"inventory_changes": now["inventory_changes"], "craft_failure": now["craft_failure"],
            "threat": now["threat"], "vitals": vital_urgency(ctx.obs), "compaction": compaction_warnings(ctx.memory)}


def before_plan(ctx):
    now = ctx.episode["now"]
    return {"vitals": vital_urgency(ctx.obs), "threat": now["threat"],
            "repetition": repetition_warning(ctx.episode.get("recent", [])), "craft_context": now["craft_context"],
            "tech_tree": now["tech_tree"], "stagnation": now["stagnation"], "noops": now["noops"],
            "goals": goals_content(ctx.memory)}


def check_action(ctx, action):
    return (material_gate(ctx.obs, action) or sleep_gate(ctx.obs, action)
            or noop_gate(ctx.episode.get("noops", 0), action))


def repair_action(ctx, action):
    return repair_crafter(repair_two_step(action), ctx.game.actions)
