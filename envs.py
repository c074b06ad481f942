"""Crafter, MiniHack and NetHack behind one small text interface, with BALROG's observations.

Usage:
    import envs
    envs.tasks("minihack")                      # the 8 BALROG tasks (6 when Boxoban levels are absent)
    game = envs.make("minihack", "MiniHack-MazeWalk-9x9-v0")
    obs = game.reset(seed=42)                   # same seed + same actions -> same texts
    print(game.instruction, obs.text)
    obs, reward, done, info = game.step("north")
    info["valid"], info["progression"]          # unknown names run game.default_action (valid=False)

Observation texts are BALROG's (github.com/balrog-ai/BALROG), rebuilt here:
- NetHack/MiniHack ("hybrid" mode): long = message, language observation (NLELanguageObsv from
  balrog-nle), cursor and the 23 lower tty lines; short = the inventory. "--More--" is skipped by
  pressing MORE and the rewards of those presses are summed into the step reward.
- Crafter: long = nearest thing of each kind in the 9x7 window around the player and what it faces;
  short = vitals and inventory. reset() takes one hidden Noop step, as BALROG does.
obs.text = long + "\\n" + short, the memory agent's view (the authors' harness); after an invalid action
BALROG's invalid-action line opens the long context.
Text modes: "automem" (default, the authors' harness) rewrites MiniHack/NetHack distance words and compound
directions in both contexts ("adjacent" -> "1 step away (directly reachable)", "northnortheast" -> "between north and
northeast"; see rewrite_nle_text); "balrog" leaves BALROG's words (for BALROG-leaderboard comparisons). Crafter is the
same in both. Progression follows BALROG: Crafter unlocked/22; MiniHack 1 on task success (end
status; BALROG's "last reward >= 1" rule is reported as success_balrog); NetHack the best value of
data/nle_achievements.json over the Dlvl:N and Xp:N reached.
NetHack's "00"-"99" (in BALROG's action list, but they crash its step) type their two digits.
Seeds: the same seed and actions give the same game (NLE core and disp RNGs = seed; Crafter world seed =
seed, with creature sets made insertion-ordered); reset() also seeds `random` and numpy, as BALROG does.
Limits (AutoMem's config): Crafter 2000 steps; MiniHack 100 steps, -0.01 step penalty, autopickup on;
NetHack 100,000 steps and NLE's abort after 150 steps without the game clock moving.
Boxoban levels: boxoban_dir argument or $AUTOMEM_BOXOBAN_DIR (see _boxoban_levels).
"""

import collections
import contextlib
import io
import json
import os
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")  # crafter imports gym 0.23, which prints an "unmaintained" notice
    import crafter
NLE_MISSING = None  # load_nle() sets it to the reason when NLE or MiniHack cannot be imported


def load_nle():
    """Import NLE and MiniHack on first use (about 2 s, mostly minihack's `inflect`; Crafter runs skip
    it) and build the NetHack action tables. Returns NLE_MISSING: None once they are loaded."""
    global gym, minihack, nethack, nle_language_obsv, NLELanguageWrapper, NLE_MISSING, KEYS, NLE_NAMES, NETHACK_ACTIONS
    if NLE_MISSING or "KEYS" in globals():
        return NLE_MISSING
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # minihack warns about pkg_resources
        try:  # balrog-nle has only a CPython 3.11 Linux x86-64 wheel; without it Crafter still runs
            import gym
            import minihack  # registers the MiniHack-* gym ids
            import minihack.envs.boxohack
            from nle import nethack, nle_language_obsv
            from nle.language_wrapper.wrappers.nle_language_wrapper import NLELanguageWrapper
        except ImportError as e:
            NLE_MISSING = f"NetHack and MiniHack need balrog-nle==0.9.0 and minihack==0.1.6 on CPython 3.11 (bash install.sh): {e}"
            return NLE_MISSING
    KEYS = {alias: int(enum) for enum, aliases in NLELanguageWrapper.all_nle_action_map.items() for alias in aliases}
    NLE_NAMES = [names[0] for enum, names in NLELanguageWrapper.all_nle_action_map.items()
                 if enum in nethack.USEFUL_ACTIONS]  # 86 command names
    NETHACK_ACTIONS = (NLE_NAMES + [chr(c) for c in range(ord("a"), ord("z") + 1)]
                       + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
                       + [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)])  # 248, BALROG's order
    return None

