"""
hook_context.py: what a scaffold's hooks see at a step (automem.Agent fills one per episode). Its own
module so that the jail's worker (jail.py), which rebuilds it from the wire, needs none of the agent.

    def observe(ctx):                      # a hook in scaffolds/<env>/<version>/hooks.py
        ctx.episode.setdefault("seen", set()).add(ctx.obs.text)
        ctx.write("APPEND", "notes.txt", f"step {ctx.step}")
"""
from dataclasses import dataclass, field

import memory_fs


@dataclass
class Context:
    """What hooks see at a step. `episode` is a dict the hooks may keep state in."""
    step: int
    obs: object  # envs.Observation: text, long, short, state
    memory: memory_fs.MemoryFS
    game: object
    episode: dict = field(default_factory=dict)
    actions: list = field(default_factory=list)  # the actions the agent returned so far (after repair)
    prev_action: str | None = None    # what the agent returned last step (after repair)
    prev_executed: str | None = None  # what the env ran (its default action after an invalid one)
    prev_valid: bool = True
    log_ops: list = field(default_factory=list)  # [name, args] of the ops this step's LOG ran

    def write(self, op, *args):
        """A memory write by a hook (APPEND, WRITE, CREATE, UPSERT), recorded like the model's; returns its OpResult."""
        return self.memory.execute(memory_fs.Op(op, list(args), ""), memory_fs.WRITE_OPS)
