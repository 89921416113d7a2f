"""PhraseVAE (SPEC 2): a T5-style encoder-decoder with a multi-query latent bottleneck.

`config.mode` picks what the decoder cross-attends to:
- `span_infill`: the whole encoder sequence, with the encoder mask (stage 1);
- `autoencoder`: the encoder's final states at the first `num_queries` positions, the
  `[C0]..[C3]` query tokens (stage 2);
- `vae`: those states flattened (2048) → LayerNorm → Dense(2048→128) → mean/logvar (64 each) →
  z → Dense(64→2048) → 4 memory vectors (stage 3).

The parameter tree is the same in every mode except `bottleneck`, which exists only when
mode == "vae"; `load_matching_params` carries stage 1 → 2 → 3 and names the new parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from phrase_jax.models import layers
from phrase_jax.models.t5 import Decoder, Encoder

MODES = ("span_infill", "autoencoder", "vae")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Model sizes; defaults are the paper model (about 14.29 M parameters in mode `vae`)."""

    mode: str = "vae"
    vocab_size: int = 1000
    d_model: int = 512
    num_heads: int = 6
    head_dim: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    relative_buckets: int = 32
    relative_max_distance: int = 128
    dropout_rate: float = 0.1
    norm_eps: float = 1e-6
    num_queries: int = 4
    latent_dim: int = 64
    bottleneck_norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"model config key 'mode' is {self.mode!r}; use one of {MODES}")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in _DTYPES:
                raise ValueError(f"model config key {key!r}: use one of {tuple(_DTYPES)}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> VAEConfig:
        """Build from a ConfigDict/dict; unknown keys are an error (typos must not pass)."""
        values = dict(mapping.items())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return _DTYPES[self.param_dtype]

    @property
    def joined_width(self) -> int:
        return self.num_queries * self.d_model


def as_config(config: VAEConfig | Mapping[str, Any]) -> VAEConfig:
    return config if isinstance(config, VAEConfig) else VAEConfig.from_mapping(config)


class Bottleneck(nnx.Module):
    """Multi-query compression: [B, Q, D] states ↔ (mean, logvar) [B, latent] ↔ memory [B, Q, D].

    Reference (PyTorch) names: `layer_norm`, `proj`, `post_proj` (see
    `interop/vae_from_torch.py`). It always computes in float32, also under bf16: its means are
    the latents the LDM learns.
    """

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        c = config
        kw = dict(dtype=jnp.float32, param_dtype=c.weight_dtype, rngs=rngs)
        self.num_queries, self.d_model, self.latent_dim = c.num_queries, c.d_model, c.latent_dim
        self.norm = layers.LayerNorm(
            c.joined_width, eps=c.bottleneck_norm_eps, axis_name="joined", **kw
        )
        self.to_moments = layers.Dense(c.joined_width, 2 * c.latent_dim, ("joined", "latent"), **kw)
        self.from_latent = layers.Dense(c.latent_dim, c.joined_width, ("latent", "joined"), **kw)

    def moments(self, query_states_bqd: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar), each float32 [B, latent_dim]; mean is the first half (as ref)."""
        joined = query_states_bqd.astype(jnp.float32).reshape(query_states_bqd.shape[0], -1)
        moments = self.to_moments(self.norm(joined))
        return moments[:, : self.latent_dim], moments[:, self.latent_dim :]

    def memory(self, z_bl: jax.Array) -> jax.Array:
        """Decoder memory float32 [B, num_queries, d_model] from latents [B, latent_dim]."""
        joined = self.from_latent(z_bl.astype(jnp.float32))
        return joined.reshape(z_bl.shape[0], self.num_queries, self.d_model)


class PhraseVAE(nnx.Module):
    """Encoder, decoder, tied embedding `shared` [vocab, d_model], and (mode vae) `bottleneck`."""

    def __init__(self, config: VAEConfig | Mapping[str, Any], *, rngs: nnx.Rngs):
        c = self.config = as_config(config)
        self.shared = nnx.Param(
            layers.partitioned(layers.normal_init(1.0), ("vocab", "embed"))(
                rngs.params(), (c.vocab_size, c.d_model), c.weight_dtype
            )
        )
        self.encoder = Encoder(c, rngs=rngs)
        self.decoder = Decoder(c, rngs=rngs)
        self.bottleneck = Bottleneck(c, rngs=rngs) if c.mode == "vae" else None

    def embed(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.shared[...], ids, axis=0).astype(self.config.compute_dtype)

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        """Tied output projection, float32 [B, T, vocab]; T5 rescales by d_model^-0.5 first."""
        c = self.config
        scaled = hidden_btd.astype(jnp.float32) * (c.d_model**-0.5)
        return jnp.einsum(
            "btd,vd->btv",
            scaled.astype(c.compute_dtype),
            self.shared[...].astype(c.compute_dtype),
            preferred_element_type=jnp.float32,
        )

    def encode(self, encoder_ids, encoder_mask, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Encoder output [B, Le, d_model] (after the final RMSNorm)."""
        return self.encoder(self.embed(encoder_ids), encoder_mask, rngs=rngs)

    def latent_moments(self, encoder_ids, encoder_mask) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar) float32 [B, latent_dim]; mode vae only, no dropout."""
        self._require_bottleneck()
        states = self.encode(encoder_ids, encoder_mask)
        return self.bottleneck.moments(states[:, : self.config.num_queries])

    def latents_to_memory(self, z_bl: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(memory [B, Q, d_model], memory_mask bool [B, Q]) from latents; mode vae only."""
        self._require_bottleneck()
        memory = self.bottleneck.memory(z_bl).astype(self.config.compute_dtype)
        return memory, jnp.ones(memory.shape[:2], bool)

    def memory_from_batch(self, batch, *, rngs: nnx.Rngs | None = None):
        """(memory, memory_mask, moments | None) that the decoder cross-attends to.

        With `rngs` (training) the vae mode samples z = mean + exp(logvar/2) * noise; without,
        z = mean.
        """
        c = self.config
        states = self.encode(batch["encoder_ids"], batch["encoder_mask"], rngs=rngs)
        if c.mode == "span_infill":
            return states, batch["encoder_mask"].astype(bool), None
        query_states = states[:, : c.num_queries]
        if c.mode == "autoencoder":
            return query_states, jnp.ones(query_states.shape[:2], bool), None
        mean, logvar = self.bottleneck.moments(query_states)
        z = mean
        if rngs is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rngs.noise(), mean.shape)
        memory, memory_mask = self.latents_to_memory(z)
        return memory, memory_mask, (mean, logvar)

    def decode(self, decoder_inputs, memory, memory_mask, *, rngs: nnx.Rngs | None = None):
        """Teacher-forced logits float32 [B, Ld, vocab]."""
        hidden = self.decoder(self.embed(decoder_inputs), memory, memory_mask, rngs=rngs)
        return self.logits(hidden)

    def __call__(self, batch, *, rngs: nnx.Rngs | None = None):
        """(logits [B, Ld, vocab], (mean, logvar) or None). `rngs` given = training mode."""
        memory, memory_mask, moments = self.memory_from_batch(batch, rngs=rngs)
        return self.decode(batch["decoder_inputs"], memory, memory_mask, rngs=rngs), moments

    def _require_bottleneck(self):
        if self.bottleneck is None:
            raise ValueError(f"model mode is {self.config.mode!r}; latents need mode 'vae'")


