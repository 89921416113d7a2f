"""A bundle: one folder holding a trained PhraseVAE + PhraseLDM and everything sampling needs.

    bundle/
      bundle.json                  the fields below; written last, so a folder without it is
                                   not a bundle
      vae.safetensors              PhraseVAE variables: '.'-joined NNX paths -> float32 arrays
      ldm.safetensors              PhraseLDM variables (its fixed Fourier weights included)
      vae_ema.safetensors          the EMA copies, only when the run kept an EMA
      ldm_ema.safetensors
      real_statistics.json         the held-out songs' MIDI descriptors (`real_statistics`),
                                   only when the bundle was exported with its data

bundle.json (FORMAT_VERSION 1):
  format, format_version
  vae / ldm         {"config": the model config (VAEConfig / PhraseLDMConfig fields),
                     "weights": file name, "ema_weights": file name or null}
  vocab_sha256      the 1000-token vocabulary the VAE reads and writes (`music.vocab`)
  latents           {"scale", "clip" (scaled space), "slots_per_bar", "latent_dim",
                     "max_slots", "special_latents": {"inst", "bar", "sep"}: unscaled [latent_dim]}
  section_vocab     the section-type list (`music.sections.SectionVocab`), or null when the id
                    assignment the LDM was trained with is unknown
  conditions        {"names", "condition_dropout", "length_bucket_bars"}: what the LDM is
                    conditioned on; guidance needs condition_dropout > 0
  diffusion         {"num_steps", "schedule": "cosine", "prediction": "epsilon" | "v"}
  decoding          {"max_len"}: the VAE's phrase length (greedy decoding cap)
  provenance        {"source", "vae_step", "ldm_step", "data", "created", ...}: free-form record
  unsupported       "" or one line saying why sampling this bundle is refused
  real_statistics   its file name or null (optional: older bundles lack the key); the
                    evaluation compares songs with it where the data are absent

Written atomically: every file goes into a temporary sibling folder that is renamed into place.
Weights use the `safetensors` numpy API: reading a bundle needs neither torch nor orbax.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import numpy as safetensors_numpy

from phrase_jax import errors
from phrase_jax.artifacts import real_statistics as real_stats
from phrase_jax.models import dit, vae
from phrase_jax.music import sections
from phrase_jax.music.vocab import Vocab

FORMAT = "phrase_jax.bundle"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
MODELS = ("vae", "ldm")
SPECIAL_NAMES = ("inst", "bar", "sep")
SCHEDULES = ("cosine",)
REQUIRED = (
    "vae", "ldm", "vocab_sha256", "latents", "section_vocab", "conditions", "diffusion",
    "decoding", "provenance", "unsupported",
)  # fmt: skip


def weights_file(model: str, ema: bool) -> str:
    return f"{model}_ema.safetensors" if ema else f"{model}.safetensors"


def model_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable of `model` (parameters and fixed buffers) as float32 numpy, keyed by its
    '.'-joined NNX path."""
    # Contiguous: safetensors writes the raw buffer, and a variable may hold a strided numpy view.
    return {
        ".".join(map(str, path)): np.ascontiguousarray(variable.get_value(), np.float32)
        for path, variable in nnx.to_flat_state(nnx.state(model))
    }


def set_model_arrays(model: nnx.Module, arrays: Mapping[str, np.ndarray], *, what: str) -> None:
    """Sets every variable of `model` (which may be shape-only, from `nnx.eval_shape`) from
    `arrays`; a missing, extra or misshapen key is a UserError naming `what` (the file)."""
    state = nnx.state(model)
    flat = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    missing, extra = sorted(set(flat) - set(arrays)), sorted(set(arrays) - set(flat))
    if missing or extra:
        raise errors.UserError(
            f"{what}: does not fit the model config in {BUNDLE_JSON} (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); re-export or re-import the bundle"
        )
    for key, variable in flat.items():
        value = np.asarray(arrays[key])
        if tuple(value.shape) != tuple(variable.shape):
            raise errors.UserError(
                f"{what}: {key} has shape {value.shape}, the config wants {tuple(variable.shape)}"
            )
        variable.set_value(jnp.asarray(value, variable.dtype))
    nnx.update(model, state)


