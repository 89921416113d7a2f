"""PhraseLDM conditions: the section encoder and the condition encoder.

SPEC 4 (conditions) and the classifier-free-guidance "Beyond". The condition encoder turns a
batch's condition arrays into the two things the diffusion transformer consumes:

- `global_bc` [B, cond_dim]: projected into the global token (length bucket and/or exact bar
  count; zeros when unconditional);
- `memory_bmc` [B, M, memory_input_dim] with `memory_mask_bm` bool [B, M]: the cross-attention
  memory (the section encoder's output; one all-zero, unmasked row when there is no section
  condition, which makes cross-attention contribute exactly zero because its projections have
  no biases).

Condition arrays in a batch (keys of the `conditions` mapping; only those a model uses are read):
- `n_bars` int32 [B]: song length in bars (1..max_bars);
- `section_types` int32 [B, S], `section_lengths` int32 [B, S], `section_mask` bool [B, S]:
  the song's sections padded to S = max_sections (see `music/sections.py`, which also holds the
  section vocabulary and the length-bucket rule).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from phrase_jax.models import layers
from phrase_jax.models.attention import Attention
from phrase_jax.models.ldm_config import PhraseLDMConfig
from phrase_jax.music import sections

CONDITION_NAMES = ("length", "bars", "sections")

_embed_init = nnx.initializers.normal(stddev=0.02)


def _embed(num: int, features: int, *, rngs: nnx.Rngs) -> nnx.Embed:
    """Embedding table [num, features] with logical axes (`vocab`, `cond`)."""
    return nnx.Embed(
        num, features, embedding_init=layers.partitioned(_embed_init, ("vocab", "cond")), rngs=rngs
    )


class PostLNEncoderLayer(nnx.Module):
    """torch.nn.TransformerEncoderLayer (post-LN, ReLU, biases, dropout) with a boolean key mask."""

    def __init__(self, width: int, heads: int, ff_width: int, rate: float, *, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"section encoder width {width} is not divisible by {heads} heads")
        self.rate = rate
        # torch initialises the fused [3W, W] in-projection with xavier uniform; the same
        # variance for each of the [W, heads, W / heads] kernels is fan_avg scaling by 1/2.
        in_init = nnx.initializers.variance_scaling(
            0.5, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2)
        )
        self.self_attn = Attention(
            width,
            heads,
            width // heads,
            in_axis="cond",
            use_bias=True,
            dropout_rate=rate,
            query_init=in_init,
            key_init=in_init,
            value_init=in_init,
            rngs=rngs,
        )
        self.norm1 = layers.LayerNorm(width, eps=1e-5, rngs=rngs)
        self.ff_in = layers.xavier_dense(width, ff_width, ("cond", "mlp"), rngs=rngs)
        self.ff_out = layers.xavier_dense(ff_width, width, ("mlp", "cond"), rngs=rngs)
        self.norm2 = layers.LayerNorm(width, eps=1e-5, rngs=rngs)

    def __call__(self, x_bsc: jax.Array, mask_bs: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        attended = self.self_attn(x_bsc, mask=mask_bs[:, None, None, :], rngs=rngs)
        x_bsc = self.norm1(x_bsc + layers.dropout(attended, self.rate, rngs))
        hidden = layers.dropout(jax.nn.relu(self.ff_in(x_bsc)), self.rate, rngs)
        return self.norm2(x_bsc + layers.dropout(self.ff_out(hidden), self.rate, rngs))


class SectionEncoder(nnx.Module):
    """(type, length) pairs → Embedding 128 each, concatenated → post-LN transformer encoder."""

    def __init__(self, config: PhraseLDMConfig, *, rngs: nnx.Rngs):
        width = 2 * config.section_embed_dim
        self.type_embed = _embed(config.section_vocab_size, config.section_embed_dim, rngs=rngs)
        self.length_embed = _embed(config.max_bars + 1, config.section_embed_dim, rngs=rngs)
        self.layers = nnx.List(
            [
                PostLNEncoderLayer(
                    width,
                    config.section_heads,
                    config.section_ff_dim,
                    config.section_dropout,
                    rngs=rngs,
                )
                for _ in range(config.section_layers)
            ]
        )
        self.max_bars = config.max_bars
        self.vocab_size = config.section_vocab_size

    def __call__(
        self,
        type_ids_bs: jax.Array,
        lengths_bs: jax.Array,
        mask_bs: jax.Array,
        rng: jax.Array | None,
    ) -> jax.Array:
        """Returns memory [B, S, 2 * section_embed_dim]; padded rows are garbage, use the mask."""
        # Clip so padded rows holding junk ids stay in range; the mask hides them anyway.
        types = jnp.clip(type_ids_bs, 0, self.vocab_size - 1)
        lengths = jnp.clip(lengths_bs, 0, self.max_bars)
        x_bsc = jnp.concatenate([self.type_embed(types), self.length_embed(lengths)], axis=-1)
        rngs = None if rng is None else nnx.Rngs(dropout=rng)
        for layer in self.layers:
            x_bsc = layer(x_bsc, mask_bs, rngs)
        return x_bsc


def _drop_mask(rng: jax.Array | None, rate: float, batch: int, forced: jax.Array | None):
    """bool [B]: True where a condition is replaced by its learned null."""
    dropped = jnp.zeros((batch,), bool) if forced is None else forced.astype(bool)
    if rng is not None and rate > 0.0:
        dropped = dropped | jax.random.bernoulli(rng, rate, (batch,))
    return dropped


class ConditionEncoder(nnx.Module):
    """All of a PhraseLDM's conditions → (global_bc, memory_bmc, memory_mask_bm).

    Classifier-free guidance: in training (`rng` given) each condition is independently replaced
    by a learned null with probability `condition_dropout`; `force_drop_b` drops all of them for
    the examples marked True (the unconditional half of guided sampling).
    """

    def __init__(self, config: PhraseLDMConfig, *, rngs: nnx.Rngs):
        unknown = set(config.conditions) - set(CONDITION_NAMES)
        if unknown:
            raise ValueError(f"config.conditions: unknown {sorted(unknown)}; use {CONDITION_NAMES}")
        self.conditions = tuple(config.conditions)
        self.rate = config.condition_dropout
        self.cond_dim = config.cond_dim
        self.memory_input_dim = config.memory_input_dim
        self.num_buckets = config.length_buckets
        self.max_bars = config.max_bars
        null = layers.partitioned(_embed_init, ("cond",))
        if "length" in self.conditions:
            self.length_embed = _embed(config.length_buckets, config.cond_dim, rngs=rngs)
            self.null_length = nnx.Param(null(rngs.params(), (config.cond_dim,)))
        if "bars" in self.conditions:
            self.bars_embed = _embed(config.max_bars + 1, config.cond_dim, rngs=rngs)
            self.null_bars = nnx.Param(null(rngs.params(), (config.cond_dim,)))
        if "sections" in self.conditions:
            self.section_encoder = SectionEncoder(config, rngs=rngs)
            self.null_memory = nnx.Param(null(rngs.params(), (config.memory_input_dim,)))

    def __call__(
        self,
        conditions: Mapping[str, jax.Array] | None,
        batch: int,
        *,
        force_drop_b: jax.Array | None = None,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        conditions = conditions or {}
        missing = [k for k in self.required_keys() if k not in conditions]
        if missing:
            raise KeyError(f"conditions: missing {missing} (this model uses {self.conditions})")
        keys = list(jax.random.split(rng, 4)) if rng is not None else [None] * 4
        global_bc = jnp.zeros((batch, self.cond_dim), jnp.float32)
        if "length" in self.conditions:
            bucket = jnp.clip(sections.length_bucket(conditions["n_bars"]), 0, self.num_buckets - 1)
            dropped = _drop_mask(keys[0], self.rate, batch, force_drop_b)
            emb = jnp.where(
                dropped[:, None], self.null_length[...], self.length_embed(bucket.astype(jnp.int32))
            )
            global_bc = global_bc + emb
        if "bars" in self.conditions:
            bars = jnp.clip(conditions["n_bars"], 0, self.max_bars)
            dropped = _drop_mask(keys[1], self.rate, batch, force_drop_b)
            global_bc = global_bc + jnp.where(
                dropped[:, None], self.null_bars[...], self.bars_embed(bars)
            )
        if "sections" not in self.conditions:
            memory = jnp.zeros((batch, 1, self.memory_input_dim), jnp.float32)
            return global_bc, memory, jnp.ones((batch, 1), bool)
        mask_bs = conditions["section_mask"].astype(bool)
        memory = self.section_encoder(
            conditions["section_types"], conditions["section_lengths"], mask_bs, keys[2]
        )
        # A dropped example attends to one learned null row only (slot 0), never to padding.
        dropped = _drop_mask(keys[3], self.rate, batch, force_drop_b)
        dropped = dropped | ~mask_bs.any(axis=-1)  # a song without labels gets the null too
        first = jnp.arange(mask_bs.shape[1]) == 0
        memory = jnp.where(dropped[:, None, None], self.null_memory[...], memory)
        mask_bs = jnp.where(dropped[:, None], first[None, :], mask_bs)
        return global_bc, memory, mask_bs

    def required_keys(self) -> tuple[str, ...]:
        keys = ("n_bars",) if {"length", "bars"} & set(self.conditions) else ()
        if "sections" in self.conditions:
            keys += ("section_types", "section_lengths", "section_mask")
        return keys
