"""T5 relative position bias (SPEC 2): log-spaced distance buckets → a learned bias per head,
computed once per stack and shared by its layers (bidirectional in the encoder, causal in the
decoder)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phrase_jax.models.layers import normal_init, partitioned


def relative_position_buckets(
    query_length: int,
    key_length: int,
    *,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
    query_offset: int = 0,
) -> np.ndarray:
    """T5 bucket table int32 [query_length, key_length] (static shapes, so numpy at trace time).

    Relative position = key position - query position. Bidirectional: half the buckets for keys
    after the query. Half of the rest are exact small distances, the others log-spaced up to
    `max_distance`. The float32 arithmetic follows transformers' T5 step by step so that buckets
    agree at the log-bin edges.
    """
    context = np.arange(query_length, dtype=np.int64)[:, None] + query_offset
    memory = np.arange(key_length, dtype=np.int64)[None, :]
    relative = memory - context
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).astype(np.int64) * num_buckets
        relative = np.abs(relative)
    else:
        relative = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    safe = np.maximum(relative, 1).astype(np.float32)  # log(0) is masked by `is_small` anyway
    scaled = (
        np.log(safe / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    ).astype(np.float32)
    if_large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
    buckets += np.where(is_small, relative, if_large)
    return buckets.astype(np.int32)


class RelativePositionBias(nnx.Module):
    """T5 relative attention bias: embedding [num_buckets, heads] → bias [1, H, Q, K] (float32)."""

    def __init__(
        self,
        num_heads: int,
        *,
        num_buckets: int,
        max_distance: int,
        bidirectional: bool,
        init_std: float,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = nnx.Param(
            partitioned(normal_init(init_std), ("relpos", "heads"))(
                rngs.params(), (num_buckets, num_heads), param_dtype
            )
        )

    def __call__(self, query_length: int, key_length: int) -> jax.Array:
        buckets_qk = relative_position_buckets(
            query_length,
            key_length,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        values_qkh = jnp.take(self.embedding[...].astype(jnp.float32), buckets_qk, axis=0)
        return jnp.transpose(values_qkh, (2, 0, 1))[None]
