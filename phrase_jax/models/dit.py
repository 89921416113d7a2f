"""PhraseLDM: a Stable-Audio-style diffusion transformer over the [slots, latent] sequence.

SPEC section 4. The layer layout and every numerical detail follow
`diffusers.StableAudioDiTModel` (0.35.1) so released PyTorch weights convert
(`phrase_jax/interop/ldm_from_diffusers.py`); names below follow diffusers where it helps the
mapping. Attention, RoPE, norms and Dense layers are the shared ones (`layers.py`,
`attention.py`); the hyper-parameters are `ldm_config.PhraseLDMConfig`.

Shapes: B batch, N slots (512), D latent width (64), W model width (512), S = N + 1 (global token
first), H heads, K key/value heads, E head width, M memory length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phrase_jax.models import layers
from phrase_jax.models.attention import Attention
from phrase_jax.models.conditions import ConditionEncoder
from phrase_jax.models.ldm_config import PhraseLDMConfig


def _layer_norm(config: PhraseLDMConfig, *, rngs: nnx.Rngs) -> layers.LayerNorm:
    return layers.LayerNorm(config.width, eps=config.norm_eps, rngs=rngs)


def paper_config(conditions: tuple[str, ...] = (), **overrides) -> PhraseLDMConfig:
    """The paper-size model. Section conditioning widens the cross-attention K/V input to 256,
    which is what the ref's 32.40 M parameter count implies (128 would give 31.9 M)."""
    memory_dim = 256 if "sections" in conditions else 128
    return PhraseLDMConfig(**{"conditions": conditions, "memory_dim": memory_dim, **overrides})


class FourierWeights(nnx.Variable):
    """Fixed random Fourier frequencies: stored and checkpointed, never trained."""