def kl_divergence(mean_bl, logvar_bl, row_mask_b=None) -> jax.Array:
    """KL(q || N(0, I)) summed over latent dims, averaged over real rows, divided by latent_dim."""
    per_row = 0.5 * jnp.sum(jnp.square(mean_bl) + jnp.exp(logvar_bl) - 1.0 - logvar_bl, axis=-1)
    if row_mask_b is None:
        row_mask_b = jnp.ones(per_row.shape, bool)
    n_rows = jnp.maximum(jnp.sum(row_mask_b), 1)
    return jnp.sum(jnp.where(row_mask_b, per_row, 0.0)) / n_rows / mean_bl.shape[-1]


def compute_loss(
    model: PhraseVAE, batch, rng: jax.Array | None, *, train: bool, kl_weight: float = 0.01
):
    """(loss, metrics): token-mean cross-entropy over `decoder_mask` + kl_weight * KL.

    batch: docs/design.md VAE batch. rng: a PRNG key for dropout and z noise, required when
    `train`. Rows whose `decoder_mask` is all False are batch padding and count for nothing.
    metrics: loss, ce, kl, accuracy, n_tokens (float32 scalars).
    """
    if train and rng is None:
        raise ValueError("compute_loss(train=True) needs an rng key for dropout and z sampling")
    rngs = None
    if train:
        dropout_key, noise_key = jax.random.split(rng)
        rngs = nnx.Rngs(dropout=dropout_key, noise=noise_key)
    logits, moments = model(batch, rngs=rngs)
    targets = batch["decoder_targets"]
    token_mask = batch["decoder_mask"].astype(bool)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    n_tokens = jnp.sum(token_mask)
    denominator = jnp.maximum(n_tokens, 1)
    ce = jnp.sum(jnp.where(token_mask, token_nll, 0.0)) / denominator
    correct = (jnp.argmax(logits, axis=-1) == targets) & token_mask
    accuracy = jnp.sum(correct) / denominator
    kl = jnp.zeros((), jnp.float32)
    if moments is not None:
        kl = kl_divergence(*moments, row_mask_b=jnp.any(token_mask, axis=-1))
    loss = ce + kl_weight * kl
    metrics = {
        "loss": loss,
        "ce": ce,
        "kl": kl,
        "accuracy": accuracy,
        "n_tokens": n_tokens.astype(jnp.float32),
    }
    return loss, metrics


def count_params(model: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def param_dict(model_or_state) -> dict[tuple, Any]:
    """Flat {path tuple: array} of the parameters of a module, nnx.State or nested pure dict."""
    if isinstance(model_or_state, nnx.Module):
        model_or_state = nnx.state(model_or_state, nnx.Param)
    if isinstance(model_or_state, nnx.State):
        model_or_state = nnx.to_pure_dict(model_or_state)
    return traverse_util.flatten_dict(dict(model_or_state))


def load_matching_params(model: PhraseVAE, other) -> tuple[str, ...]:
    """Copy every parameter present in both `model` and `other` (a module, State or pure dict).

    Returns the '/'-joined paths of the model's parameters that `other` lacks (e.g. the
    bottleneck when stage 3 starts from stage 2); they keep their fresh initialisation. A shape
    mismatch is an error naming the parameter.
    """
    ours = param_dict(model)
    theirs = {tuple(str(k) for k in path): v for path, v in param_dict(other).items()}
    updated, new = {}, []
    for path, value in ours.items():
        key = tuple(str(k) for k in path)
        if key not in theirs:
            new.append("/".join(key))
            continue
        source = theirs[key]
        if tuple(source.shape) != tuple(value.shape):
            raise ValueError(
                f"parameter {'/'.join(key)}: shape {tuple(source.shape)} in the source, "
                f"{tuple(value.shape)} in the model; check the model config sizes"
            )
        updated[path] = jnp.asarray(source, dtype=value.dtype)
    state = nnx.state(model, nnx.Param)
    pure = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    pure.update(updated)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(pure))
    nnx.update(model, state)
    return tuple(new)
