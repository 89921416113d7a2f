"""PhraseLDM: a Stable-Audio-style diffusion transformer over the [slots, latent] sequence.

SPEC section 4. The layer layout and every numerical detail follow
`diffusers.StableAudioDiTModel` (0.35.1) so released PyTorch weights convert
(`phrase_jax/interop/ldm_from_diffusers.py`); names below follow diffusers where it helps the
mapping.

Shapes: B batch, N slots (512), D latent width (64), W model width (512), S = N + 1 (global token
first), H heads, K key/value heads, E head width, M memory length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phrase_jax.models.conditions import (
    ConditionEncoder,
    partitioned,
    partitioned_layer_norm,
    partitioned_linear,
)


@dataclasses.dataclass(frozen=True)
class PhraseLDMConfig:
    """Model hyper-parameters; defaults are the paper's unconditional PhraseLDM (SPEC 4)."""

    n_slots: int = 512
    latent_dim: int = 64
    width: int = 512
    num_layers: int = 6
    num_heads: int = 16
    head_dim: int = 32
    num_kv_heads: int = 8  # cross-attention only; self-attention has num_heads K/V heads
    ff_dim: int = 2048  # SwiGLU inner width (the input projection is 2 * ff_dim wide)
    rope_dim: int = 16  # leading dims of each head rotated (diffusers: head_dim // 2)
    rope_theta: float = 10000.0
    time_features: int = 128  # [cos 2πtW, sin 2πtW] with W of half this size
    time_scale: float = 1e-3  # t/1000 (default); 1.0 = raw integer steps (ref compatible)
    cond_dim: int = 128  # global condition width (diffusers global_states_input_dim)
    memory_dim: int = 128  # cross-attention K/V input width (diffusers cross_attention_dim)
    norm_eps: float = 1e-5
    conditions: tuple[str, ...] = ()  # subset of ("length", "bars", "sections")
    condition_dropout: float = 0.1  # classifier-free guidance: p(drop) per condition
    length_buckets: int = 128
    max_bars: int = 128
    section_vocab_size: int = 128
    section_embed_dim: int = 128  # type and length embeddings; the encoder is twice as wide
    section_layers: int = 3
    section_heads: int = 8
    section_ff_dim: int = 1024
    section_dropout: float = 0.1
    max_sections: int = 30
    dtype: str = "float32"  # compute dtype; parameters stay float32
    # Recompute each block's activations in the backward pass instead of keeping them: the
    # 513 x 513 attention maps dominate training memory (paper size, batch 32: 20 GB on CPU).
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if self.width != self.num_heads * self.head_dim:
            raise ValueError(f"ldm config: width {self.width} != num_heads * head_dim")
        if self.num_heads % self.num_kv_heads or self.rope_dim % 2 or self.rope_dim > self.head_dim:
            raise ValueError(
                "ldm config: num_heads must be a multiple of num_kv_heads and rope_dim even "
                "and at most head_dim"
            )

    @property
    def memory_input_dim(self) -> int:
        """Width of the raw condition memory (diffusers cross_attention_input_dim)."""
        return 2 * self.section_embed_dim if "sections" in self.conditions else self.memory_dim

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PhraseLDMConfig:
        """From a dict / ml_collections ConfigDict; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"ldm config: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**dict(values))


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
        self.dense_in = partitioned_linear(
            d_in, d_out, (names[0], "mlp"), use_bias=use_bias, dtype=dtype, rngs=rngs
        )
        self.dense_out = partitioned_linear(
            d_out, d_out, ("mlp", names[1]), use_bias=use_bias, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense_out(jax.nn.silu(self.dense_in(x)))


def rotary_table(length: int, rope_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [length, rope_dim // 2] for positions 0..length-1 (global token = 0)."""
    inv_freq = 1.0 / theta ** (np.arange(0, rope_dim, 2, dtype=np.float32) / rope_dim)
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None, :].astype(np.float32)
    return jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))


