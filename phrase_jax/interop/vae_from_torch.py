"""Import a PyTorch PhraseVAE state dict (reference layout) into `vae.PhraseVAE`.

Reference layout (the official PhraseVAE code, `S2SVAE3`): the transformer is a transformers
4.56 `T5ForConditionalGeneration` under the key prefix `t5.` (a bare T5 state dict without the
prefix is accepted too); the bottleneck keys are
- `layer_norm.weight`, `layer_norm.bias`: `nn.LayerNorm(2048)` → `bottleneck/norm/{scale,bias}`
- `proj.weight` [128, 2048], `proj.bias`: `nn.Linear(2048, 128)`, mean = first 64 outputs →
  `bottleneck/to_moments/{kernel,bias}`
- `post_proj.weight` [2048, 64], `post_proj.bias`: `nn.Linear(64, 2048)` →
  `bottleneck/from_latent/{kernel,bias}`.
A Lightning checkpoint nests all of these under one more prefix (e.g. `model.`): pass `prefix`.
Tensors may be torch tensors or numpy arrays; this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from phrase_jax.models.vae import PhraseVAE, VAEConfig, load_matching_params, param_dict

BOTTLENECK_KEYS = {
    "layer_norm.weight": ("bottleneck", "norm", "scale"),
    "layer_norm.bias": ("bottleneck", "norm", "bias"),
    "proj.weight": ("bottleneck", "to_moments", "kernel"),
    "proj.bias": ("bottleneck", "to_moments", "bias"),
    "post_proj.weight": ("bottleneck", "from_latent", "kernel"),
    "post_proj.bias": ("bottleneck", "from_latent", "bias"),
}
# Copies of `shared.weight` that transformers stores when embeddings are tied.
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")


def _to_numpy(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "detach"):  # torch.Tensor: bf16 has no numpy dtype, so go through fp32
        return tensor.detach().cpu().float().numpy()
    return np.asarray(tensor, dtype=np.float32)


def _t5_key_table(config: VAEConfig) -> dict[str, tuple[tuple, str]]:
    """torch key (without the `t5.` prefix) → (our parameter path, transform name)."""
    table = {"shared.weight": (("shared",), "copy")}

    def attention(torch_prefix, ours):
        for torch_name, our_name in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
            transform = "attn_out" if torch_name == "o" else "attn_in"
            table[f"{torch_prefix}.{torch_name}.weight"] = ((*ours, our_name), transform)

    def feed_forward(torch_prefix, ours):
        table[f"{torch_prefix}.DenseReluDense.wi.weight"] = ((*ours, "wi", "kernel"), "transpose")
        table[f"{torch_prefix}.DenseReluDense.wo.weight"] = ((*ours, "wo", "kernel"), "transpose")

    for stack, n_layers in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        table[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            (stack, "relative_bias", "embedding"),
            "copy",
        )
        table[f"{stack}.final_layer_norm.weight"] = ((stack, "final_norm", "scale"), "copy")
        for i in range(n_layers):
            block, ours = f"{stack}.block.{i}.layer", (stack, "layers", str(i))
            attention(f"{block}.0.SelfAttention", (*ours, "self_attention"))
            table[f"{block}.0.layer_norm.weight"] = (
                (*ours, "self_attention_norm", "scale"),
                "copy",
            )
            ff_index = 1
            if stack == "decoder":
                attention(f"{block}.1.EncDecAttention", (*ours, "cross_attention"))
                table[f"{block}.1.layer_norm.weight"] = (
                    (*ours, "cross_attention_norm", "scale"),
                    "copy",
                )
                ff_index = 2
            feed_forward(f"{block}.{ff_index}", (*ours, "feed_forward"))
            table[f"{block}.{ff_index}.layer_norm.weight"] = (
                (*ours, "feed_forward_norm", "scale"),
                "copy",
            )
    return table


def _transform(array: np.ndarray, how: str, config: VAEConfig) -> np.ndarray:
    heads, head_dim = config.num_heads, config.head_dim
    if how == "copy":
        return array
    if how == "transpose":  # torch Linear weight [out, in] → our kernel [in, out]
        return array.T
    if how == "attn_in":  # [heads*head_dim, d_model] → [d_model, heads, head_dim]
        return array.T.reshape(array.shape[1], heads, head_dim)
    if how == "attn_out":  # [d_model, heads*head_dim] → [heads, head_dim, d_model]
        return array.T.reshape(heads, head_dim, array.shape[0])
    raise ValueError(f"unknown transform {how!r}")


def convert_state_dict(
    state_dict: Mapping[str, Any], config: VAEConfig, *, prefix: str = ""
) -> dict[str, Any]:
    """Nested pure dict of our parameters (numpy float32) from a reference state dict.

    Raises ValueError naming the first offending key for unexpected keys, missing transformer
    keys, untied output embeddings, or bottleneck keys given to a model without a bottleneck.
    Bottleneck keys absent altogether are allowed (a stage-2 checkpoint for a stage-3 model).
    """
    arrays = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            raise ValueError(f"state dict key {key!r} lacks the prefix {prefix!r}; check `prefix`")
        arrays[key[len(prefix) :]] = tensor
    t5_prefix = "t5." if "t5.shared.weight" in arrays else ""
    if f"{t5_prefix}shared.weight" not in arrays:
        raise ValueError("state dict has no 't5.shared.weight' or 'shared.weight'; not a T5 VAE")
    shared = _to_numpy(arrays[f"{t5_prefix}shared.weight"])
    for copy in _TIED_COPIES:
        if f"{t5_prefix}{copy}" in arrays:
            tied = _to_numpy(arrays.pop(f"{t5_prefix}{copy}"))
            if not np.array_equal(tied, shared):
                raise ValueError(
                    f"state dict key {t5_prefix}{copy!r} differs from shared.weight:"
                    " only tied input/output embeddings are supported"
                )
    flat = {}
    for torch_key, (path, how) in _t5_key_table(config).items():
        full_key = f"{t5_prefix}{torch_key}"
        if full_key not in arrays:
            raise ValueError(f"state dict lacks {full_key!r}; check the model config sizes")
        flat[path] = _transform(_to_numpy(arrays.pop(full_key)), how, config)
    bottleneck = {k: arrays.pop(k) for k in list(arrays) if k in BOTTLENECK_KEYS}
    if bottleneck:
        if config.mode != "vae":
            raise ValueError(
                f"state dict has bottleneck keys but the model mode is "
                f"{config.mode!r}; use mode 'vae' or drop them"
            )
        missing = sorted(set(BOTTLENECK_KEYS) - set(bottleneck))
        if missing:
            raise ValueError(f"state dict has part of the bottleneck only: lacks {missing}")
        for key, tensor in bottleneck.items():
            array = _to_numpy(tensor)
            flat[BOTTLENECK_KEYS[key]] = array.T if key.endswith("proj.weight") else array
    if arrays:
        raise ValueError(
            f"unexpected state dict keys (first 5 of {len(arrays)}): {sorted(arrays)[:5]}"
        )
    return traverse_util.unflatten_dict(flat)


def load_torch_state_dict(
    model: PhraseVAE, state_dict: Mapping[str, Any], *, prefix: str = ""
) -> tuple[str, ...]:
    """Load a reference state dict into `model` in place; returns the parameters it lacked
    (only the bottleneck, when loading a checkpoint without one into a mode-vae model)."""
    converted = convert_state_dict(state_dict, model.config, prefix=prefix)
    ours = {tuple(str(k) for k in path): value for path, value in param_dict(model).items()}
    for path, value in traverse_util.flatten_dict(converted).items():
        if path not in ours:
            raise ValueError(f"converted parameter {'/'.join(path)} does not exist in the model")
        if tuple(value.shape) != tuple(ours[path].shape):
            raise ValueError(
                f"state dict tensor for {'/'.join(path)} has shape {value.shape}, the model "
                f"wants {tuple(ours[path].shape)}; check the model config sizes"
            )
    return load_matching_params(model, converted)