ENVS = ("crafter", "minihack", "nethack")
BOXOBAN_TASKS = ["MiniHack-Boxoban-Hard-v0", "MiniHack-Boxoban-Medium-v0"]
MINIHACK_TASKS = BOXOBAN_TASKS + [
    "MiniHack-MazeWalk-9x9-v0", "MiniHack-MazeWalk-15x15-v0", "MiniHack-Corridor-R3-v0",
    "MiniHack-CorridorBattle-Dark-v0", "MiniHack-Quest-Easy-v0", "MiniHack-Quest-Medium-v0",
]
MAX_STEPS = {"crafter": 2000, "minihack": 100, "nethack": 100_000}
DEFAULT_ACTION = {"crafter": "Noop", "minihack": "north", "nethack": "esc"}
KNIGHT_TASKS = ("MiniHack-CorridorBattle-Dark-v0", "MiniHack-Quest-Medium-v0")  # BALROG fixes the role here
NETHACK_NO_PROGRESS_TIMEOUT = 150  # NLE aborts after this many steps without the game clock moving
NLE_OBS_KEYS = ("glyphs", "blstats", "tty_chars", "inv_letters", "inv_strs", "tty_cursor")
ACHIEVEMENTS = json.loads((Path(__file__).parent / "data" / "nle_achievements.json").read_text())
BOXOBAN_HELP = (  # the levels are on no package registry
    "download https://github.com/deepmind/boxoban-levels/archive/refs/heads/master.zip, unzip it in a "
    "directory DIR (giving DIR/boxoban-levels-master/medium and .../hard), then pass --boxoban-dir DIR to "
    "eval.py (boxoban_dir=DIR to envs.make) or set AUTOMEM_BOXOBAN_DIR=DIR; the six other MiniHack tasks run without them"
)


@dataclass
class Observation:
    text: str          # what the memory agent sees: long + "\n" + short
    long: str          # BALROG long_term_context (kept in the history), after an invalid action opened by INVALID_ACTION
    short: str         # BALROG short_term_context (shown for the current step only)
    state: dict = field(default_factory=dict)  # structured extras for hooks (see _crafter_observe, _nle_observe)
    feedback: str = ""  # the invalid-action prefix of long, "" after a valid action


TEXT_MODES = ("automem", "balrog")
# The authors' harness (BALROG + one change) rewrites these whole words in MiniHack/NetHack texts, in this order:
# distances first ("very far" before "far"), then the eight compound directions. Case-sensitive, every occurrence.
NLE_REWRITES = [(re.compile(rf"\b{word}\b"), text) for word, text in (
    ("very far", "9+ steps away"), ("very near", "2 steps away"), ("far", "5-8 steps away"),
    ("near", "3-4 steps away"), ("adjacent", "1 step away (directly reachable)"),
    *((a + b + c, f"between {a} and {b}{c}") for a, b, c in (
        ("north", "north", "east"), ("east", "north", "east"), ("east", "south", "east"), ("south", "south", "east"),
        ("south", "south", "west"), ("west", "south", "west"), ("west", "north", "west"), ("north", "north", "west"))))]
INVALID_ACTION = "\n\nYour previous output did not contain a valid action. Defaulted to action: {action}\n\nObservation:\n"


def rewrite_nle_text(text):
    """The authors' rewriting of one MiniHack/NetHack context: distance words to step counts, compound directions spelled out."""
    for pattern, replacement in NLE_REWRITES:
        text = pattern.sub(replacement, text)
    return text


# ----------------------------------------------------------------------------- Crafter
CRAFTER_ACTIONS = [
    "Noop", "Move West", "Move East", "Move North", "Move South", "Do", "Sleep", "Place Stone",
    "Place Table", "Place Furnace", "Place Plant", "Make Wood Pickaxe", "Make Stone Pickaxe",
    "Make Iron Pickaxe", "Make Wood Sword", "Make Stone Sword", "Make Iron Sword",
]  # index i is crafter's action i
CRAFTER_IDS = ["None", "water", "grass", "stone", "path", "sand", "tree", "lava", "coal", "iron",
               "diamond", "table", "furnace", "player", "cow", "zombie", "skeleton", "arrow", "plant"]
