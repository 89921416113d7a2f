"""The one multi-head attention of the models: T5's (relative-position bias, cached decoding),
the DiT's (RoPE self-attention, grouped K/V cross-attention) and the section encoder's (biases,
dropout) are all this module with different options.

Shapes: B batch, T queries, S keys, H query heads, K key/value heads, E head width.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phrase_jax.models.layers import apply_rope, dropout, partitioned

Initializer = Callable[..., jax.Array]
NEG_INF = float(np.finfo(np.float32).min)
KV_LAYOUTS = ("bshk", "bhsk")


class Attention(nnx.Module):
    """Multi-head attention with optional grouped K/V heads, biases, RoPE, additive score bias,
    boolean mask and dropout on the attention weights.

    Parameters: `query` [in, H, E], `key`/`value` [kv_in, K, E], `out` [H, E, in] and, with
    `use_bias`, `query_bias` [H, E], `key_bias`/`value_bias` [K, E], `out_bias` [in].
    `in_axis` / `kv_axis` are the logical names of the input widths (`embed`, or `cond` for
    condition memory). Query head h reads K/V head h // (H / K), as diffusers'
    `repeat_interleave` does. `logit_scale` multiplies q·k (T5: 1.0; default 1/sqrt(E)).
    Default kernels: xavier uniform over (in, H·E), the DiT's initialisation.
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        head_dim: int,
        *,
        kv_features: int | None = None,
        num_kv_heads: int | None = None,
        in_axis: str = "embed",
        kv_axis: str | None = None,
        logit_scale: float | None = None,
        use_bias: bool = False,
        dropout_rate: float = 0.0,
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
        kv_axis = kv_axis or in_axis
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of kv heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.logit_scale = head_dim**-0.5 if logit_scale is None else logit_scale
        self.dropout_rate = dropout_rate
        self.dtype = dtype
        kv_heads_axis = "heads" if num_kv_heads == num_heads else "kv_heads"
        in_init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        out_default = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)

        def kernel(init, names, shape):
            return nnx.Param(partitioned(init, names)(rngs.params(), shape, param_dtype))

        def bias(names, shape):
            return nnx.Param(partitioned(nnx.initializers.zeros, names)(None, shape, param_dtype))

        kv_shape = (kv_features, num_kv_heads, head_dim)
        kv_names = (kv_axis, kv_heads_axis, "head_dim")
        self.query = kernel(
            query_init or in_init,
            (in_axis, "heads", "head_dim"),
            (in_features, num_heads, head_dim),
        )
        self.key = kernel(key_init or in_init, kv_names, kv_shape)
        self.value = kernel(value_init or in_init, kv_names, kv_shape)
        self.out = kernel(
            out_init or out_default,
            ("heads", "head_dim", in_axis),
            (num_heads, head_dim, in_features),
        )
        if use_bias:
            self.query_bias = bias(("heads", "head_dim"), (num_heads, head_dim))
            self.key_bias = bias(kv_names[1:], kv_shape[1:])
            self.value_bias = bias(kv_names[1:], kv_shape[1:])
            self.out_bias = bias((in_axis,), (in_features,))
        else:
            self.query_bias = self.key_bias = self.value_bias = self.out_bias = None

    def _project(self, x, kernel, bias):
        y = jnp.einsum("btd,dhk->bthk", x.astype(self.dtype), kernel[...].astype(self.dtype))
        return y if bias is None else y + bias[...].astype(self.dtype)

    def project_query(self, x_btd: jax.Array, rotary=None) -> jax.Array:
        """q [B, T, H, E]; `rotary` (cos, sin) [T, F] from `layers.rotary_table` applies RoPE."""
        q = self._project(x_btd, self.query, self.query_bias)
        return q if rotary is None else apply_rope(q, *rotary)

    def project_key_value(self, x_bsd: jax.Array, rotary=None) -> tuple[jax.Array, jax.Array]:
        """(k, v), each [B, S, K, E] (a K/V cache stores exactly these); RoPE on k as above."""
        k = self._project(x_bsd, self.key, self.key_bias)
        if rotary is not None:
            k = apply_rope(k, *rotary)
        return k, self._project(x_bsd, self.value, self.value_bias)

    def attend(
        self,
        q_bthk: jax.Array,
        k: jax.Array,
        v: jax.Array,
        *,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
        kv_layout: str = "bshk",
    ) -> jax.Array:
        """Attention output [B, T, in] from projected q, k, v.

        k, v: [B, S, K, E] (`kv_layout="bshk"`, what `project_key_value` returns) or
        [B, K, S, E] (`"bhsk"`: a decoding cache in this layout feeds the batched q·k and
        weights·v dots directly; in "bshk" XLA CPU transposes the whole cache every step).
        bias: float, added to the scaled scores, broadcastable to [B, H, T, S] (T5's relative
        positions); mask: bool, True = may attend, likewise. `rngs` given = dropout on weights.
        Scores and softmax are float32 whatever `dtype` is.
        """
        if kv_layout not in KV_LAYOUTS:
            raise ValueError(f"kv_layout {kv_layout!r}: use one of {KV_LAYOUTS}")
        # Heads first for both dots, the scale on q (not on the [B, H, T, S] scores), and the
        # context straight into the output projection: XLA CPU then neither transposes nor
        # rescales the scores. q·k, weights·v and the output einsum in token-first layouts made
        # XLA transpose the whole weight tensor and multiply the scores by a broadcast scale
        # array; this is 2.5x faster for the DiT's 513-token attention (docs/results.md).
        if kv_layout == "bshk":
            k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k, v = jnp.repeat(k, groups, axis=1), jnp.repeat(v, groups, axis=1)
        if self.logit_scale != 1.0:
            q_bthk = q_bthk * jnp.asarray(self.logit_scale, q_bthk.dtype)
        q_bhtk = jnp.swapaxes(q_bthk, 1, 2)
        scores = jnp.einsum("bhtk,bhsk->bhts", q_bhtk, k, preferred_element_type=jnp.float32)
        if bias is not None:
            scores = scores + bias
        if mask is not None:
            scores = jnp.where(mask, scores, NEG_INF)
        weights = dropout(jax.nn.softmax(scores, axis=-1), self.dropout_rate, rngs)
        context = jnp.einsum("bhts,bhsk->bhtk", weights.astype(self.dtype), v)
        y = jnp.einsum("bhtk,hkd->btd", context, self.out[...].astype(self.dtype))
        return y if self.out_bias is None else y + self.out_bias[...].astype(self.dtype)

    def __call__(
        self,
        x_btd: jax.Array,
        memory_bsd: jax.Array | None = None,
        *,
        rotary=None,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Self-attention when `memory_bsd` is None, else cross-attention to it.

        `rotary` (self-attention only): (cos, sin) [T, F] for the positions of x.
        """
        if memory_bsd is None:
            memory_bsd = x_btd
        elif rotary is not None:
            raise ValueError("rotary applies to self-attention only (memory_bsd is None)")
        q = self.project_query(x_btd, rotary)
        k, v = self.project_key_value(memory_bsd, rotary)
        return self.attend(q, k, v, bias=bias, mask=mask, rngs=rngs)
