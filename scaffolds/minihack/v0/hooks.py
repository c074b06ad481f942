"""v0 hooks, as in the authors' v0 agent: the MAP ANALYSIS of the text map (the prompts' {analysis}) and the
repair of a two-step command written with its argument ('eat d' -> 'eat')."""
from hook_helpers import nle_map_analysis, repair_two_step


def observe(ctx):
    return nle_map_analysis(ctx.obs.text)


def repair_action(ctx, action):
    return repair_two_step(action)