VITALS = ("health", "food", "drink", "energy")


# BALROG's Crafter instruction, in our words: one line per action (no recipe quantities, as BALROG), the 22
# achievements in BALROG's order, and BALROG's promise of a history (the memory agent is never shown one).
CRAFTER_HELP = {
    "Noop": "stay where you are and do nothing",
    **{f"Move {d}": f"walk {d.lower()} over flat ground" for d in ("West", "East", "North", "South")},
    "Do": "all-purpose action on what is in front of you: gather a material, drink from a lake, hit a creature",
    "Sleep": "go to sleep; possible while your energy is below its maximum",
    "Place Stone": "put a stone down in front of you",
    "Place Table": "put a table down",
    "Place Furnace": "put a furnace down",
    "Place Plant": "put a plant down",
    "Make Wood Pickaxe": "craft a wood pickaxe; needs a table nearby and wood in your inventory",
    "Make Stone Pickaxe": "craft a stone pickaxe; needs a table nearby and wood and stone in your inventory",
    "Make Iron Pickaxe": "craft an iron pickaxe; needs a table and a furnace nearby and wood, coal and iron in your "
                         "inventory",
    "Make Wood Sword": "craft a wood sword; needs a table nearby and wood in your inventory",
    "Make Stone Sword": "craft a stone sword; needs a table nearby and wood and stone in your inventory",
    "Make Iron Sword": "craft an iron sword; needs a table and a furnace nearby and wood, coal and iron in your "
                       "inventory",
}
CRAFTER_ACHIEVEMENT_NUMBER = {  # each achievement's number in BALROG's list
    "Collect Coal": 18, "Collect Diamond": 22, "Collect Drink": 5, "Collect Iron": 19, "Collect Sapling": 4,
    "Collect Stone": 10, "Collect Wood": 1, "Defeat Skeleton": 13, "Defeat Zombie": 9, "Eat Cow": 3, "Eat Plant": 12,
    "Make Iron Pickaxe": 20, "Make Iron Sword": 21, "Make Stone Pickaxe": 14, "Make Stone Sword": 15,
    "Make Wood Pickaxe": 6, "Make Wood Sword": 7, "Place Furnace": 17, "Place Plant": 8, "Place Stone": 11,
    "Place Table": 2, "Wake Up": 16,
}


def _crafter_instruction(game):
    acts = "\n".join(f"- {name}: {CRAFTER_HELP[name]}" for name in CRAFTER_ACTIONS)
    goals = "\n".join(f"{i}. {name}" for name, i in sorted(CRAFTER_ACHIEVEMENT_NUMBER.items(), key=lambda kv: kv[1]))
    return (
        "You are playing Crafter. Only the actions below are accepted by the game; each comes with a short "
        f"explanation:\n\n{acts}\n\nThe achievements the game lets you unlock:\n{goals}\n\n"
        "Next you will be shown the history of your actions and of what the game showed you.\n"
        "Goal: get as far as you can by unlocking all of the achievements.\n\nPLAY!"
    )


def _crafter_make(game, boxoban_dir):
    game.actions = list(CRAFTER_ACTIONS)


class _OrderedSet(dict):
    """Insertion-ordered set. crafter keeps each world chunk's creatures in a set, which iterates in
    memory-address order, and despawns creatures[random index]: with sets, one seed gives different games."""

    def add(self, item):
        self[item] = None

    def remove(self, item):
        del self[item]


def _crafter_reset(game, seed):  # a fresh crafter.Env per episode: its world seed is fixed when it is built
    game._crafter = crafter.Env(area=(64, 64), view=(9, 9), size=(256, 256), reward=True, length=10000, seed=seed)
    game._crafter.reset()
    world = game._crafter._world
    world._chunks = collections.defaultdict(_OrderedSet)
    for obj in world.objects:  # creation order, so the same seed always rebuilds the same chunks
        world._chunks[world.chunk_key(obj.pos)].add(obj)
    _crafter_step(game, "Noop")  # BALROG's hidden first step, which yields the first info


