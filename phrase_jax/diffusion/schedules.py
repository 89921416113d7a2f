"""DDPM noise schedule (SPEC 5): T = 1000 cosine schedule, forward noising, posterior.

Step t runs 0..T-1; `alpha_bars[t]` is the signal fraction after step t, so x_t =
sqrt(alpha_bars[t]) x0 + sqrt(1 - alpha_bars[t]) eps. "Clean" (no noise) is alpha_bar = 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MAX_BETA = 0.999  # ref / Nichol & Dhariwal: keeps the last steps finite


class Schedule(NamedTuple):
    """All arrays [T] float32; a pytree, so it passes through `jax.jit` as data."""

    betas: jax.Array
    alpha_bars: jax.Array
    alpha_bars_prev: jax.Array  # alpha_bars[t - 1], 1 at t = 0
    posterior_variance: jax.Array  # fixed-small: beta_t (1 - abar_{t-1}) / (1 - abar_t)

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def cosine_alpha_bar(s: np.ndarray) -> np.ndarray:
    """alpha_bar(s) = cos²(((s + 0.008) / 1.008) · π/2) for s = t / T in [0, 1]."""
    return np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_schedule(num_steps: int = 1000) -> Schedule:
    """beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), 0.999), computed in float64."""
    s = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    ratio = cosine_alpha_bar(s[1:]) / cosine_alpha_bar(s[:-1])
    betas = np.minimum(1.0 - ratio, MAX_BETA)
    alpha_bars = np.cumprod(1.0 - betas)
    alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
    posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return Schedule(f32(betas), f32(alpha_bars), f32(alpha_bars_prev), f32(posterior_variance))


def _expand(values_b: jax.Array, like: jax.Array) -> jax.Array:
    return values_b.reshape(values_b.shape + (1,) * (like.ndim - values_b.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t_b: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward noising x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0 [B, ...], t_b [B]."""
    alpha_bar = _expand(schedule.alpha_bars[t_b], x0)
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def posterior(
    alpha_bar: jax.Array, alpha_bar_prev: jax.Array, x0: jax.Array, x_t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean and fixed-small variance of q(x_prev | x_t, x0) between any two noise levels.

    With alpha_bar_prev = 1 (a jump to clean) the mean is x0 and the variance 0; with adjacent
    steps it is the DDPM posterior. alpha_bar, alpha_bar_prev broadcast against x0.
    """
    alpha = alpha_bar / alpha_bar_prev
    beta = 1.0 - alpha
    denom = 1.0 - alpha_bar
    mean = (jnp.sqrt(alpha_bar_prev) * beta / denom) * x0 + (
        jnp.sqrt(alpha) * (1.0 - alpha_bar_prev) / denom
    ) * x_t
    variance = beta * (1.0 - alpha_bar_prev) / denom
    return mean, variance


def q_posterior(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t_b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """DDPM posterior q(x_{t-1} | x_t, x0) at steps t_b [B]: (mean like x0, variance [B, 1..])."""
    return posterior(
        _expand(schedule.alpha_bars[t_b], x0), _expand(schedule.alpha_bars_prev[t_b], x0), x0, x_t
    )


def predictions_to_x0_eps(
    prediction: str, output: jax.Array, x_t: jax.Array, alpha_bar: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Model output → (x0, eps) for `prediction` in {"epsilon", "v"}; alpha_bar broadcasts."""
    signal, noise = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    if prediction == "epsilon":
        return (x_t - noise * output) / signal, output
    if prediction == "v":
        return signal * x_t - noise * output, noise * x_t + signal * output
    raise ValueError(f"prediction {prediction!r}: use 'epsilon' or 'v'")


def velocity(x0: jax.Array, eps: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho), the v-prediction target."""
    return jnp.sqrt(alpha_bar) * eps - jnp.sqrt(1.0 - alpha_bar) * x0
