"""Stand-ins for the released PhraseVAE / PhraseLDM Hub checkpoints, for offline import tests.

Built from the public classes the reference wraps (transformers T5ForConditionalGeneration via
`benchmarks.torch_reference`, diffusers StableAudioDiTModel, torch TransformerEncoder) under the
reference's module names, every tensor perturbed, and saved by `PyTorchModelHubMixin.
save_pretrained` itself (safetensors `save_model`, which keeps one name of the tied embedding).

    folder, reference = save_vae(tmp_path / "vae")     # model.safetensors + config.json
    folder, reference = save_ldm(tmp_path / "ldm", length_control=True, model_config=TINY_DIT)
"""

from __future__ import annotations

import json
import os

import torch
from diffusers import StableAudioDiTModel
from huggingface_hub import PyTorchModelHubMixin

from benchmarks import torch_reference
from phrase_jax.interop import official
from phrase_jax.models.vae import VAEConfig

TINY_DIT = dict(
    sample_size=12, in_channels=64, out_channels=64, num_layers=2, attention_head_dim=8,
    num_attention_heads=4, num_key_value_attention_heads=2, cross_attention_dim=24,
    cross_attention_input_dim=24, global_states_input_dim=128, time_proj_dim=16,
)  # fmt: skip


class HubPhraseVAE(torch.nn.Module, PyTorchModelHubMixin):
    """The phrase-vae wrapper's layout: everything under `model.` (t5, layer_norm, proj,
    post_proj); its only constructor argument was a Lightning checkpoint path."""

    def __init__(self, ckpt_fp: str | None = None):
        super().__init__()
        self.model = torch_reference.build_reference(VAEConfig(mode="vae")).eval()


class LengthEncoder(torch.nn.Module):
    def __init__(self, buckets: int = 128, width: int = 128):
        super().__init__()
        self.length_embedding = torch.nn.Embedding(buckets, width)

    def forward(self, n_bars):
        """[B] bar counts -> [B, 1, width] (bucket = floor(n_bars / 10))."""
        return self.length_embedding(torch.div(n_bars, 10, rounding_mode="floor"))[:, None]


class SecEncoder(torch.nn.Module):
    """Type (11 + pad) and length (32 + pad) embeddings, concatenated, then a post-LN encoder."""

    def __init__(self, width: int = 256):
        super().__init__()
        self.type_embed = torch.nn.Embedding(12, width // 2)
        self.len_embed = torch.nn.Embedding(33, width // 2)
        layer = torch.nn.TransformerEncoderLayer(width, 8, 4 * width, batch_first=True)
        self.sec_encoder = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)


class HubPhraseLDM(torch.nn.Module, PyTorchModelHubMixin):
    """The phrase-ldm-* wrapper's layout: `ldm` (StableAudioDiTModel), `length_encoder`,
    `sec_encoder`; its constructor arguments are what save_pretrained writes to config.json."""

    def __init__(
        self,
        model_config: dict | None = None,
        scale_factor: float = official.REF_DEFAULTS["scale_factor"],
        diffusion_steps: int = 1000,
        clip_range: float = official.REF_DEFAULTS["clip_range"],
        length_control: bool = False,
        length_bucket_size: int = 10,
        sec_control: bool = False,
    ):
        super().__init__()
        config = model_config or official.ref_dit_config(sec_control)
        self.ldm = StableAudioDiTModel(**config)
        if length_control:
            self.length_encoder = LengthEncoder(width=config["global_states_input_dim"])
        if sec_control:
            self.sec_encoder = SecEncoder(config["cross_attention_input_dim"])
        self.eval()


def save_vae(folder, *, seed: int = 0, minimal_config: bool = True) -> tuple[str, HubPhraseVAE]:
    torch.manual_seed(seed)
    model = HubPhraseVAE()
    torch_reference.perturb_(model, seed=seed)
    model.save_pretrained(folder)
    if minimal_config:  # the wrapper that was uploaded stored a checkpoint path only
        _write_config(folder, {"ckpt_fp": "/data/phrase_vae.ckpt"})
    return str(folder), model


def save_ldm(
    folder, *, seed: int = 0, minimal_config: bool = False, **kwargs
) -> tuple[str, HubPhraseLDM]:
    """A perturbed HubPhraseLDM(**kwargs) saved as the Hub holds it. `minimal_config` rewrites
    config.json to the bare wrapper arguments (the reference defaults then fill the rest)."""
    torch.manual_seed(seed)
    model = HubPhraseLDM(**kwargs)
    torch_reference.perturb_(model, seed=seed)
    model.save_pretrained(folder)
    if minimal_config:
        _write_config(
            folder,
            {
                "ckpt_fp": "/data/ldm.ckpt",
                "length_control": bool(kwargs.get("length_control")),
                "sec_control": bool(kwargs.get("sec_control")),
            },
        )
    return str(folder), model


def _write_config(folder, values: dict) -> None:
    with open(os.path.join(folder, official.CONFIG), "w") as f:
        json.dump(values, f)