class TimestepFourierFeatures(nnx.Module):
    """t [B] → [cos 2πtW, sin 2πtW] [B, time_features] (diffusers flip_sin_to_cos=True)."""

    def __init__(self, features: int, *, rngs: nnx.Rngs):
        self.W = FourierWeights(
            jax.random.normal(rngs.params(), (features // 2,), jnp.float32),
            out_sharding=(None,),
            eager_sharding=False,
        )

    def __call__(self, t_b: jax.Array) -> jax.Array:
        # Same rounding order as torch (2π·t first, then ·W): raw steps make arguments ~1e4.
        arg = (jnp.float32(2 * np.pi) * t_b.astype(jnp.float32))[:, None] * self.W[...][None, :]
        return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


class ProjectionMLP(nnx.Module):
    """Dense → SiLU → Dense (diffusers nn.Sequential(Linear, SiLU, Linear))."""

    def __init__(self, d_in, d_out, names, *, use_bias: bool, dtype, rngs: nnx.Rngs):
        self.dense_in = layers.xavier_dense(
            d_in, d_out, (names[0], "mlp"), use_bias=use_bias, dtype=dtype, rngs=rngs
        )
        self.dense_out = layers.xavier_dense(
            d_out, d_out, ("mlp", names[1]), use_bias=use_bias, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense_out(jax.nn.silu(self.dense_in(x)))


class SwiGLU(nnx.Module):
    """Dense(W → 2F) split into value, gate; value * SiLU(gate); Dense(F → W); with biases."""

    def __init__(self, width: int, ff_dim: int, *, dtype, rngs: nnx.Rngs):
        self.proj_in = layers.xavier_dense(
            width, 2 * ff_dim, ("embed", "mlp"), use_bias=True, dtype=dtype, rngs=rngs
        )
        self.proj_out = layers.xavier_dense(
            ff_dim, width, ("mlp", "embed"), use_bias=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj_in(x), 2, axis=-1)
        return self.proj_out(value * jax.nn.silu(gate))


class DiTBlock(nnx.Module):
    """Pre-LN self-attention (RoPE) → cross-attention (GQA, masked) → SwiGLU, each residual."""

    def __init__(self, config: PhraseLDMConfig, *, rngs: nnx.Rngs):
        c, dt = config, jnp.dtype(config.dtype)
        self.norm1 = _layer_norm(c, rngs=rngs)
        self.self_attn = Attention(c.width, c.num_heads, c.head_dim, dtype=dt, rngs=rngs)
        self.norm2 = _layer_norm(c, rngs=rngs)
        self.cross_attn = Attention(
            c.width,
            c.num_heads,
            c.head_dim,
            kv_features=c.memory_dim,
            num_kv_heads=c.num_kv_heads,
            kv_axis="cond",
            dtype=dt,
            rngs=rngs,
        )
        self.norm3 = _layer_norm(c, rngs=rngs)
        self.ff = SwiGLU(c.width, c.ff_dim, dtype=dt, rngs=rngs)
        self.dtype = dt

    def __call__(self, h_bsw, memory_bmc, memory_mask_b11m, rotary) -> jax.Array:
        """h_bsw float32 [B, S, W] (the residual stream stays fp32 under bf16 compute);
        memory_mask_b11m bool [B, 1, 1, M] or None; rotary (cos, sin) [S, rope_dim // 2]."""
        norm = lambda layer, x: layer(x).astype(self.dtype)
        f32 = lambda y: y.astype(jnp.float32)
        normed = norm(self.norm1, h_bsw)
        h_bsw = h_bsw + f32(self.self_attn(normed, rotary=rotary))
        normed = norm(self.norm2, h_bsw)
        h_bsw = h_bsw + f32(self.cross_attn(normed, memory_bmc, mask=memory_mask_b11m))
        return h_bsw + f32(self.ff(norm(self.norm3, h_bsw)))


def _scan_blocks(blocks, h_bsw, memory_bmc, memory_mask_b11m, rotary) -> jax.Array:
    """The blocks as one `lax.scan` over their stacked weights, each step rematerialised.

    Plain `nnx.remat` per block saved almost nothing on XLA CPU: its scheduler keeps every
    block's recomputed activations alive at once (docs/results.md). A scan body's buffers are
    reused from one layer to the next, so the backward pass holds one block's activations plus
    the [B, S, W] input of each block. The weights are stacked inside the jitted step (a copy of
    the block weights, ~0.1 GB at paper size); the parameter tree keeps one entry per block.
    """
    graphdef, *_ = nnx.split(blocks[0])
    states = [nnx.state(block) for block in blocks]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

    @jax.checkpoint
    def one_block(h, state):
        return nnx.merge(graphdef, state)(h, memory_bmc, memory_mask_b11m, rotary), None

    return jax.lax.scan(one_block, h_bsw, stacked)[0]


class PhraseLDM(nnx.Module):
    """The PhraseLDM denoiser: x_t [B, N, D], t [B] → prediction [B, N, D].

    `__call__` encodes the conditions and runs `denoise`; `denoise` is the diffusers-equivalent
    backbone that takes the global vector and the memory directly (parity tests use it).
    """

    def __init__(self, config: PhraseLDMConfig | Mapping[str, Any], *, rngs: nnx.Rngs):
        if not isinstance(config, PhraseLDMConfig):
            config = PhraseLDMConfig.from_mapping(config)
        c, dt = config, jnp.dtype(config.dtype)
        self.config = c
        self.conditioner = ConditionEncoder(c, rngs=rngs)
        self.time_proj = TimestepFourierFeatures(c.time_features, rngs=rngs)
        self.timestep_proj = ProjectionMLP(
            c.time_features, c.width, ("cond", "embed"), use_bias=True, dtype=dt, rngs=rngs
        )
        self.global_proj = ProjectionMLP(
            c.cond_dim, c.width, ("cond", "embed"), use_bias=False, dtype=dt, rngs=rngs
        )
        self.memory_proj = ProjectionMLP(
            c.memory_input_dim, c.memory_dim, ("cond", "cond"), use_bias=False, dtype=dt, rngs=rngs
        )
        # 1x1 convolutions are per-slot Dense layers; (None, latent) avoids naming one axis twice.
        self.preprocess_conv = layers.xavier_dense(
            c.latent_dim, c.latent_dim, (None, "latent"), use_bias=False, dtype=dt, rngs=rngs
        )
        self.proj_in = layers.xavier_dense(
            c.latent_dim, c.width, ("latent", "embed"), use_bias=False, dtype=dt, rngs=rngs
        )
        self.blocks = nnx.List([DiTBlock(c, rngs=rngs) for _ in range(c.num_layers)])
        self.proj_out = layers.xavier_dense(
            c.width, c.latent_dim, ("embed", "latent"), use_bias=False, dtype=dt, rngs=rngs
        )
        self.postprocess_conv = layers.xavier_dense(
            c.latent_dim, c.latent_dim, (None, "latent"), use_bias=False, dtype=dt, rngs=rngs
        )

    def __call__(
        self,
        x_bnd: jax.Array,
        t_b: jax.Array,
        conditions: Mapping[str, jax.Array] | None = None,
        *,
        force_drop_b: jax.Array | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """`rng` given = training: section-encoder dropout and condition dropping for CFG.

        `t_b` holds diffusion steps (0..T-1), scaled by `config.time_scale` for the features.
        `force_drop_b` bool [B] replaces every condition by its learned null where True.
        """
        global_bc, memory_bmc, memory_mask_bm = self.conditioner(
            conditions, x_bnd.shape[0], force_drop_b=force_drop_b, rng=rng
        )
        t_b = jnp.broadcast_to(t_b, x_bnd.shape[:1]) * self.config.time_scale
        return self.denoise(x_bnd, t_b, global_bc, memory_bmc, memory_mask_bm)

    def denoise(self, x_bnd, time_b, global_bc, memory_bmc, memory_mask_bm=None) -> jax.Array:
        """The diffusers StableAudioDiTModel forward, channels last.

        x_bnd [B, N, D]; time_b [B] (already scaled); global_bc [B, cond_dim];
        memory_bmc [B, M, memory_input_dim]; memory_mask_bm bool [B, M] or None. → [B, N, D].
        """
        c, dt = self.config, jnp.dtype(self.config.dtype)
        time_bw = self.timestep_proj(self.time_proj(time_b))
        global_bw = self.global_proj(global_bc.astype(dt)) + time_bw
        x_bnd = x_bnd.astype(dt)
        h_bnw = self.proj_in(x_bnd + self.preprocess_conv(x_bnd))
        h_bsw = jnp.concatenate([global_bw[:, None, :], h_bnw], axis=1).astype(jnp.float32)
        memory = self.memory_proj(memory_bmc.astype(dt))
        rotary = layers.rotary_table(h_bsw.shape[1], c.rope_dim, c.rope_theta)
        mask_b11m = None if memory_mask_bm is None else memory_mask_bm[:, None, None, :]
        if c.remat:
            h_bsw = _scan_blocks(self.blocks, h_bsw, memory, mask_b11m, rotary)
        else:
            for block in self.blocks:
                h_bsw = block(h_bsw, memory, mask_b11m, rotary)
        y_bnd = self.proj_out(h_bsw.astype(dt))[:, 1:]
        return (y_bnd + self.postprocess_conv(y_bnd)).astype(jnp.float32)


def count_parameters(model_or_config: PhraseLDM | PhraseLDMConfig) -> dict[str, int]:
    """Trainable parameter counts by top-level part (a config is counted shape-only)."""
    if isinstance(model_or_config, PhraseLDMConfig):
        config = model_or_config
        model = nnx.eval_shape(lambda: PhraseLDM(config, rngs=nnx.Rngs(0)))
    else:
        model = model_or_config
    counts: dict[str, int] = {}
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        counts[str(path[0])] = counts.get(str(path[0]), 0) + int(np.prod(leaf.shape))
    counts["total"] = sum(counts.values())
    return counts