def _crafter_step(game, action):
    _, reward, done, game._info = game._crafter.step(CRAFTER_ACTIONS.index(action))
    # BALROG renders an image for every observation; at night crafter's render draws noise from the
    # world's random generator, so skipping it would give a different game. frame() returns this image.
    game._frame = game._crafter.render()
    return reward, done, {}


def _crafter_texts(semantic, pos, facing, inventory, sleeping, dead):
    px, py = int(pos[0]), int(pos[1])
    window = semantic[px - 4:px + 5, py - 3:py + 4]  # 9 wide, 7 high: the 9x9 view minus 2 item rows
    cx, cy = 4, 3
    nearest = {}  # name -> (distance, dx, dy); first seen wins ties (column-major scan, as BALROG)
    for i in range(window.shape[0]):
        for j in range(window.shape[1]):
            name = CRAFTER_IDS[window[i, j]]
            d = abs(i - cx) + abs(j - cy)
            if name != "player" and (name not in nearest or d < nearest[name][0]):
                nearest[name] = (d, i - cx, j - cy)
    seen = []
    for name, (d, dx, dy) in nearest.items():
        where = "-".join(w for w, on in (("north", dy < 0), ("south", dy > 0), ("west", dx < 0), ("east", dx > 0))
                         if on)
        seen.append(f"- {name} {d} step{'s' if d > 1 else ''} to your {where}")
    tx, ty = cx + facing[0], cy + facing[1]
    front = CRAFTER_IDS[window[tx, ty]] if 0 <= tx < window.shape[0] and 0 <= ty < window.shape[1] else "nothing"
    long = "You see:\n" + "\n".join(seen) if seen else "You see nothing away from you."
    long += f"\n\nYou face {front} at your front."
    if sleeping or dead:
        status = ("You are sleeping, and will not be able take actions until energy is full." if sleeping
                  else "You died.")
        long = status + "\n\n\n\n" + long  # sic: BALROG's wording and blank lines
    items = "\n".join(f"- {k}: {v}" for k, v in inventory.items() if k not in VITALS and v != 0)
    short = "Your status:\n" + "\n".join(f"- {v}: {inventory[v]}/9" for v in VITALS) + "\n\n"
    short += f"Your inventory:\n{items}" if items else "You have nothing in your inventory."
    return long, short


def _crafter_observe(game):
    info, player = game._info, game._crafter._player
    dead = player.health <= 0
    long, short = _crafter_texts(info["semantic"], info["player_pos"], player.facing, info["inventory"],
                                 player.sleeping, dead)
    inv = {k: int(v) for k, v in info["inventory"].items()}
    state = {
        "pos": [int(p) for p in info["player_pos"]], "facing": [int(f) for f in player.facing],
        "inventory": {k: v for k, v in inv.items() if k not in VITALS},
        "achievements": sorted(k for k, v in info["achievements"].items() if v > 0),
        "status": {**{v: inv[v] for v in VITALS}, "sleeping": bool(player.sleeping), "dead": dead},
    }
    return long, short, state


def crafter_progression(achievements):
    """BALROG's Crafter score: achievements unlocked at least once, out of 22."""
    return sum(1 for count in achievements.values() if count > 0) / 22


def _crafter_score(game, reward, done, env_info):
    unlocked = game._info["achievements"]
    dead = game._crafter._player.health <= 0
    return {"progression": crafter_progression(unlocked), "success": None, "success_balrog": None,
            "end_reason": ("death" if dead else "length") if done else None,
            "achievements": sorted(k for k, v in unlocked.items() if v > 0)}


def _crafter_frame(game):
    return game._frame  # (256, 256, 3) uint8; rendering again would draw from the world's generator


# ----------------------------------------------------------------------------- NetHack and MiniHack
BLSTATS = ["x", "y", "strength_percentage", "strength", "dexterity", "constitution", "intelligence", "wisdom",
           "charisma", "score", "hitpoints", "max_hitpoints", "depth", "gold", "energy", "max_energy",
           "armor_class", "monster_level", "experience_level", "experience_points", "time", "hunger_state",
           "carrying_capacity", "dungeon_number", "level_number", "condition", "alignment"]  # NLE_BL_* order
