"""The models' building blocks: the partitioned-parameter helper, dropout, norms, Dense, the T5
MLP and RoPE. Attention is in `attention.py`, T5's relative position bias in
`relative_position.py`; T5 (`t5.py`), the DiT (`dit.py`) and the condition encoders
(`conditions.py`) are built from these alone.

Every parameter carries logical axis names (docs/design.md) through `partitioned`, so one rules
table in the config can shard them. Parameters are float32 (`param_dtype`); activations run in
`dtype` (float32 or bfloat16) while norms, softmax and logits accumulate in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Initializer = Callable[..., jax.Array]


def partitioned(init: Initializer, names: Sequence[str | None]) -> Initializer:
    """Attach logical axis names to an initializer.

    `eager_sharding=False`: the names are stored as `out_sharding` metadata only, so a model can
    be built outside any mesh (tests, conversion); `training/sharding.py` turns them into
    `NamedSharding`s with the config's rules table (`nnx.get_partition_spec` reads them).
    """
    return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def normal_init(stddev: float) -> Initializer:
    return nnx.initializers.normal(stddev=stddev)


def dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout; `rngs=None` means evaluation (identity)."""
    if rngs is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class RMSNorm(nnx.Module):
    """T5 LayerNorm: x * rsqrt(mean(x^2) + eps) * scale; no mean subtraction, no bias."""

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-6,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        del rngs  # deterministic init; kept for a uniform constructor signature
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(
            partitioned(nnx.initializers.ones, ("norm",))(None, (features,), param_dtype)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(variance + self.eps) * self.scale[...].astype(jnp.float32)
        return y.astype(self.dtype)


class LayerNorm(nnx.Module):
    """Standard LayerNorm with scale and bias (PyTorch `nn.LayerNorm` semantics)."""

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-5,
        axis_name: str = "norm",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        del rngs
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(
            partitioned(nnx.initializers.ones, (axis_name,))(None, (features,), param_dtype)
        )
        self.bias = nnx.Param(
            partitioned(nnx.initializers.zeros, (axis_name,))(None, (features,), param_dtype)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(variance + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class Dense(nnx.Module):
    """y = x @ kernel (+ bias) over the last axis; kernel [in, out] with logical `names`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        names: tuple[str, str],
        *,
        use_bias: bool = True,
        kernel_init: Initializer | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kernel_init = kernel_init or nnx.initializers.lecun_normal()
        self.dtype = dtype
        self.kernel = nnx.Param(
            partitioned(kernel_init, names)(rngs.params(), (in_features, out_features), param_dtype)
        )
        self.bias = (
            nnx.Param(
                partitioned(nnx.initializers.zeros, (names[1],))(None, (out_features,), param_dtype)
            )
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def xavier_dense(
    in_features: int,
    out_features: int,
    names: tuple[str | None, str | None],
    *,
    use_bias: bool = True,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> Dense:
    """Dense with a xavier-uniform kernel and zero bias: the DiT's and condition encoders' init."""
    return Dense(
        in_features,
        out_features,
        names,
        use_bias=use_bias,
        kernel_init=nnx.initializers.xavier_uniform(),
        dtype=dtype,
        rngs=rngs,
    )


class FeedForward(nnx.Module):
    """T5 DenseActDense: wo(dropout(act(wi(x)))), no biases. wi [embed, mlp], wo [mlp, embed]."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        dropout_rate: float = 0.0,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dropout_rate = dropout_rate
        self.activation = activation
        self.wi = Dense(
            d_model,
            d_ff,
            ("embed", "mlp"),
            use_bias=False,
            kernel_init=normal_init(d_model**-0.5),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.wo = Dense(
            d_ff,
            d_model,
            ("mlp", "embed"),
            use_bias=False,
            kernel_init=normal_init(d_ff**-0.5),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = dropout(self.activation(self.wi(x)), self.dropout_rate, rngs)
        return self.wo(h)


def rotary_table(
    length: int, rope_dims: int, theta: float = 10000.0
) -> tuple[jax.Array, jax.Array]:
    """RoPE cos, sin float32 [length, rope_dims // 2] for positions 0..length-1.

    Computed in numpy at trace time (the length is static); the DiT's parity test compares it
    with diffusers' `get_1d_rotary_pos_embed`.
    """
    inv_freq = 1.0 / theta ** (np.arange(0, rope_dims, 2, dtype=np.float32) / rope_dims)
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None, :].astype(np.float32)
    return jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))


def apply_rope(x_bthk: jax.Array, cos_tf: jax.Array, sin_tf: jax.Array) -> jax.Array:
    """Rotate-half RoPE on the leading 2F dims of each head (F = cos_tf.shape[-1]), in float32.

    x [B, T, heads, head_dim]; cos, sin [T, F] from `rotary_table`. Dims past 2F pass through.
    """
    half = cos_tf.shape[-1]
    x = x_bthk.astype(jnp.float32)
    first, second, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    cos, sin = cos_tf[None, :, None, :], sin_tf[None, :, None, :]
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin, rest], -1)
    return rotated.astype(x_bthk.dtype)
