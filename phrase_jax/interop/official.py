"""Import the released PhraseVAE / PhraseLDM checkpoints (Hugging Face Hub folders) as a bundle.

    python -m phrase_jax.interop.official --vae hub/phrase-vae --ldm hub/phrase-ldm-lencond \
        --out bundles/phrase-ldm-lencond          # repo ids work too with huggingface_hub

Each Hub folder holds `model.safetensors` + `config.json` as `PyTorchModelHubMixin` saves the
reference's wrapper classes (read with the safetensors numpy API; torch is never imported):
- VAE: keys `model.t5.*` (transformers T5ForConditionalGeneration), `model.layer_norm`,
  `model.proj`, `model.post_proj`; the tied embedding is stored once (safetensors keeps one of
  `shared`, `encoder.embed_tokens`, `decoder.embed_tokens`, `lm_head`). Sizes are read from the
  tensors (heads from the relative-bias table), so config.json (`ckpt_fp` only) is not needed.
- LDM: `ldm.*` (diffusers StableAudioDiTModel), `length_encoder.length_embedding.weight`,
  `sec_encoder.{type_embed, len_embed, sec_encoder.layers.N.*}` (torch TransformerEncoder).
  config.json holds the wrapper's arguments (`model_config`, `scale_factor`, `diffusion_steps`,
  `clip_range`, `length_control`, `length_bucket_size`, `sec_control`); absent ones take the
  reference code defaults (REF_DEFAULTS).
The models were trained without condition dropout, so the bundle records condition_dropout 0
(guidance is refused) and zero "null" embeddings. The section-conditioned model imports but is
marked unsupported: its section ids came from Python set order and were never saved.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import numpy as safetensors_numpy

from data_pipelines import transforms
from phrase_jax import errors
from phrase_jax.artifacts import bundle
from phrase_jax.interop import ldm_from_diffusers, vae_from_torch
from phrase_jax.models import decoding, dit, vae
from phrase_jax.music import layout, sections

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MAX_LEN = 128  # the reference tokenizer's max_length
REF_DEFAULTS = {
    "scale_factor": 0.7590118646621704,
    "clip_range": 3.064450740814209,
    "diffusion_steps": 1000,
    "length_bucket_size": 10,
}
REF_SECTION_HEADS = 8  # SecEncoder(n_head=8): not recoverable from the weights
REF_MAX_SECTIONS = 30
SECTIONS_UNSUPPORTED = (
    "the reference's section-conditioned LDM: its section ids came from Python set order at "
    "training time and were never saved, so any id order would be arbitrary conditioning; "
    "sample phrase-ldm-lencond or phrase-ldm-uncond instead"
)
_TIED = ("shared", "encoder.embed_tokens", "decoder.embed_tokens", "lm_head")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def ref_dit_config(sec_control: bool) -> dict:
    """The reference wrapper's default `model_config` (diffusers StableAudioDiTModel args)."""
    cross = 256 if sec_control else 128
    return dict(
        sample_size=512, in_channels=64, out_channels=64, num_layers=6, attention_head_dim=32,
        num_attention_heads=16, num_key_value_attention_heads=8, cross_attention_dim=cross,
        cross_attention_input_dim=cross, global_states_input_dim=128, time_proj_dim=128,
    )  # fmt: skip


def resolve_source(source: str) -> str:
    """A local Hub folder as is; a repo id (owner/name) downloaded with huggingface_hub."""
    if os.path.isdir(source):
        return os.path.abspath(source)
    if not _REPO_ID.match(source):
        raise errors.UserError(f"{source}: no such folder; pass a downloaded Hub folder")
    try:
        import huggingface_hub
    except ImportError:
        raise errors.UserError(
            f"{source}: not a folder, and huggingface_hub is not installed to download it; "
            f"`pip install huggingface_hub` or `huggingface-cli download {source} --local-dir DIR`"
        ) from None
    try:
        return huggingface_hub.snapshot_download(source, allow_patterns=[WEIGHTS, CONFIG])
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, ...: one line for the user
        message = str(error).splitlines()[0] if str(error) else ""
        raise errors.UserError(
            f"{source}: download failed ({type(error).__name__}: {message})"
        ) from None


