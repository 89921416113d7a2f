"""Samplers (SPEC 5): DDPM ancestral, DDIM (eta = 0), DPM-Solver++(2M) and its stochastic
form DPM-Solver++(2M) SDE (Lu et al. 2022; diffusers' `sde-dpmsolver++`); each one `lax.scan`.

The SDE form injects fresh noise every step, as DDPM does, so it keeps DDPM's error-correcting
behaviour on an imperfect model (the ODE samplers carry every early error to the end) at a
fraction of the steps.

Every sampler walks the same descending grid of training steps t_0 = T-1 > ... > t_{N-1}
(`timestep_grid`) and jumps from the last one to clean data, so it makes exactly N model calls.
With N = T the DDPM sampler is the ref's 1000-step ancestral sampler (fixed-small posterior
variance).

Shared options:
- `clip`: predicted x0 clipped to ±clip in the model's (scaled) latent space, eps re-derived;
- classifier-free guidance (`guidance_scale`, the model's learned null conditions);
- inpainting: `known_bnd` [B, N, D] with `keep_mask_bn` bool [B, N] (slots to keep); before each
  model call the kept slots are replaced by the known values noised to the current level, and
  the result holds the known values exactly;
- resampling (`Resampling`, RePaint, Lugmayr et al. 2022): every `every` steps the sample is
  noised back `jump` steps by the forward process and those steps are denoised again,
  `repeats` times, so the written slots can agree with the kept ones (replacement alone lets
  each step see the kept slots only through the noise). A multistep solver restarts at first
  order after each jump (its history belongs to the abandoned path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phrase_jax import errors
from phrase_jax.diffusion.schedules import Schedule, posterior, predictions_to_x0_eps

METHODS = ("ddpm", "ddim", "dpm_solver_pp", "dpm_solver_pp_sde")
DENOISE, RENOISE = 0, 1  # the kinds of a sampler's operations (`operation_schedule`)


@dataclasses.dataclass(frozen=True)
class Resampling:
    """RePaint's jumps: after every `every`-th denoising step (not the last), `repeats` times:
    noise back `jump` steps and denoise them again. `repeats` 0 = off. Each jump adds `jump`
    model calls; `model_calls` counts them."""

    jump: int = 1
    repeats: int = 0
    every: int = 1

    def check(self) -> None:
        if self.jump < 1 or self.every < 1 or self.repeats < 0:
            raise ValueError(
                f"resampling jump={self.jump}, every={self.every} must be >= 1 and "
                f"repeats={self.repeats} >= 0"
            )


def operation_schedule(num_steps: int, resampling: Resampling | None = None) -> np.ndarray:
    """int32 [M, 2] rows (kind, level): DENOISE takes level k to k + 1 (level k < num_steps is
    the noise of grid step k, level num_steps is clean data); RENOISE takes the current level
    back to `level` by the forward process. Without resampling: the num_steps denoising steps.
    """
    operations, level = [], 0
    while level < num_steps:
        operations.append((DENOISE, level))
        level += 1
        if (
            resampling
            and resampling.repeats
            and level < num_steps
            and level % resampling.every == 0
        ):
            back = max(level - resampling.jump, 0)
            for _ in range(resampling.repeats):
                operations.append((RENOISE, back))
                operations.extend((DENOISE, k) for k in range(back, level))
    return np.asarray(operations, np.int32).reshape(-1, 2)


def model_calls(num_steps: int, resampling: Resampling | None = None) -> int:
    """How many times a sampler calls the model (one per DENOISE operation)."""
    return int((operation_schedule(num_steps, resampling)[:, 0] == DENOISE).sum())


def check_guidance(model_config, guidance_scale: float) -> None:
    """Refuses a guidance scale other than 1 for a conditional model trained without condition
    dropout: its "no condition" embeddings were never trained (the released reference models
    are such), so guidance would steer towards an arbitrary vector."""
    if guidance_scale != 1.0 and model_config.conditions and model_config.condition_dropout <= 0:
        raise errors.UserError(
            f"guidance_scale={guidance_scale}: this LDM was trained without condition dropout, "
            "so it has no learned 'no condition' to guide from; use guidance_scale=1"
        )


def timestep_grid(num_train_steps: int, num_steps: int) -> np.ndarray:
    """The steps a sampler evaluates: T-1, then every T/N down to T/N - 1. int32 [num_steps].

    "Trailing" spacing (diffusers' name): N = T gives T-1..0, the plain DDPM chain; for N < T
    the last evaluation sits at T/N - 1, not at 0, so the final jump to clean data is no larger
    than the others (a 2nd-order step from t = 0 would extrapolate over a huge log-SNR gap).
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps {num_steps}: must be in 1..{num_train_steps}")
    fractions = np.arange(num_steps, 0, -1, dtype=np.float64) / num_steps
    return (np.round(fractions * num_train_steps) - 1).astype(np.int32)


def _log_snr(alpha_bar: jax.Array) -> jax.Array:
    """DPM-Solver's lambda = log(alpha / sigma)."""
    return 0.5 * (jnp.log(alpha_bar) - jnp.log1p(-alpha_bar))


def sample_loop(
    predict_fn: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: Schedule,
    noise_bnd: jax.Array,
    rng: jax.Array,
    *,
    method: str,
    num_steps: int,
    prediction: str = "epsilon",
    clip: float | jax.Array | None = None,
    known_bnd: jax.Array | None = None,
    keep_mask_bn: jax.Array | None = None,
    resampling: Resampling | None = None,
) -> jax.Array:
    """Denoise `noise_bnd` (x at t = T-1) to x0 with `predict_fn(x_bnd, t_b) -> output`.

    Pure and traceable; `sample_fn` / `sample` are the jitted entry points. → [B, N, D].
    """
    if method not in METHODS:
        raise ValueError(f"sampler {method!r}: use one of {METHODS}")
    if (known_bnd is None) != (keep_mask_bn is None):
        raise ValueError("inpainting needs both known_bnd and keep_mask_bn")
    if resampling is not None:
        resampling.check()
    grid = timestep_grid(schedule.num_steps, num_steps)
    # levels[k]: alpha_bar of grid step k; levels[num_steps] = 1 (clean data).
    levels = jnp.concatenate([schedule.alpha_bars[grid], jnp.ones((1,), jnp.float32)])
    operations = operation_schedule(num_steps, resampling)
    xs = (jnp.asarray(operations), jax.random.split(rng, len(operations)))
    keep = None if keep_mask_bn is None else keep_mask_bn[..., None].astype(bool)
    batch = noise_bnd.shape[0]
    grid = jnp.asarray(grid)

    def denoise(carry, level, key):
        x, prev_x0, prev_h, fresh = carry
        t, ab, ab_next = grid[level], levels[level], levels[level + 1]
        noise_key, inpaint_key = jax.random.split(key)
        if keep is not None:
            renoised = jnp.sqrt(ab) * known_bnd + jnp.sqrt(1.0 - ab) * jax.random.normal(
                inpaint_key, x.shape, x.dtype
            )
            x = jnp.where(keep, renoised, x)
        output = predict_fn(x, jnp.full((batch,), t, jnp.int32)).astype(jnp.float32)
        x0, eps = predictions_to_x0_eps(prediction, output, x, ab)
        if clip is not None:
            x0 = jnp.clip(x0, -clip, clip)
            eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
        last = level == num_steps - 1
        h = prev_h
        if method == "ddpm":
            mean, variance = posterior(ab, ab_next, x0, x)
            x_next = mean + jnp.sqrt(variance) * jax.random.normal(noise_key, x.shape, x.dtype)
        elif method == "ddim":
            x_next = jnp.sqrt(ab_next) * x0 + jnp.sqrt(1.0 - ab_next) * eps
        else:
            # DPM-Solver++(2M) in data prediction; a fresh start (the first step, or the first
            # after a resampling jump) is 1st order, the last jump (to clean, lambda = inf) is
            # x0 itself ("lower order final"). Keep the unused branch finite.
            safe_next = jnp.where(last, 0.5, ab_next)
            h = _log_snr(safe_next) - _log_snr(ab)
            ratio = prev_h / h
            second = (1.0 + 0.5 / ratio) * x0 - (0.5 / ratio) * prev_x0
            data = jnp.where(fresh, x0, second)
            sigma_ratio = jnp.sqrt((1.0 - safe_next) / (1.0 - ab))
            if method == "dpm_solver_pp":
                x_next = sigma_ratio * x - jnp.sqrt(safe_next) * jnp.expm1(-h) * data
            else:  # SDE: the same data term over 2h, plus noise of the matching variance
                x_next = (
                    sigma_ratio * jnp.exp(-h) * x
                    - jnp.sqrt(safe_next) * jnp.expm1(-2.0 * h) * data
                    + jnp.sqrt(1.0 - safe_next)
                    * jnp.sqrt(-jnp.expm1(-2.0 * h))
                    * jax.random.normal(noise_key, x.shape, x.dtype)
                )
            x_next = jnp.where(last, x0, x_next)
        return x_next, x0, h, jnp.zeros((), bool)

    def renoise(carry, level, key, current):
        """The forward process from level `current` back to the noisier `level`."""
        x, prev_x0, prev_h, _ = carry
        ratio = levels[level] / levels[current]
        noise = jax.random.normal(key, x.shape, x.dtype)
        return (
            jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * noise,
            prev_x0,
            prev_h,
            jnp.ones((), bool),
        )

    def step(state, op_inputs):
        carry, current = state
        (kind, level), key = op_inputs
        if resampling is None or not resampling.repeats:
            return (denoise(carry, level, key), level + 1), None
        carry = jax.lax.cond(
            kind == RENOISE,
            lambda c: renoise(c, level, key, current),
            lambda c: denoise(c, level, key),
            carry,
        )
        return (carry, jnp.where(kind == RENOISE, level, level + 1)), None

    carry = (
        noise_bnd.astype(jnp.float32),
        jnp.zeros_like(noise_bnd, jnp.float32),
        jnp.ones(()),
        jnp.ones((), bool),
    )
    ((x, _, _, _), _), _ = jax.lax.scan(step, (carry, jnp.zeros((), jnp.int32)), xs)
    if keep is not None:
        x = jnp.where(keep, known_bnd, x)
    return x


sample_fn = jax.jit(
    sample_loop,
    static_argnames=("predict_fn", "method", "num_steps", "prediction", "resampling"),
)
sample_fn.__doc__ = "`sample_loop`, jitted; `predict_fn` must be hashable (a function)."


def guided_prediction(
    model,
    x_bnd: jax.Array,
    t_b: jax.Array,
    conditions: Mapping[str, jax.Array],
    guidance_scale: float | jax.Array,
) -> jax.Array:
    """Classifier-free guidance: uncond + scale * (cond - uncond), one doubled batch."""
    batch = x_bnd.shape[0]
    doubled = jax.tree.map(lambda a: jnp.concatenate([a, a]), conditions)
    force_drop = jnp.arange(2 * batch) >= batch
    both = model(
        jnp.concatenate([x_bnd, x_bnd]),
        jnp.concatenate([t_b, t_b]),
        doubled,
        force_drop_b=force_drop,
    )
    cond, uncond = both[:batch], both[batch:]
    return uncond + guidance_scale * (cond - uncond)


def _sample_model(
    graphdef,
    state,
    schedule,
    noise,
    rng,
    conditions,
    guidance_scale,
    clip,
    known,
    keep,
    *,
    method,
    num_steps,
    prediction,
    use_guidance,
    resampling=None,
):
    model = nnx.merge(graphdef, state)

    def predict_fn(x, t):
        if use_guidance:
            return guided_prediction(model, x, t, conditions, guidance_scale)
        return model(x, t, conditions)

    return sample_loop(
        predict_fn,
        schedule,
        noise,
        rng,
        method=method,
        num_steps=num_steps,
        prediction=prediction,
        clip=clip,
        known_bnd=known,
        keep_mask_bn=keep,
        resampling=resampling,
    )


_sample_model_jit = jax.jit(
    _sample_model,
    static_argnames=(
        "graphdef", "method", "num_steps", "prediction", "use_guidance", "resampling",
    ),
)  # fmt: skip


def sample(
    model,
    schedule: Schedule,
    noise_bnd: jax.Array,
    rng: jax.Array,
    *,
    method: str = "ddpm",
    num_steps: int | None = None,
    conditions: Mapping[str, jax.Array] | None = None,
    guidance_scale: float = 1.0,
    prediction: str = "epsilon",
    clip: float | None = None,
    known_bnd: jax.Array | None = None,
    keep_mask_bn: jax.Array | None = None,
    resampling: Resampling | None = None,
) -> jax.Array:
    """Sample x0 [B, N, D] from a PhraseLDM, starting from `noise_bnd`, in one jitted scan.

    `num_steps` defaults to T (DDPM, ref). Guidance runs the doubled batch only when
    `guidance_scale != 1` and the model has conditions; scale 1 is the conditional model. A
    model trained without condition dropout refuses guidance (`check_guidance`).
    """
    check_guidance(model.config, guidance_scale)
    graphdef, state = nnx.split(model)
    use_guidance = bool(model.config.conditions) and guidance_scale != 1.0
    if use_guidance and not conditions:
        raise ValueError("guidance_scale != 1 needs the conditions to guide towards")
    return _sample_model_jit(
        graphdef,
        state,
        schedule,
        noise_bnd,
        rng,
        dict(conditions or {}),
        jnp.float32(guidance_scale),
        None if clip is None else jnp.float32(clip),
        known_bnd,
        keep_mask_bn,
        method=method,
        num_steps=num_steps or schedule.num_steps,
        prediction=prediction,
        use_guidance=use_guidance,
        resampling=resampling if resampling and resampling.repeats else None,
    )