HUNGER = ["Satiated", "Not Hungry", "Hungry", "Weak", "Fainting", "Fainted", "Starved"]
_DIRS = ("north", "east", "south", "west", "northeast", "southeast", "southwest", "northwest")
NLE_HELP = {
    **{d: f"step one square {d} (walking into a monster attacks it)" for d in _DIRS},
    **{f"far {d}": f"keep moving {d} until something interesting is reached" for d in _DIRS},
    "up": "climb a staircase up (stand on <)", "down": "descend a staircase (you must stand on >)",
    "wait": "stay in place for one turn", "more": "continue a message ending in --More-- (done automatically here)",
    "adjust": "change an item's inventory letter", "apply": "use a tool or other usable item",
    "attributes": "show your character's attributes", "call": "give a name to a monster, item or item type",
    "cast": "cast a spell you know", "chat": "talk to a creature next to you", "close": "close a door next to you",
    "dip": "dip an item into a potion or fountain", "drop": "drop one item", "droptype": "drop several items by kind",
    "eat": "eat food (do it when hungry)", "esc": "cancel the current prompt, menu or message",
    "engrave": "write in the dust on the floor (Elbereth scares most monsters)",
    "enhance": "view or train weapon skills",
    "fire": "shoot what is in your quiver", "fight": "attack in a direction even if nothing is visible there",
    "force": "force a lock open with your weapon", "inventory": "list what you carry",
    "inventtype": "list carried items of one kind", "invoke": "use an artifact's special power",
    "jump": "jump to a nearby square (needs the skill)", "kick": "kick a door, box or monster",
    "look": "describe what lies on your square", "loot": "open a container on your square",
    "monster": "use your monster form's special power", "move": "step without fighting or picking up",
    "movefar": "run without fighting or picking up", "offer": "sacrifice a corpse on an altar",
    "open": "open a door next to you", "pay": "pay a shopkeeper", "pickup": "pick up what lies on your square",
    "pray": "ask your god for help (works when in real trouble, not too often)",
    "puton": "put on a ring, amulet or blindfold",
    "quaff": "drink a potion or from a fountain", "quiver": "choose what to fire", "read": "read a scroll or spellbook",
    "remove": "take off a ring, amulet or blindfold", "ride": "mount or leave a steed", "rub": "rub a lamp or stone",
    "rush": "move until something interesting appears", "rush2": "like rush, a variant that stops at branches",
    "search": "look for hidden doors and passages next to you", "seeamulet": "show the amulet you wear",
    "seearmor": "show the armor you wear", "seegold": "count your gold", "seerings": "show the rings you wear",
    "seespells": "list your spells", "seetools": "show the tools in use", "seetrap": "identify a trap next to you",
    "seeweapon": "show your wielded weapon", "shell": "shell escape (disabled in this game)", "sit": "sit down",
    "swap": "exchange wielded and alternate weapons", "takeoff": "take off one piece of armor",
    "takeoffall": "take off all armor", "throw": "throw an item", "tip": "empty a container",
    "turnundead": "turn undead (knights and priests)", "twoweapon": "toggle fighting with two weapons",
    "untrap": "try to disarm a trap", "versionshort": "show the game version", "wear": "put on armor",
    "wield": "hold a weapon", "wipe": "wipe your face", "zap": "zap a wand", "space": "press the space bar",
}
MINIHACK_NAMES = [*_DIRS, *(f"far {d}" for d in _DIRS), "up", "down", "wait", "more", "apply", "close", "open", "eat",
                  "force", "kick", "loot", "pickup", "pray", "puton", "quaff", "search", "zap"]  # BALROG's 33
NLE_TIPS = (
    "Tips: a message such as \"What do you want to eat? [dgh or ?*]\" is answered with one of the letters it offers; "
    "\"In what direction?\" is answered with a direction. Read the latest message every step. \"It's a wall.\" or "
    "\"It's solid stone.\" means that way is blocked, so try another. Use the language observation and the map "
    "(@ is you, > stairs down) to choose where to go. Attack a monster by moving into it."
)


def _minihack_goal(task):
    t = task.lower()
    if "boxoban" in t:
        return ("this is Boxoban, a Sokoban-like puzzle: push every boulder (` on the map) onto a fountain ({) by "
                "walking into it; a boulder moves only if the square behind it is free.")
    if "quest" in t:
        return "explore the level, fight the monsters, get through the rooms and mazes and reach the stairs down (>)."
    if "corridor" in t:
        return "explore the level and reach the stairs down (>)."
    return "progress as far as you can in the game."