def read_hub_folder(folder: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json or {}, the tensors of model.safetensors as numpy)."""
    file = os.path.join(folder, WEIGHTS)
    if not os.path.exists(file):
        raise errors.UserError(f"{file} not found: not a PyTorchModelHubMixin folder")
    config = {}
    if os.path.exists(os.path.join(folder, CONFIG)):
        with open(os.path.join(folder, CONFIG)) as f:
            config = json.load(f)
    return config, safetensors_numpy.load_file(file)


def vae_config_from_tensors(tensors: Mapping[str, np.ndarray], hub_config: dict) -> vae.VAEConfig:
    """A mode-vae VAEConfig whose sizes are read off the reference tensors (prefix `model.`)."""
    p = "model.t5."
    embedding = next(
        (tensors[f"{p}{k}.weight"] for k in _TIED if f"{p}{k}.weight" in tensors), None
    )
    if embedding is None or f"{p}encoder.block.0.layer.0.SelfAttention.q.weight" not in tensors:
        raise errors.UserError("VAE folder: no `model.t5.*` T5 tensors; is this phrase-vae?")
    heads = tensors[f"{p}encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    query = tensors[f"{p}encoder.block.0.layer.0.SelfAttention.q.weight"]
    count = lambda stack: len(
        {k.split(".")[4] for k in tensors if k.startswith(f"{p}{stack}.block.")}
    )
    post_proj = tensors["model.post_proj.weight"]  # [num_queries * d_model, latent]
    t5 = hub_config.get("t5_config") or {}
    return vae.VAEConfig(
        mode="vae",
        vocab_size=embedding.shape[0],
        d_model=embedding.shape[1],
        num_heads=heads.shape[1],
        head_dim=query.shape[0] // heads.shape[1],
        d_ff=tensors[f"{p}encoder.block.0.layer.1.DenseReluDense.wi.weight"].shape[0],
        num_encoder_layers=count("encoder"),
        num_decoder_layers=count("decoder"),
        relative_buckets=heads.shape[0],
        relative_max_distance=int(t5.get("relative_attention_max_distance", 128)),
        num_queries=post_proj.shape[0] // embedding.shape[1],
        latent_dim=post_proj.shape[1],
    )


def vae_from_hub(folder: str) -> vae.PhraseVAE:
    """The PhraseVAE of a phrase-vae Hub folder."""
    hub_config, tensors = read_hub_folder(folder)
    try:
        config = vae_config_from_tensors(tensors, hub_config)
    except KeyError as error:
        raise errors.UserError(f"{folder}/{WEIGHTS}: lacks the tensor {error}") from None
    state = dict(tensors)
    if "model.t5.shared.weight" not in state:  # safetensors kept another name of the tie
        alias = next(f"model.t5.{k}.weight" for k in _TIED if f"model.t5.{k}.weight" in state)
        state["model.t5.shared.weight"] = state.pop(alias)
    model = vae.PhraseVAE(config, rngs=nnx.Rngs(0))
    try:
        lacking = vae_from_torch.load_torch_state_dict(model, state, prefix="model.")
    except ValueError as error:
        raise errors.UserError(f"{folder}/{WEIGHTS}: {error}") from None
    if lacking:
        raise errors.UserError(f"{folder}/{WEIGHTS}: no bottleneck ({lacking[:2]}); not a VAE")
    return model


def _section_config(tensors: Mapping[str, np.ndarray]) -> dict:
    types, lengths = (
        tensors["sec_encoder.type_embed.weight"],
        tensors["sec_encoder.len_embed.weight"],
    )
    layer_ids = {
        k.split(".")[3] for k in tensors if k.startswith("sec_encoder.sec_encoder.layers.")
    }
    return dict(
        section_vocab_size=types.shape[0],
        max_bars=lengths.shape[0] - 1,
        section_embed_dim=types.shape[1],
        section_layers=len(layer_ids),
        section_heads=REF_SECTION_HEADS,
        section_ff_dim=tensors["sec_encoder.sec_encoder.layers.0.linear1.weight"].shape[0],
        max_sections=REF_MAX_SECTIONS,
    )


def _condition_arrays(tensors: Mapping[str, np.ndarray], config) -> dict[tuple, np.ndarray]:
    """Our conditioner's variables (path → array) from the reference condition encoders. The
    nulls, which the reference never had, are zeros: guidance is refused for these models."""
    arrays: dict[tuple, np.ndarray] = {}
    if "length" in config.conditions:
        arrays[("length_embed", "embedding")] = tensors["length_encoder.length_embedding.weight"]
        arrays[("null_length",)] = np.zeros(config.cond_dim, np.float32)
    if "sections" in config.conditions:
        heads, width = config.section_heads, 2 * config.section_embed_dim
        per_head = lambda w: w.T.reshape(width, heads, width // heads)
        arrays[("null_memory",)] = np.zeros(config.memory_input_dim, np.float32)
        arrays[("section_encoder", "type_embed", "embedding")] = tensors[
            "sec_encoder.type_embed.weight"
        ]
        arrays[("section_encoder", "length_embed", "embedding")] = tensors[
            "sec_encoder.len_embed.weight"
        ]
        for i in range(config.section_layers):
            src, dst = f"sec_encoder.sec_encoder.layers.{i}.", ("section_encoder", "layers", i)
            q, k, v = np.split(tensors[f"{src}self_attn.in_proj_weight"], 3, axis=0)
            qb, kb, vb = np.split(tensors[f"{src}self_attn.in_proj_bias"], 3)
            out = tensors[f"{src}self_attn.out_proj.weight"]
            for name, weight, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
                arrays[(*dst, "self_attn", name)] = per_head(weight)
                arrays[(*dst, "self_attn", f"{name}_bias")] = bias.reshape(heads, -1)
            arrays[(*dst, "self_attn", "out")] = out.T.reshape(heads, width // heads, width)
            arrays[(*dst, "self_attn", "out_bias")] = tensors[f"{src}self_attn.out_proj.bias"]
            for theirs, ours in (("linear1", "ff_in"), ("linear2", "ff_out")):
                arrays[(*dst, ours, "kernel")] = tensors[f"{src}{theirs}.weight"].T
                arrays[(*dst, ours, "bias")] = tensors[f"{src}{theirs}.bias"]
            for norm in ("norm1", "norm2"):
                arrays[(*dst, norm, "scale")] = tensors[f"{src}{norm}.weight"]
                arrays[(*dst, norm, "bias")] = tensors[f"{src}{norm}.bias"]
    return arrays


def _set_conditioner(model: dit.PhraseLDM, arrays: dict[tuple, np.ndarray], where: str) -> None:
    state = nnx.state(model.conditioner)
    flat = dict(nnx.to_flat_state(state))
    if set(flat) != set(arrays):
        raise errors.UserError(f"{where}: condition encoder tensors do not fit the config")
    for path, variable in flat.items():
        value = np.asarray(arrays[path], np.float32)
        if value.shape != tuple(variable.shape):
            raise errors.UserError(f"{where}: {path} has shape {value.shape}, not {variable.shape}")
        variable.set_value(jnp.asarray(value))
    nnx.update(model.conditioner, state)


def ldm_from_hub(folder: str) -> tuple[dit.PhraseLDM, dict]:
    """(PhraseLDM, settings {scale, clip, num_steps, unsupported}) of a phrase-ldm-* folder."""
    hub_config, tensors = read_hub_folder(folder)
    where = f"{folder}/{WEIGHTS}"
    settings = {k: hub_config.get(k, v) for k, v in REF_DEFAULTS.items()}
    prefixes = ("ldm.", "length_encoder.", "sec_encoder.")
    unexpected = sorted(k for k in tensors if not k.startswith(prefixes))
    if unexpected:
        raise errors.UserError(f"{where}: unexpected tensors {unexpected[:3]}; is this an LDM?")
    has_length = "length_encoder.length_embedding.weight" in tensors
    has_sections = "sec_encoder.type_embed.weight" in tensors
    for key, present in (("length_control", has_length), ("sec_control", has_sections)):
        if key in hub_config and bool(hub_config[key]) != present:
            raise errors.UserError(f"{folder}/{CONFIG}: {key}={hub_config[key]} but {where} "
                                   f"{'has' if present else 'lacks'} its encoder")  # fmt: skip
    if has_length and int(settings["length_bucket_size"]) != sections.LENGTH_BUCKET_BARS:
        raise errors.UserError(
            f"{folder}/{CONFIG}: length_bucket_size={settings['length_bucket_size']}; phrase_jax "
            f"buckets lengths by {sections.LENGTH_BUCKET_BARS} bars"
        )
    conditions = ("length",) * has_length + ("sections",) * has_sections
    overrides = dict(conditions=conditions, condition_dropout=0.0)
    if has_length:
        overrides["length_buckets"] = tensors["length_encoder.length_embedding.weight"].shape[0]
    if has_sections:
        try:
            overrides.update(_section_config(tensors))
        except KeyError as error:
            raise errors.UserError(f"{where}: lacks the tensor {error}") from None
    diffusers_config = hub_config.get("model_config") or ref_dit_config(has_sections)
    backbone = {k[len("ldm.") :]: v for k, v in tensors.items() if k.startswith("ldm.")}
    try:
        # time_scale 1: the reference fed raw integer steps to the Fourier features.
        config = ldm_from_diffusers.config_from_diffusers(
            diffusers_config, time_scale=1.0, **overrides
        )
        model = ldm_from_diffusers.from_diffusers(backbone, config)
    except (KeyError, TypeError, ValueError) as error:
        raise errors.UserError(f"{where}: {error}") from None
    try:
        arrays = _condition_arrays(tensors, config)
    except KeyError as error:
        raise errors.UserError(f"{where}: lacks the tensor {error}") from None
    _set_conditioner(model, arrays, where)
    settings = {
        "scale": float(settings["scale_factor"]),
        "clip": float(settings["clip_range"]),
        "num_steps": int(settings["diffusion_steps"]),
        "unsupported": SECTIONS_UNSUPPORTED if has_sections else "",
    }
    return model, settings


def special_latents(model: vae.PhraseVAE, max_len: int = MAX_LEN) -> dict[str, np.ndarray]:
    """Latent means float32 [latent_dim] of the `[INST]`, `b-1` and `[SEP]` phrases, encoded
    exactly as the latent extraction encodes every phrase."""
    phrases = {"inst": layout.INST_PHRASE, "bar": layout.BAR_PHRASE, "sep": layout.SEP_PHRASE}
    examples = [transforms.phrase_example(np.asarray(p), max_len) for p in phrases.values()]
    batch = {k: np.stack([e[k] for e in examples]) for k in ("encoder_ids", "encoder_mask")}
    means = np.asarray(decoding.encode_latents(model, batch), np.float32)
    return dict(zip(phrases, means, strict=True))


def import_official(vae_source: str, ldm_source: str, out: str, *, overwrite: bool = False) -> str:
    """Writes the bundle `out` from a phrase-vae and a phrase-ldm-* source (folder or repo id);
    returns its path."""
    started = time.monotonic()
    vae_dir, ldm_dir = resolve_source(vae_source), resolve_source(ldm_source)
    vae_model = vae_from_hub(vae_dir)
    ldm_model, settings = ldm_from_hub(ldm_dir)
    special = special_latents(vae_model)
    return bundle.write_bundle(
        out,
        vae_model=vae_model,
        ldm_model=ldm_model,
        scale=settings["scale"],
        clip=settings["clip"],
        special_latents=special,
        slots_per_bar=layout.DEFAULT_SLOTS_PER_BAR,
        provenance={
            "source": "official PhraseVAE/PhraseLDM release (Ou & Wang 2025)",
            "vae_source": vae_source,
            "ldm_source": ldm_source,
            "vae_step": None,
            "ldm_step": None,
            "data": "POP909 (the reference's training set)",
            "import_seconds": round(time.monotonic() - started, 2),
        },
        section_vocab=None,
        num_steps=settings["num_steps"],
        max_len=MAX_LEN,
        unsupported=settings["unsupported"],
        overwrite=overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m phrase_jax.interop.official", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--vae", required=True, help="phrase-vae Hub folder or repo id")
    parser.add_argument("--ldm", required=True, help="phrase-ldm-* Hub folder or repo id")
    parser.add_argument("--out", required=True, help="the bundle folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        path = import_official(args.vae, args.ldm, args.out, overwrite=args.overwrite)
    except errors.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
