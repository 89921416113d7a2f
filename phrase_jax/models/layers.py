"""Shared transformer layers: norms, multi-head attention, RoPE, MLP (T5's relative position
bias lives in `relative_position.py`).

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
NEG_INF = float(np.finfo(np.float32).min)


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


def apply_rope(
    x_bthk: jax.Array, positions_bt: jax.Array, *, rotary_dims: int, theta: float = 10000.0
) -> jax.Array:
    """Rotary embedding (rotate-half) on the first `rotary_dims` of each head's dims."""
    if rotary_dims == 0:
        return x_bthk
    half = rotary_dims // 2
    inv_freq = 1.0 / (theta ** (np.arange(half, dtype=np.float32) * 2.0 / rotary_dims))
    angles_bt1f = positions_bt.astype(jnp.float32)[:, :, None, None] * inv_freq
    cos, sin = jnp.cos(angles_bt1f), jnp.sin(angles_bt1f)
    rot = x_bthk[..., :rotary_dims].astype(jnp.float32)
    first, second = rot[..., :half], rot[..., half:]
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return jnp.concatenate([rotated.astype(x_bthk.dtype), x_bthk[..., rotary_dims:]], axis=-1)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention with optional grouped K/V heads, additive bias, boolean mask, RoPE.

    Kernels: query [in, heads, head_dim], key/value [kv_in, kv_heads, head_dim], out
    [heads, head_dim, in]. `logit_scale` multiplies q·k (T5 uses 1.0; default 1/sqrt(head_dim)).
    Masks are boolean, True = may attend, broadcastable to [B, H, Q, K].
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        head_dim: int,
        *,
        kv_features: int | None = None,
        num_kv_heads: int | None = None,
        logit_scale: float | None = None,
        use_bias: bool = False,
        dropout_rate: float = 0.0,
        rope_dims: int = 0,
        rope_theta: float = 10000.0,
        query_init: Initializer | None = None,
        key_init: Initializer | None = None,
        value_init: Initializer | None = None,
        out_init: Initializer | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kv_features = kv_features or in_features
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of kv heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.logit_scale = head_dim**-0.5 if logit_scale is None else logit_scale
        self.dropout_rate = dropout_rate
        self.rope_dims, self.rope_theta = rope_dims, rope_theta
        self.dtype = dtype
        kv_axis = "heads" if num_kv_heads == num_heads else "kv_heads"
        fan_in = nnx.initializers.variance_scaling(
            1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2)
        )
        fan_in_out = nnx.initializers.variance_scaling(
            1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2
        )

        def kernel(init, names, shape):
            return nnx.Param(partitioned(init, names)(rngs.params(), shape, param_dtype))

        def bias(names, shape):
            return nnx.Param(partitioned(nnx.initializers.zeros, names)(None, shape, param_dtype))

        self.query = kernel(
            query_init or fan_in, ("embed", "heads", "head_dim"), (in_features, num_heads, head_dim)
        )
        self.key = kernel(
            key_init or fan_in,
            ("embed", kv_axis, "head_dim"),
            (kv_features, num_kv_heads, head_dim),
        )
        self.value = kernel(
            value_init or fan_in,
            ("embed", kv_axis, "head_dim"),
            (kv_features, num_kv_heads, head_dim),
        )
        self.out = kernel(
            out_init or fan_in_out,
            ("heads", "head_dim", "embed"),
            (num_heads, head_dim, in_features),
        )
        if use_bias:
            self.query_bias = bias(("heads", "head_dim"), (num_heads, head_dim))
            self.key_bias = bias((kv_axis, "head_dim"), (num_kv_heads, head_dim))
            self.value_bias = bias((kv_axis, "head_dim"), (num_kv_heads, head_dim))
            self.out_bias = bias(("embed",), (in_features,))
        else:
            self.query_bias = self.key_bias = self.value_bias = self.out_bias = None

    def _project(self, x, kernel, bias):
        y = jnp.einsum("btd,dhk->bthk", x.astype(self.dtype), kernel[...].astype(self.dtype))
        return y if bias is None else y + bias[...].astype(self.dtype)

    def project_query(self, x_btd: jax.Array, positions_bt: jax.Array | None = None):
        """q [B, T, heads, head_dim], RoPE applied when configured (needs positions)."""
        q = self._project(x_btd, self.query, self.query_bias)
        if self.rope_dims:
            q = apply_rope(q, positions_bt, rotary_dims=self.rope_dims, theta=self.rope_theta)
        return q

    def project_key_value(self, x_bsd: jax.Array, positions_bs: jax.Array | None = None):
        """(k, v), each [B, S, kv_heads, head_dim]; a K/V cache stores exactly these."""
        k = self._project(x_bsd, self.key, self.key_bias)
        if self.rope_dims:
            k = apply_rope(k, positions_bs, rotary_dims=self.rope_dims, theta=self.rope_theta)
        return k, self._project(x_bsd, self.value, self.value_bias)

    def attend(
        self, q_bthk, k, v, *, bias=None, mask=None, rngs=None, kv_layout: str = "bshk"
    ) -> jax.Array:
        """Attention output [B, T, in_features] from projected q, k, v.

        k, v: [B, S, kv_heads, head_dim] (`kv_layout="bshk"`, what `project_key_value` returns)
        or [B, kv_heads, S, head_dim] (`"bhsk"`: a decoding cache in this layout feeds the
        batched q·k and weights·v dots directly; in "bshk" XLA CPU transposes the whole cache
        every step). bias: float, broadcastable to [B, H, T, S]; mask: bool, likewise.
        """
        if kv_layout not in ("bshk", "bhsk"):
            raise ValueError(f"kv_layout {kv_layout!r}: use 'bshk' or 'bhsk'")
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = jnp.repeat(k, groups, axis=kv_layout.index("h"))
            v = jnp.repeat(v, groups, axis=kv_layout.index("h"))
        scores = jnp.einsum(
            f"bthk,{kv_layout}->bhts", q_bthk, k, preferred_element_type=jnp.float32
        )
        scores = scores * self.logit_scale
        if bias is not None:
            scores = scores + bias
        if mask is not None:
            scores = jnp.where(mask, scores, NEG_INF)
        weights = dropout(jax.nn.softmax(scores, axis=-1), self.dropout_rate, rngs)
        context = jnp.einsum(f"bhts,{kv_layout}->bthk", weights.astype(self.dtype), v)
        y = jnp.einsum("bthk,hkd->btd", context, self.out[...].astype(self.dtype))
        return y if self.out_bias is None else y + self.out_bias[...].astype(self.dtype)

    def __call__(
        self,
        x_btd: jax.Array,
        memory_bsd: jax.Array | None = None,
        *,
        bias=None,
        mask=None,
        positions_bt=None,
        memory_positions_bs=None,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Self-attention when `memory_bsd` is None, else cross-attention to it."""
        if memory_bsd is None:
            memory_bsd, memory_positions_bs = x_btd, positions_bt
        q = self.project_query(x_btd, positions_bt)
        k, v = self.project_key_value(memory_bsd, memory_positions_bs)
        return self.attend(q, k, v, bias=bias, mask=mask, rngs=rngs)