def _nle_instruction(game):
    if game.env == "nethack":
        acts = "\n".join(f"- {n}: {NLE_HELP[n]}" for n in NLE_NAMES)
        return ("You are playing NetHack, a turn-based dungeon crawler.\n"
                "Each step you choose one action; write its name exactly as shown (names are case-sensitive):\n"
                f"{acts}\n- a-z, A-Z: press that letter, e.g. to pick an item in a prompt (outside a prompt it is "
                "the NetHack command on that key)\n- 0-9 and 00-99: type that number (a count or a numeric answer)\n"
                f"{NLE_TIPS}\nGoal: get as far as you can in the game: go down to deeper dungeon levels and gain "
                "experience levels.")
    acts = "\n".join(f"- {n}: {NLE_HELP[n]}" for n in game.actions)
    return ("You are playing MiniHack, a small NetHack level built around one task.\n"
            "Each step you choose one action; write its name exactly as shown (names are case-sensitive):\n"
            f"{acts}\nRepeating an action that changes nothing is pointless.\nGoal: {_minihack_goal(game.task)}")


def _boxoban_levels(boxoban_dir):
    """The boxoban-levels-master directory (holding medium/ and hard/), looked for in the argument, else
    $AUTOMEM_BOXOBAN_DIR, else minihack's dat/ (where BALROG's post-install puts it); the directory itself works too."""
    root = boxoban_dir or os.environ.get("AUTOMEM_BOXOBAN_DIR") or os.path.dirname(minihack.envs.boxohack.LEVELS_PATH)
    for path in (Path(root) / "boxoban-levels-master", Path(root)):
        if (path / "medium").is_dir() and (path / "hard").is_dir():
            return path
    raise FileNotFoundError(f"Boxoban level files not found in {root}: {BOXOBAN_HELP}")


def _nle_make(game, boxoban_dir):
    if game.env == "nethack":
        kwargs = dict(character="@", no_progress_timeout=NETHACK_NO_PROGRESS_TIMEOUT)
    else:
        if game.task in BOXOBAN_TASKS:
            minihack.envs.boxohack.LEVELS_PATH = str(_boxoban_levels(boxoban_dir))  # read when the env is built
        kwargs = dict(character="kni-hum-law-fem" if game.task in KNIGHT_TASKS else "@", penalty_step=-0.01,
                      penalty_time=0.0, penalty_mode="constant", autopickup=True)  # AutoMem: autopickup on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        game._nle = gym.make(game.task, observation_keys=NLE_OBS_KEYS, max_episode_steps=game.max_steps,
                             savedir=None, save_ttyrec_every=0, **kwargs)
    codes = [int(a) for a in game._nle.actions]
    if game.env == "nethack":  # every name is a key sequence; "05" types "0" then "5"
        game.actions = list(NETHACK_ACTIONS)
        game._keys = {a: [codes.index(KEYS[ch]) for ch in (a if a.isdigit() else [a])] for a in NETHACK_ACTIONS}
    else:  # BALROG's names that this task's action set contains, in env.actions order
        names = [NLELanguageWrapper.all_nle_action_map[a][0] for a in game._nle.actions]
        game.actions = list(dict.fromkeys(n for n in names if n in MINIHACK_NAMES))
        game._keys = {n: [names.index(n)] for n in game.actions}
    more = int(nethack.MiscAction.MORE)  # MiniHack's NLE clicks through --More-- itself and often lacks MORE
    game._more = codes.index(more) if more in codes else None
    game._lang = nle_language_obsv.NLELanguageObsv()


def _nle_reset(game, seed):
    game._nle.seed(core=seed, disp=seed, reseed=False)  # disp=core, as MiniHack's own level seeds do
    game._obs = game._nle.reset()
    game._msg = game._lang.text_message(game._obs["tty_chars"]).decode("latin-1")
    game._best = 0.0