def _special_latents(special: Mapping[str, Any], latent_dim: int) -> dict[str, list[float]]:
    if set(special) != set(SPECIAL_NAMES):
        raise ValueError(f"special_latents: need exactly {SPECIAL_NAMES}, got {sorted(special)}")
    out = {}
    for name in SPECIAL_NAMES:
        value = np.asarray(special[name], np.float32).reshape(-1)
        if value.shape != (latent_dim,):
            raise ValueError(f"special_latents[{name!r}]: shape {value.shape}, want {latent_dim}")
        out[name] = [float(x) for x in value]
    return out


def make_meta(
    *,
    vae_config: vae.VAEConfig,
    ldm_config: dit.PhraseLDMConfig,
    scale: float,
    clip: float,
    special_latents: Mapping[str, Any],
    slots_per_bar: int,
    provenance: Mapping[str, Any],
    section_vocab: sections.SectionVocab | None,
    num_steps: int = 1000,
    prediction: str = "epsilon",
    max_len: int = 128,
    has_ema: tuple[bool, bool] = (False, False),
    unsupported: str = "",
    has_real_statistics: bool = False,
) -> dict:
    """bundle.json's content (see the module docstring), checked."""
    if vae_config.mode != "vae" or vae_config.latent_dim != ldm_config.latent_dim:
        raise ValueError(
            f"bundle: the VAE (mode {vae_config.mode!r}, latent_dim {vae_config.latent_dim}) "
            f"must be a mode-'vae' model with the LDM's latent_dim {ldm_config.latent_dim}"
        )
    if ldm_config.n_slots % slots_per_bar:
        raise ValueError(
            f"bundle: {ldm_config.n_slots} slots are not whole bars of {slots_per_bar}"
        )
    if not scale > 0 or not clip >= 0:
        raise ValueError(f"bundle: scale {scale} must be > 0 and clip {clip} >= 0")
    if section_vocab is not None:
        section_vocab.check_capacity(ldm_config.section_vocab_size)
    ldm_values = dataclasses.asdict(ldm_config)
    ldm_values["conditions"] = list(ldm_config.conditions)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **{
            name: {
                "config": values,
                "weights": weights_file(name, False),
                "ema_weights": weights_file(name, True) if ema else None,
            }
            for name, values, ema in (
                ("vae", dataclasses.asdict(vae_config), has_ema[0]),
                ("ldm", ldm_values, has_ema[1]),
            )
        },
        "vocab_sha256": Vocab().sha256,
        "latents": {
            "scale": float(scale),
            "clip": float(clip),
            "slots_per_bar": int(slots_per_bar),
            "latent_dim": int(ldm_config.latent_dim),
            "max_slots": int(ldm_config.n_slots),
            "special_latents": _special_latents(special_latents, ldm_config.latent_dim),
        },
        "section_vocab": None if section_vocab is None else list(section_vocab.types),
        "conditions": {
            "names": list(ldm_config.conditions),
            "condition_dropout": float(ldm_config.condition_dropout),
            "length_bucket_bars": sections.LENGTH_BUCKET_BARS,
        },
        "diffusion": {"num_steps": int(num_steps), "schedule": "cosine", "prediction": prediction},
        "decoding": {"max_len": int(max_len)},
        "provenance": {
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **dict(provenance),
        },
        "unsupported": unsupported,
        "real_statistics": real_stats.FILE_NAME if has_real_statistics else None,
    }


