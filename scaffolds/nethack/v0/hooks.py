"""v0 hooks: a map analysis (passable/blocked neighbours of '@', visible stairs) appended to each observation."""
from automem import nle_map_analysis


def observe(ctx):
    x, y = ctx.obs.state["cursor"]
    return nle_map_analysis(ctx.obs.state["map"], x, y)
