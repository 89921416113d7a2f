"""Optax optimizer and learning-rate schedule from the `config.optim` group.

    config.optim = dict(
        name="adamw",          # adam | adamw
        learning_rate=1e-4,    # peak
        schedule="constant",   # constant | cosine
        warmup_steps=0,        # linear ramp 0 -> peak first
        end_learning_rate=0.0, # cosine floor
        b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0,      # adamw only (decoupled)
        grad_clip_norm=0.0,    # 0 disables global-norm clipping
    )

The schedule is returned too: the train step reads `schedule(step)` for logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")


def make_schedule(optim_config: Mapping[str, Any] | Any, total_steps: int) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then constant or cosine decay to `end_learning_rate`
    at `total_steps`."""
    peak = float(optim_config["learning_rate"])
    warmup = int(optim_config.get("warmup_steps", 0))
    kind = optim_config.get("schedule", "constant")
    if kind not in SCHEDULES:
        raise ValueError(f"config optim.schedule={kind!r}: choose one of {SCHEDULES}")
    if kind == "constant":
        main = optax.constant_schedule(peak)
    else:
        decay_steps = max(int(total_steps) - warmup, 1)
        end = float(optim_config.get("end_learning_rate", 0.0))
        main = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    if warmup <= 0:
        return main

    def schedule(step):
        # peak * (step + 1) / warmup: the first update already moves (a ramp from 0 wastes it).
        ramp = peak * (jnp.asarray(step, jnp.float32) + 1) / warmup
        return jnp.where(step < warmup, ramp, main(jnp.maximum(step - warmup, 0)))

    return schedule


def make_optimizer(
    optim_config: Mapping[str, Any] | Any, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (gradient transformation, learning-rate schedule)."""
    name = optim_config["name"]
    if name not in OPTIMIZERS:
        raise ValueError(f"config optim.name={name!r}: choose one of {OPTIMIZERS}")
    schedule = make_schedule(optim_config, total_steps)
    kwargs = dict(
        learning_rate=schedule,
        b1=float(optim_config.get("b1", 0.9)),
        b2=float(optim_config.get("b2", 0.999)),
        eps=float(optim_config.get("eps", 1e-8)),
    )
    if name == "adamw":
        tx = optax.adamw(weight_decay=float(optim_config.get("weight_decay", 0.0)), **kwargs)
    else:
        if float(optim_config.get("weight_decay", 0.0)):
            raise ValueError("config optim.weight_decay is set but optim.name='adam'; use adamw")
        tx = optax.adam(**kwargs)
    clip = float(optim_config.get("grad_clip_norm", 0.0))
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, schedule
