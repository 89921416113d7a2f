"""The GPU run's time plan (benchmarks/gpu_run.py): how long a training phase may take, and
how many steps (the length of its learning-rate schedule) fit in that time.

    budget = Budget(540, {"data": 30, "timings": 60, "vae_pretrain": 45, ...})  # run order
    limit = budget.limit("vae_ae", stretch=1.5, floor=15)   # -> the trainer's time_limit_s
    steps = plan_steps(limit, step_s=0.03, compile_s=20, planned=5000, setup_s=10,
                       efficiency=0.8, min_steps=50, max_scale=4)
"""

from __future__ import annotations

import math
import time


class Budget:
    """The run's wall clock: `total_s` for all phases, each with its share `shares[phase]`
    (in run order)."""

    def __init__(self, total_s: float, shares: dict[str, float], clock=time.monotonic):
        self.total_s, self.shares, self.clock = float(total_s), dict(shares), clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def limit(self, phase: str, *, stretch: float, floor: float) -> float:
        """A training phase's time limit: what is left minus the later phases' shares, at most
        `stretch` x its own share and at least `floor` seconds."""
        order = list(self.shares)
        later = sum(self.shares[p] for p in order[order.index(phase) + 1 :])
        left = self.total_s - self.elapsed() - later
        return max(floor, min(stretch * self.shares[phase], left))


def plan_steps(
    limit_s: float,
    step_s: float,
    compile_s: float,
    *,
    planned: int,
    setup_s: float,
    efficiency: float,
    min_steps: int,
    max_scale: float,
) -> int:
    """The steps that fit `limit_s` at `step_s` a step after compiling and setting up, times
    `efficiency` (data loading, logging, checkpoints), between `min_steps` and `max_scale` x
    `planned`."""
    fit = (limit_s - compile_s - setup_s) * efficiency / max(step_s, 1e-9)
    return int(min(max(math.floor(fit), min_steps), max(min_steps, max_scale * planned)))