def write_bundle(
    path: str,
    *,
    vae_model: vae.PhraseVAE,
    ldm_model: dit.PhraseLDM,
    scale: float,
    clip: float,
    special_latents: Mapping[str, Any],
    slots_per_bar: int,
    provenance: Mapping[str, Any],
    section_vocab: sections.SectionVocab | None,
    num_steps: int = 1000,
    prediction: str = "epsilon",
    max_len: int = 128,
    vae_ema: vae.PhraseVAE | None = None,
    ldm_ema: dit.PhraseLDM | None = None,
    unsupported: str = "",
    real_statistics: real_stats.RealStatistics | None = None,
    overwrite: bool = False,
) -> str:
    """Writes a bundle folder from in-memory models; returns its absolute path.

    `provenance` should name at least `source` (e.g. a workdir or Hub repo), `vae_step`,
    `ldm_step` and `data`; `created` is added. An existing `path` is a UserError unless
    `overwrite`; it is replaced only once the new bundle is complete. Run it in one process
    (the parameters are gathered to numpy): `make export` is a single-process command.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise errors.UserError(f"{path} exists; choose another output folder or remove it")
    meta = make_meta(
        vae_config=vae_model.config,
        ldm_config=ldm_model.config,
        scale=scale,
        clip=clip,
        special_latents=special_latents,
        slots_per_bar=slots_per_bar,
        provenance=provenance,
        section_vocab=section_vocab,
        num_steps=num_steps,
        prediction=prediction,
        max_len=max_len,
        has_ema=(vae_ema is not None, ldm_ema is not None),
        unsupported=unsupported,
        has_real_statistics=real_statistics is not None,
    )
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        for name, model, ema in (
            ("vae", vae_model, False),
            ("ldm", ldm_model, False),
            ("vae", vae_ema, True),
            ("ldm", ldm_ema, True),
        ):
            if model is None:
                continue
            arrays = model_arrays(model)
            file = os.path.join(staging, weights_file(name, ema))
            safetensors_numpy.save_file(arrays, file, metadata={"format": FORMAT, "model": name})
        if real_statistics is not None:
            real_stats.save(real_statistics, os.path.join(staging, real_stats.FILE_NAME))
        with open(os.path.join(staging, BUNDLE_JSON), "w") as f:
            json.dump(meta, f, indent=1)
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _move_into_place(staging: str, path: str) -> None:
    """Renames `staging` to `path`; an old `path` is moved aside first and removed after."""
    if not os.path.exists(path):
        os.rename(staging, path)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
    os.rmdir(old)
    os.rename(path, old)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(path: str) -> dict:
    """bundle.json, checked: format and version, the vocabulary, the fields sampling reads."""
    file = os.path.join(os.path.abspath(path), BUNDLE_JSON)
    if not os.path.exists(file):
        raise errors.UserError(
            f"{file} not found: not a bundle (make one with `make export` or "
            "`python -m phrase_jax.interop.official`)"
        )
    try:
        with open(file) as f:
            meta = json.load(f)
    except ValueError as error:
        raise errors.UserError(f"{file}: not valid JSON ({error}); re-export the bundle") from None
    if meta.get("format") != FORMAT:
        raise errors.UserError(f"{file}: format {meta.get('format')!r}, not a {FORMAT}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise errors.UserError(
            f"{file}: format_version {meta.get('format_version')!r}; this phrase_jax reads "
            f"version {FORMAT_VERSION}: re-export the bundle or update phrase_jax"
        )
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise errors.UserError(f"{file}: lacks {missing}; re-export the bundle")
    if meta["vocab_sha256"] != Vocab().sha256:
        raise errors.UserError(
            f"{file}: its VAE reads another token vocabulary (sha256 {meta['vocab_sha256'][:12]}"
            "...); it cannot be decoded with phrase_jax's tokenizer"
        )
    if meta["diffusion"].get("schedule") not in SCHEDULES:
        raise errors.UserError(f"{file}: diffusion schedule {meta['diffusion'].get('schedule')!r}")
    return meta


def read_weights(path: str, meta: dict, model: str, *, ema: bool) -> dict[str, np.ndarray]:
    """The arrays of `model` (vae or ldm) from the bundle at `path`; `ema` picks the EMA copy."""
    name = meta[model]["ema_weights" if ema else "weights"]
    if name is None:
        raise errors.UserError(f"{path}: holds no EMA weights for the {model}")
    file = os.path.join(os.path.abspath(path), os.path.basename(name))
    if not os.path.exists(file):
        raise errors.UserError(f"{file} not found: the bundle is incomplete; copy it again")
    return safetensors_numpy.load_file(file)


def read_real_statistics(path: str, meta: dict) -> real_stats.RealStatistics | None:
    """The real statistics stored in the bundle at `path`, or None when it holds none."""
    name = meta.get("real_statistics")
    if not name:
        return None
    file = os.path.join(os.path.abspath(path), os.path.basename(name))
    if not os.path.exists(file):
        raise errors.UserError(f"{file} not found: the bundle is incomplete; copy it again")
    return real_stats.load(file)


def require(config, key: str = "model") -> dict:
    """The bundle that config `key` names exists and its bundle.json reads (checked before any
    weights are loaded); returns bundle.json."""
    path = config.get(key) if hasattr(config, "get") else getattr(config, key)
    if not os.path.isdir(path):
        raise errors.UserError(
            f"config {key}={path}: no such folder; give a bundle folder (make export, "
            "make import-official)"
        )
    return read_meta(path)