def _nle_step(game, action):
    total, done, info = 0.0, False, {}
    for key in game._keys[action]:
        obs, reward, done, info = game._nle.step(key)
        msg = game._lang.text_message(obs["tty_chars"]).decode("latin-1")
        # BALROG's AutoMore: press MORE while the message says --More--, keep the text, sum the rewards
        while game._more is not None and "--More--" in msg and not done:
            obs, more_reward, done, info = game._nle.step(game._more)
            msg = msg.replace("--More--", "\n") + game._lang.text_message(obs["tty_chars"]).decode("latin-1")
            reward += more_reward
        game._obs, game._msg, total = obs, msg, total + reward
        if done:
            break
    return total, done, info


def _nle_observe(game):
    o, lang = game._obs, game._lang
    glyphs = lang.text_glyphs(o["glyphs"], o["blstats"]).decode("latin-1")
    who = lang.text_cursor(o["glyphs"], o["blstats"], o["tty_cursor"]).decode("latin-1")
    inventory = lang.text_inventory(o["inv_strs"], o["inv_letters"]).decode("latin-1")
    lines = [bytes(row).decode("latin-1") for row in o["tty_chars"]]
    row, col = (int(v) for v in o["tty_cursor"])
    long = (f"message:\n{game._msg}\n\nlanguage observation:\n{glyphs}\n\ncursor:\n{who}\n(x={col}, y={row})\n\n"
            "map:\n" + "\n".join(lines[1:]) + "\n\n")  # tty lines 1-23: dungeon rows and the two status lines
    blstats = {name: int(v) for name, v in zip(BLSTATS, o["blstats"])}
    blstats["hunger"] = HUNGER[blstats["hunger_state"]]
    # map[y][x] is the square at blstats x, y; cursor is the tty cursor as in the text (x=col, y=row).
    state = {"map": lines[1:22], "cursor": (col, row), "blstats": blstats, "message": game._msg}
    return long, f"inventory:\n{inventory}\n", state


def nethack_progression(depth, experience_level):
    """BALROG's table value of one NetHack state: max over Dlvl:N and Xp:N (absent keys count 0)."""
    return max(ACHIEVEMENTS.get(f"Dlvl:{depth}", 0.0), ACHIEVEMENTS.get(f"Xp:{experience_level}", 0.0))


def _end_reason(game, info, done):
    return game._nle.unwrapped.StepStatus(info["end_status"]).name if done else None


def _nethack_score(game, reward, done, info):
    b = game._obs["blstats"]
    game._best = max(game._best, nethack_progression(int(b[nethack.NLE_BL_DEPTH]), int(b[nethack.NLE_BL_XP])))
    return {"progression": game._best, "success": None, "success_balrog": None,
            "end_reason": _end_reason(game, info, done)}


def minihack_success(end_status, last_reward):
    """(ours, BALROG's): ours is the env's end status; BALROG's needs the last reward >= 1.0, which misses
    wins worth 0.99 (a fast role's winning move that does not advance the clock pays the -0.01 step penalty)."""
    return int(end_status) == int(minihack.MiniHack.StepStatus.TASK_SUCCESSFUL), last_reward >= 1.0


def _minihack_score(game, reward, done, info):
    ours, balrog = minihack_success(info["end_status"], reward)
    return {"progression": float(ours), "success": ours, "success_balrog": balrog,
            "end_reason": _end_reason(game, info, done)}


def _nle_frame(game):
    return [bytes(row).decode("latin-1") for row in game._obs["tty_chars"]]  # 24 lines of 80 characters


# ----------------------------------------------------------------------------- one interface
GAME_FNS = {
    "crafter": dict(make=_crafter_make, instruction=_crafter_instruction, reset=_crafter_reset, step=_crafter_step,
                    observe=_crafter_observe, score=_crafter_score, frame=_crafter_frame),
    "minihack": dict(make=_nle_make, instruction=_nle_instruction, reset=_nle_reset, step=_nle_step,
                     observe=_nle_observe, score=_minihack_score, frame=_nle_frame),
    "nethack": dict(make=_nle_make, instruction=_nle_instruction, reset=_nle_reset, step=_nle_step,
                    observe=_nle_observe, score=_nethack_score, frame=_nle_frame),
}