def apply_rotary(x_bshe: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on the leading 2 * cos.shape[-1] dims of each head, in fp32."""
    half = cos.shape[-1]
    x = x_bshe.astype(jnp.float32)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    rotated = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, rest], axis=-1)
    return rotated.astype(x_bshe.dtype)


class Attention(nnx.Module):
    """Multi-head attention without biases; K/V may have fewer heads (grouped-query).

    Query head h reads K/V head h // (num_heads // num_kv_heads), as diffusers'
    repeat_interleave and jax.nn.dot_product_attention both do.
    """

    def __init__(self, width, kv_in, num_heads, num_kv_heads, head_dim, kv_name, *, dtype, rngs):
        init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        kv_heads_name = "kv_heads" if num_kv_heads != num_heads else "heads"

        def param(shape, names, **kw):
            return nnx.Param(partitioned(init, names)(rngs.params(), shape), **kw)

        self.q_kernel = param((width, num_heads, head_dim), ("embed", "heads", "head_dim"))
        self.k_kernel = param((kv_in, num_kv_heads, head_dim), (kv_name, kv_heads_name, "head_dim"))
        self.v_kernel = param((kv_in, num_kv_heads, head_dim), (kv_name, kv_heads_name, "head_dim"))
        out_init = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        self.out_kernel = nnx.Param(
            partitioned(out_init, ("heads", "head_dim", "embed"))(
                rngs.params(), (num_heads, head_dim, width)
            )
        )
        self.dtype = dtype

    def __call__(self, x_bsw, kv_bmc, *, mask_bm=None, rotary=None) -> jax.Array:
        dt = self.dtype
        q = jnp.einsum("bsw,whe->bshe", x_bsw.astype(dt), self.q_kernel[...].astype(dt))
        k = jnp.einsum("bmc,che->bmhe", kv_bmc.astype(dt), self.k_kernel[...].astype(dt))
        v = jnp.einsum("bmc,che->bmhe", kv_bmc.astype(dt), self.v_kernel[...].astype(dt))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        mask = None if mask_bm is None else mask_bm[:, None, None, :]
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        return jnp.einsum("bshe,hew->bsw", out, self.out_kernel[...].astype(dt))


class SwiGLU(nnx.Module):
    """Dense(W → 2F) split into value, gate; value * SiLU(gate); Dense(F → W); with biases."""

    def __init__(self, width: int, ff_dim: int, *, dtype, rngs: nnx.Rngs):
        self.proj_in = partitioned_linear(
            width, 2 * ff_dim, ("embed", "mlp"), use_bias=True, dtype=dtype, rngs=rngs
        )
        self.proj_out = partitioned_linear(
            ff_dim, width, ("mlp", "embed"), use_bias=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj_in(x), 2, axis=-1)
        return self.proj_out(value * jax.nn.silu(gate))


class DiTBlock(nnx.Module):
    """Pre-LN self-attention (RoPE) → cross-attention (GQA, masked) → SwiGLU, each residual."""

    def __init__(self, config: PhraseLDMConfig, *, rngs: nnx.Rngs):
        c, dt = config, jnp.dtype(config.dtype)
        self.norm1 = partitioned_layer_norm(c.width, eps=c.norm_eps, rngs=rngs)
        self.self_attn = Attention(
            c.width, c.width, c.num_heads, c.num_heads, c.head_dim, "embed", dtype=dt, rngs=rngs
        )
        self.norm2 = partitioned_layer_norm(c.width, eps=c.norm_eps, rngs=rngs)
        self.cross_attn = Attention(
            c.width,
            c.memory_dim,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            "cond",
            dtype=dt,
            rngs=rngs,
        )
        self.norm3 = partitioned_layer_norm(c.width, eps=c.norm_eps, rngs=rngs)
        self.ff = SwiGLU(c.width, c.ff_dim, dtype=dt, rngs=rngs)
        self.dtype = dt

    def __call__(self, h_bsw, memory_bmc, memory_mask_bm, rotary) -> jax.Array:
        """h_bsw float32 [B, S, W] (the residual stream stays fp32 under bf16 compute)."""
        norm = lambda layer, x: layer(x).astype(self.dtype)
        f32 = lambda y: y.astype(jnp.float32)
        normed = norm(self.norm1, h_bsw)
        h_bsw = h_bsw + f32(self.self_attn(normed, normed, rotary=rotary))
        normed = norm(self.norm2, h_bsw)
        h_bsw = h_bsw + f32(self.cross_attn(normed, memory_bmc, mask_bm=memory_mask_bm))
        return h_bsw + f32(self.ff(norm(self.norm3, h_bsw)))


def _call_block(block: DiTBlock, h_bsw, memory_bmc, memory_mask_bm, rotary) -> jax.Array:
    return block(h_bsw, memory_bmc, memory_mask_bm, rotary)


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
        self.preprocess_conv = partitioned_linear(
            c.latent_dim, c.latent_dim, (None, "latent"), use_bias=False, dtype=dt, rngs=rngs
        )
        self.proj_in = partitioned_linear(
            c.latent_dim, c.width, ("latent", "embed"), use_bias=False, dtype=dt, rngs=rngs
        )
        self.blocks = nnx.List([DiTBlock(c, rngs=rngs) for _ in range(c.num_layers)])
        self.proj_out = partitioned_linear(
            c.width, c.latent_dim, ("embed", "latent"), use_bias=False, dtype=dt, rngs=rngs
        )
        self.postprocess_conv = partitioned_linear(
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
        rotary = rotary_table(h_bsw.shape[1], c.rope_dim, c.rope_theta)
        run_block = nnx.remat(_call_block) if c.remat else _call_block
        for block in self.blocks:
            h_bsw = run_block(block, h_bsw, memory, memory_mask_bm, rotary)
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
