"""PhraseLDM hyper-parameters (SPEC 4), in their own module so that both the DiT (`dit.py`) and
its condition encoders (`conditions.py`) read them without importing each other."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


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
