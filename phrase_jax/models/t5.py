"""T5 v1.0 encoder and decoder stacks (pre-norm RMSNorm, relative position bias, ReLU MLP).

Layout follows transformers' `T5Stack` so that `interop/vae_from_torch.py` is a renaming: one
relative position bias per stack (transformers keeps it in block 0 and shares it), no 1/sqrt(d)
in the attention logits, no biases, dropout on embeddings, attention weights, sublayer outputs,
the MLP hidden layer and the stack output. The decoder also offers a key/value-cached single step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from phrase_jax.models import attention, layers, relative_position


def _attention(c, *, rngs: nnx.Rngs) -> attention.Attention:
    # transformers' T5 init (mesh-tensorflow): q ~ N(0, (d*dk)^-1/2), k, v ~ N(0, d^-1/2).
    inner = c.num_heads * c.head_dim
    return attention.Attention(
        c.d_model,
        c.num_heads,
        c.head_dim,
        logit_scale=1.0,
        dropout_rate=c.dropout_rate,
        query_init=layers.normal_init((c.d_model * c.head_dim) ** -0.5),
        key_init=layers.normal_init(c.d_model**-0.5),
        value_init=layers.normal_init(c.d_model**-0.5),
        out_init=layers.normal_init(inner**-0.5),
        dtype=c.compute_dtype,
        param_dtype=c.weight_dtype,
        rngs=rngs,
    )


def _norm(c, *, rngs: nnx.Rngs) -> layers.RMSNorm:
    return layers.RMSNorm(
        c.d_model, eps=c.norm_eps, dtype=c.compute_dtype, param_dtype=c.weight_dtype, rngs=rngs
    )


def _feed_forward(c, *, rngs: nnx.Rngs) -> layers.FeedForward:
    return layers.FeedForward(
        c.d_model,
        c.d_ff,
        dropout_rate=c.dropout_rate,
        dtype=c.compute_dtype,
        param_dtype=c.weight_dtype,
        rngs=rngs,
    )


def _relative_bias(
    c, *, bidirectional: bool, rngs: nnx.Rngs
) -> relative_position.RelativePositionBias:
    return relative_position.RelativePositionBias(
        c.num_heads,
        num_buckets=c.relative_buckets,
        max_distance=c.relative_max_distance,
        bidirectional=bidirectional,
        init_std=c.d_model**-0.5,
        param_dtype=c.weight_dtype,
        rngs=rngs,
    )


class EncoderLayer(nnx.Module):
    def __init__(self, c, *, rngs: nnx.Rngs):
        self.dropout_rate = c.dropout_rate
        self.self_attention_norm = _norm(c, rngs=rngs)
        self.self_attention = _attention(c, rngs=rngs)
        self.feed_forward_norm = _norm(c, rngs=rngs)
        self.feed_forward = _feed_forward(c, rngs=rngs)

    def __call__(self, x_btd, bias, mask, *, rngs=None):
        h = self.self_attention(self.self_attention_norm(x_btd), bias=bias, mask=mask, rngs=rngs)
        x_btd = x_btd + layers.dropout(h, self.dropout_rate, rngs)
        h = self.feed_forward(self.feed_forward_norm(x_btd), rngs=rngs)
        return x_btd + layers.dropout(h, self.dropout_rate, rngs)


class Encoder(nnx.Module):
    """Bidirectional stack: embedded [B, L, D] + mask bool [B, L] → states [B, L, D]."""

    def __init__(self, c, *, rngs: nnx.Rngs):
        self.dropout_rate = c.dropout_rate
        self.relative_bias = _relative_bias(c, bidirectional=True, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(c, rngs=rngs) for _ in range(c.num_encoder_layers)])
        self.final_norm = _norm(c, rngs=rngs)

    def __call__(self, x_btd, mask_bt, *, rngs=None):
        length = x_btd.shape[1]
        bias = self.relative_bias(length, length)  # computed once, shared by every layer
        mask = mask_bt.astype(bool)[:, None, None, :]
        x_btd = layers.dropout(x_btd, self.dropout_rate, rngs)
        for layer in self.layers:
            x_btd = layer(x_btd, bias, mask, rngs=rngs)
        return layers.dropout(self.final_norm(x_btd), self.dropout_rate, rngs)


class DecoderLayer(nnx.Module):
    def __init__(self, c, *, rngs: nnx.Rngs):
        self.dropout_rate = c.dropout_rate
        self.self_attention_norm = _norm(c, rngs=rngs)
        self.self_attention = _attention(c, rngs=rngs)
        self.cross_attention_norm = _norm(c, rngs=rngs)
        self.cross_attention = _attention(c, rngs=rngs)
        self.feed_forward_norm = _norm(c, rngs=rngs)
        self.feed_forward = _feed_forward(c, rngs=rngs)

    def _cross_and_feed_forward(self, x_btd, cross_k, cross_v, cross_mask, rngs, kv_layout="bshk"):
        q = self.cross_attention.project_query(self.cross_attention_norm(x_btd))
        h = self.cross_attention.attend(
            q, cross_k, cross_v, mask=cross_mask, rngs=rngs, kv_layout=kv_layout
        )
        x_btd = x_btd + layers.dropout(h, self.dropout_rate, rngs)
        h = self.feed_forward(self.feed_forward_norm(x_btd), rngs=rngs)
        return x_btd + layers.dropout(h, self.dropout_rate, rngs)

    def __call__(self, x_btd, memory_bsd, self_bias, self_mask, cross_mask, *, rngs=None):
        h = self.self_attention(
            self.self_attention_norm(x_btd), bias=self_bias, mask=self_mask, rngs=rngs
        )
        x_btd = x_btd + layers.dropout(h, self.dropout_rate, rngs)
        cross_k, cross_v = self.cross_attention.project_key_value(memory_bsd)
        return self._cross_and_feed_forward(x_btd, cross_k, cross_v, cross_mask, rngs)

    def step(self, x_b1d, position, layer_cache, bias_row, mask_row, cross_mask):
        """One cached position: x [B, 1, D] → (x [B, 1, D], updated self_k, self_v).

        Every cached K/V is heads-first, [B, H, S, Dh] (see `attention.Attention.attend`).
        """
        normed = self.self_attention_norm(x_b1d)
        q = self.self_attention.project_query(normed)
        k_new, v_new = self.self_attention.project_key_value(normed)
        k_new, v_new = jnp.swapaxes(k_new, 1, 2), jnp.swapaxes(v_new, 1, 2)  # [B, H, 1, Dh]
        self_k = jax.lax.dynamic_update_slice_in_dim(layer_cache["self_k"], k_new, position, 2)
        self_v = jax.lax.dynamic_update_slice_in_dim(layer_cache["self_v"], v_new, position, 2)
        h = self.self_attention.attend(
            q, self_k, self_v, bias=bias_row, mask=mask_row, kv_layout="bhsk"
        )
        x_b1d = x_b1d + h
        x_b1d = self._cross_and_feed_forward(
            x_b1d, layer_cache["cross_k"], layer_cache["cross_v"], cross_mask, None, "bhsk"
        )
        return x_b1d, self_k, self_v


class Decoder(nnx.Module):
    """Causal stack with cross-attention: embedded [B, T, D], memory [B, S, D] → [B, T, D]."""

    def __init__(self, c, *, rngs: nnx.Rngs):
        self.dropout_rate = c.dropout_rate
        self.relative_bias = _relative_bias(c, bidirectional=False, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(c, rngs=rngs) for _ in range(c.num_decoder_layers)])
        self.final_norm = _norm(c, rngs=rngs)

    def __call__(self, y_btd, memory_bsd, memory_mask_bs, *, rngs=None):
        length = y_btd.shape[1]
        self_bias = self.relative_bias(length, length)
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        cross_mask = memory_mask_bs.astype(bool)[:, None, None, :]
        y_btd = layers.dropout(y_btd, self.dropout_rate, rngs)
        for layer in self.layers:
            y_btd = layer(y_btd, memory_bsd, self_bias, causal, cross_mask, rngs=rngs)
        return layers.dropout(self.final_norm(y_btd), self.dropout_rate, rngs)

    def init_cache(self, memory_bsd, memory_mask_bs, max_len: int) -> dict:
        """Key/value cache for `step`: per layer self K/V zeros [B, H, max_len, Dh] and the
        cross-attention K/V [B, H, S, Dh] of the memory (computed once), plus the causal bias
        table. Heads first: the per-step attention dots then need no transposes."""
        batch = memory_bsd.shape[0]
        first = self.layers[0].self_attention
        zeros = jnp.zeros((batch, first.num_kv_heads, max_len, first.head_dim), first.dtype)
        per_layer = []
        for layer in self.layers:
            cross_k, cross_v = layer.cross_attention.project_key_value(memory_bsd)
            cross_k, cross_v = jnp.swapaxes(cross_k, 1, 2), jnp.swapaxes(cross_v, 1, 2)
            per_layer.append(
                {"self_k": zeros, "self_v": zeros, "cross_k": cross_k, "cross_v": cross_v}
            )
        return {
            "layers": per_layer,
            "self_bias": self.relative_bias(max_len, max_len),  # [1, H, max_len, max_len]
            "cross_mask": memory_mask_bs.astype(bool)[:, None, None, :],
        }

    def step(self, y_b1d, position, cache: dict):
        """Decode position `position` (traced int32): y [B, 1, D] → (hidden [B, 1, D], cache)."""
        max_len = cache["self_bias"].shape[-1]
        bias_row = jax.lax.dynamic_slice_in_dim(cache["self_bias"], position, 1, axis=2)
        mask_row = (jnp.arange(max_len) <= position)[None, None, None, :]
        new_layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"], strict=True):
            y_b1d, self_k, self_v = layer.step(
                y_b1d, position, layer_cache, bias_row, mask_row, cache["cross_mask"]
            )
            new_layers.append({**layer_cache, "self_k": self_k, "self_v": self_v})
        return self.final_norm(y_b1d), {**cache, "layers": new_layers}
