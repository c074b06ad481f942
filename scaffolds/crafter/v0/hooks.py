"""v0 hooks, as in the authors' v0 agent: the repair of a two-step command written with its argument (their
agent applies it in every env; no Crafter action starts with one of those commands, so only stray replies change)."""
from hook_helpers import repair_two_step


def repair_action(ctx, action):
    return repair_two_step(action)
