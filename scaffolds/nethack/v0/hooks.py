"""v0 hooks: a map analysis (passable/blocked neighbours of '@', visible stairs) appended to each observation."""
from automem import nle_map_analysis


def observe(ctx):
    stats = ctx.obs.state["blstats"]  # map rows are the 21 dungeon rows: map[y][x] is '@'
    return nle_map_analysis(ctx.obs.state["map"], stats["x"], stats["y"])
