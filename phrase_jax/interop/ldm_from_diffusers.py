"""diffusers `StableAudioDiTModel` weights → PhraseLDM (NNX) weights.

The ref PhraseLDM is a diffusers StableAudioDiTModel; this maps its state dict onto
`PhraseLDM`'s backbone (everything except the condition encoder, which lives outside diffusers).
Torch is not needed here: values may be numpy arrays or anything with `.detach().cpu().numpy()`.

Layout changes: torch Linear weights are [out, in] (ours [in, out]); Conv1d(k=1) weights are
[out, in, 1]; attention projections are reshaped into per-head kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from phrase_jax.models.conditions import ConditionEncoder
from phrase_jax.models.dit import PhraseLDM
from phrase_jax.models.ldm_config import PhraseLDMConfig


def config_from_diffusers(
    diffusers_config: Mapping[str, Any], *, time_scale: float = 1.0, **overrides
) -> PhraseLDMConfig:
    """PhraseLDMConfig matching a StableAudioDiTModel config (`model.config`).

    `time_scale` defaults to 1.0: the ref fed raw integer steps to the Fourier features.
    """
    c = diffusers_config
    if c["in_channels"] != c["out_channels"]:
        raise ValueError(
            "diffusers config: in_channels != out_channels; PhraseLDM needs them equal"
        )
    heads, head_dim = c["num_attention_heads"], c["attention_head_dim"]
    values = dict(
        n_slots=c["sample_size"],
        latent_dim=c["in_channels"],
        width=heads * head_dim,
        num_layers=c["num_layers"],
        num_heads=heads,
        head_dim=head_dim,
        num_kv_heads=c["num_key_value_attention_heads"],
        ff_dim=4 * heads * head_dim,  # diffusers FeedForward: inner_dim = 4 * dim
        rope_dim=head_dim // 2,  # the Stable Audio pipeline rotates head_dim // 2 dims
        time_features=c["time_proj_dim"],
        time_scale=time_scale,
        cond_dim=c["global_states_input_dim"],
        memory_dim=c["cross_attention_dim"],
    )
    values.update(overrides)
    config = PhraseLDMConfig(**values)
    if config.memory_input_dim != c["cross_attention_input_dim"]:
        raise ValueError(
            f"diffusers config: cross_attention_input_dim {c['cross_attention_input_dim']} != "
            f"the PhraseLDM memory width {config.memory_input_dim} for conditions "
            f"{config.conditions}; set section_embed_dim or memory_dim to match"
        )
    return config


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _linear(weight: np.ndarray) -> np.ndarray:
    return weight.T


def _conv1x1(weight: np.ndarray) -> np.ndarray:
    if weight.ndim != 3 or weight.shape[-1] != 1:
        raise ValueError(f"expected a kernel-size-1 Conv1d weight, got shape {weight.shape}")
    return weight[:, :, 0].T


def diffusers_key_map(config: PhraseLDMConfig) -> dict[str, tuple[tuple, Any]]:
    """diffusers key → (our parameter path, transform of the torch array into our layout)."""
    h, e = config.num_heads, config.head_dim
    heads_in = lambda heads: lambda w: w.T.reshape(w.shape[1], heads, e)
    mapping: dict[str, tuple[tuple, Any]] = {
        "time_proj.weight": (("time_proj", "W"), lambda w: w),
        "preprocess_conv.weight": (("preprocess_conv", "kernel"), _conv1x1),
        "postprocess_conv.weight": (("postprocess_conv", "kernel"), _conv1x1),
        "proj_in.weight": (("proj_in", "kernel"), _linear),
        "proj_out.weight": (("proj_out", "kernel"), _linear),
    }
    for theirs, ours, bias in (
        ("timestep_proj", "timestep_proj", True),
        ("global_proj", "global_proj", False),
        ("cross_attention_proj", "memory_proj", False),
    ):
        for index, dense in (("0", "dense_in"), ("2", "dense_out")):
            mapping[f"{theirs}.{index}.weight"] = ((ours, dense, "kernel"), _linear)
            if bias:
                mapping[f"{theirs}.{index}.bias"] = ((ours, dense, "bias"), lambda b: b)
    for i in range(config.num_layers):
        src, dst = f"transformer_blocks.{i}", ("blocks", i)
        for norm in ("norm1", "norm2", "norm3"):
            mapping[f"{src}.{norm}.weight"] = ((*dst, norm, "scale"), lambda w: w)
            mapping[f"{src}.{norm}.bias"] = ((*dst, norm, "bias"), lambda b: b)
        for theirs, ours, kv_heads in (
            ("attn1", "self_attn", h),
            ("attn2", "cross_attn", config.num_kv_heads),
        ):
            mapping[f"{src}.{theirs}.to_q.weight"] = ((*dst, ours, "query"), heads_in(h))
            mapping[f"{src}.{theirs}.to_k.weight"] = ((*dst, ours, "key"), heads_in(kv_heads))
            mapping[f"{src}.{theirs}.to_v.weight"] = ((*dst, ours, "value"), heads_in(kv_heads))
            mapping[f"{src}.{theirs}.to_out.0.weight"] = (
                (*dst, ours, "out"),
                lambda w: w.T.reshape(h, e, w.shape[0]),
            )
        mapping[f"{src}.ff.net.0.proj.weight"] = ((*dst, "ff", "proj_in", "kernel"), _linear)
        mapping[f"{src}.ff.net.0.proj.bias"] = ((*dst, "ff", "proj_in", "bias"), lambda b: b)
        mapping[f"{src}.ff.net.2.weight"] = ((*dst, "ff", "proj_out", "kernel"), _linear)
        mapping[f"{src}.ff.net.2.bias"] = ((*dst, "ff", "proj_out", "bias"), lambda b: b)
    return mapping


def load_diffusers_state_dict(
    model: PhraseLDM, state_dict: Mapping[str, Any], *, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Copy a StableAudioDiTModel state dict into `model` in place.

    Every backbone variable must be set and every key used (keys under `ignore_prefixes`, such
    as the ref's own condition modules, are skipped); shape mismatches name the key.
    """
    mapping = diffusers_key_map(model.config)
    ignored = {k for k in state_dict if ignore_prefixes and k.startswith(ignore_prefixes)}
    unexpected = sorted(set(state_dict) - set(mapping) - ignored)
    missing = sorted(set(mapping) - set(state_dict))
    if unexpected or missing:
        raise ValueError(
            f"diffusers state dict does not match the PhraseLDM config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (pass ignore_prefixes for non-DiT modules)"
        )
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    targets = {path for path, _ in mapping.values()}
    uncovered = sorted(
        ".".join(map(str, p)) for p in flat if p[0] != "conditioner" and p not in targets
    )
    if uncovered:
        raise ValueError(f"PhraseLDM variables with no diffusers source: {uncovered[:5]}")
    for key, (path, transform) in mapping.items():
        value = transform(_numpy(state_dict[key]))
        variable = flat[path]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"diffusers key {key}: shape {value.shape} after conversion, "
                f"PhraseLDM {'.'.join(map(str, path))} wants {variable.shape}"
            )
        variable.set_value(jnp.asarray(value, variable.dtype))
    nnx.update(model, state)


def from_diffusers(
    state_dict: Mapping[str, Any],
    config: PhraseLDMConfig,
    *,
    seed: int = 0,
    ignore_prefixes: tuple[str, ...] = (),
) -> PhraseLDM:
    """A PhraseLDM holding the state dict's backbone weights.

    The backbone is built shape-only (no random init of 30 M parameters just to overwrite them);
    the condition encoder, which diffusers does not have, is initialised from `seed`.
    """
    model = nnx.eval_shape(lambda: PhraseLDM(config, rngs=nnx.Rngs(seed)))
    model.conditioner = ConditionEncoder(config, rngs=nnx.Rngs(seed))
    load_diffusers_state_dict(model, state_dict, ignore_prefixes=ignore_prefixes)
    return model
