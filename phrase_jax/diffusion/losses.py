"""Diffusion training loss (SPEC 5): t uniform, MSE over all positions, padding included.

`make_loss_fn(schedule, prediction)` gives the pure `loss(model, batch, rng) -> (loss, metrics)`
the trainer differentiates. Batch keys: `latents` float [B, N, D] (already divided by the latent
scale) plus the condition arrays the model uses (`phrase_jax.models.conditions`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from phrase_jax.diffusion.schedules import Schedule, q_sample, velocity

PREDICTIONS = ("epsilon", "v")


def compute_loss(
    model,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    schedule: Schedule,
    prediction: str = "epsilon",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One noisy-regression loss on `batch`; `rng` also drives the model's dropout and CFG drop.

    Returns (scalar loss, metrics {"loss", "mse_low_t", "mse_high_t"}); the two split metrics
    average over examples with t below / at least T/2 (NaN-free: empty halves count 0).
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r}: use one of {PREDICTIONS}")
    if "latents" not in batch:
        raise KeyError("batch: missing 'latents' [B, N, D] (scaled slot latents)")
    x0 = batch["latents"].astype(jnp.float32)
    t_rng, noise_rng, model_rng = jax.random.split(rng, 3)
    t_b = jax.random.randint(t_rng, x0.shape[:1], 0, schedule.num_steps)
    noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
    x_t = q_sample(schedule, x0, t_b, noise)
    conditions = {k: v for k, v in batch.items() if k != "latents"}
    output = model(x_t, t_b, conditions, rng=model_rng)
    if prediction == "epsilon":
        target = noise
    else:
        target = velocity(x0, noise, schedule.alpha_bars[t_b][:, None, None])
    per_example = jnp.mean(jnp.square(output.astype(jnp.float32) - target), axis=(1, 2))
    loss = jnp.mean(per_example)
    low = t_b < schedule.num_steps // 2
    split_mean = lambda sel: jnp.sum(jnp.where(sel, per_example, 0.0)) / jnp.maximum(sel.sum(), 1)
    return loss, {"loss": loss, "mse_low_t": split_mean(low), "mse_high_t": split_mean(~low)}


def make_loss_fn(schedule: Schedule, prediction: str = "epsilon") -> Callable:
    """`loss(model, batch, rng) -> (loss, metrics)` with the schedule and target fixed."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r}: use one of {PREDICTIONS}")

    def loss(model, batch, rng):
        return compute_loss(model, batch, rng, schedule=schedule, prediction=prediction)

    return loss