class Game:
    """One episode at a time of one env/task; per-env behaviour comes from GAME_FNS[env]."""

    def __init__(self, env, task, max_steps=None, boxoban_dir=None, text="automem"):
        if text not in TEXT_MODES:
            raise ValueError(f"unknown text mode {text!r}: choose one of {', '.join(TEXT_MODES)}")
        self.env, self.task, self.text_mode = env, task, text
        self.max_steps = max_steps or MAX_STEPS[env]
        self.default_action = DEFAULT_ACTION[env]
        self._fn = GAME_FNS[env]
        self._fn["make"](self, boxoban_dir)  # sets self.actions
        self._valid = set(self.actions)
        self.instruction = self._fn["instruction"](self)
        self.t, self.done = 0, True

    def reset(self, seed):
        random.seed(seed)  # BALROG seeds these before reset; Boxoban draws its level with `random`
        np.random.seed(seed)
        self._fn["reset"](self, seed)
        self.t, self.done = 0, False
        return self._observation("")

    def step(self, action):
        if self.done:
            raise ValueError("no episode is running: call reset(seed) before step()")
        valid = isinstance(action, str) and action in self._valid  # exact, case-sensitive, as BALROG
        executed = action if valid else self.default_action
        reward, env_done, env_info = self._fn["step"](self, executed)
        self.t += 1
        self.done = env_done or self.t >= self.max_steps
        info = {"valid": valid, "executed": executed, **self._fn["score"](self, reward, env_done, env_info)}
        if self.done and info["end_reason"] is None:
            info["end_reason"] = "max_steps"
        feedback = "" if valid else INVALID_ACTION.format(action=executed)  # BALROG's, added after the rewriting
        return self._observation(feedback), float(reward), self.done, info

    def _observation(self, feedback):
        long, short, state = self._fn["observe"](self)
        if self.env != "crafter" and self.text_mode == "automem":
            long, short = rewrite_nle_text(long), rewrite_nle_text(short)
        long = feedback + long
        return Observation(text=long + "\n" + short, long=long, short=short, state=state, feedback=feedback)

    def frame(self):
        """Crafter: RGB uint8 array (256, 256, 3); NetHack/MiniHack: the 24 tty lines as strings."""
        return self._fn["frame"](self)

    def close(self):
        if self.env != "crafter":
            self._nle.close()


def tasks(env, boxoban_dir=None):
    """Task ids of an env; MiniHack leaves out the Boxoban tasks when their level files are absent."""
    if env == "crafter":
        return ["default"]
    if env == "nethack":
        return ["NetHackChallenge-v0"]
    if env == "minihack":
        if load_nle():
            raise ValueError(NLE_MISSING)
        try:
            _boxoban_levels(boxoban_dir)
            return list(MINIHACK_TASKS)
        except FileNotFoundError:
            return [t for t in MINIHACK_TASKS if t not in BOXOBAN_TASKS]
    raise ValueError(f"unknown env {env!r}: choose one of {', '.join(ENVS)}")


def action_names(env):
    """Every action name of an env over all its tasks (a MiniHack task has a subset), or None when NLE is missing."""
    if env == "crafter":
        return list(CRAFTER_ACTIONS)
    if load_nle():
        return None
    return list(MINIHACK_NAMES) if env == "minihack" else list(NETHACK_ACTIONS)


def make(env, task=None, max_steps=None, boxoban_dir=None, text="automem"):
    """A Game for env ('crafter', 'minihack', 'nethack'). task defaults to 'default', 'NetHackChallenge-v0' or
    'MiniHack-MazeWalk-9x9-v0'; MiniHack takes any registered MiniHack-* id (BALROG's suite: MINIHACK_TASKS)."""
    if env not in ENVS:
        raise ValueError(f"unknown env {env!r}: choose one of {', '.join(ENVS)}")
    default = {"crafter": "default", "nethack": "NetHackChallenge-v0", "minihack": "MiniHack-MazeWalk-9x9-v0"}[env]
    task = task or default
    if env != "minihack" and task != default:
        raise ValueError(f"{env} has one task, {default!r}, not {task!r}")
    if env == "minihack" and not task.startswith("MiniHack-"):
        raise ValueError(f"unknown MiniHack task {task!r}: use one of {', '.join(MINIHACK_TASKS)}")
    if env != "crafter" and load_nle():
        raise ValueError(NLE_MISSING)
    return Game(env, task, max_steps, boxoban_dir, text)
