"""The training keys every trainer's config shares (`training/`: optimizer, mesh, sharding,
checkpoints, logging), so the VAE and LDM experiment files state only what differs."""

from __future__ import annotations

import ml_collections


def add_training_defaults(
    config: ml_collections.ConfigDict,
    *,
    total_steps: int,
    optimizer: str,
    learning_rate: float,
    weight_decay: float = 0.0,
    grad_clip_norm: float = 0.0,
    ema_decay: float = 0.0,
    checkpoint_every: int,
) -> None:
    """Adds paper-scale defaults: global batch 128, fp32, pure data parallel, constant lr."""
    config.total_steps = total_steps
    config.batch_size = 128  # global
    config.log_every_steps = 100
    # Wall-clock seconds for one call of the trainer, set-up and compilation included; when
    # they are up, the step in progress is the last (logged, checkpointed, evaluated). 0 = none.
    config.time_limit_s = 0.0
    config.compute_dtype = "float32"
    config.ema_decay = ema_decay  # 0 = no EMA
    config.optim = ml_collections.ConfigDict(
        dict(
            name=optimizer,
            learning_rate=learning_rate,
            schedule="constant",
            warmup_steps=0,
            end_learning_rate=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,  # 0 = no clipping
        )
    )
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1)))
    config.sharding = ml_collections.ConfigDict(dict(preset="data_parallel", rules=()))
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=checkpoint_every, max_to_keep=3))
