"""Load a trained PhraseLDM with the latents manifest and the VAE it belongs to (SPEC 6).

    pipeline = load_pipeline("runs/ldm_lencond", mesh)      # (ldm, vae, manifest)
    songs, stats = sample.generate(*pipeline, sample.SampleSettings(num_songs=4))

The LDM run's own config.json rebuilds its architecture and sharding; its checkpoint's EMA
weights are used when the run kept an EMA. The manifest is the one the run trained on (its
`latents.dir`, or an override for moved runs), checked against the provenance the checkpoint
recorded; the VAE is the one the manifest names, checked by step and config hash, so latents
are always decoded by the VAE that encoded the training data.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import ml_collections
from flax import nnx
from jax.sharding import Mesh

from data_pipelines import ldm_pipeline
from phrase_jax import config_lib
from phrase_jax.diffusion import schedules
from phrase_jax.models import dit
from phrase_jax.music import sections
from phrase_jax.stages import train_ldm, train_vae, vae_loading
from phrase_jax.training import checkpointing, train_state

# Latent provenance the LDM checkpoint records that the manifest must still match.
CHECKED_PROVENANCE = ("vae_step", "vae_config_hash", "scale", "max_slots", "latent_dim")
MANIFEST_KEYS = ("special_latents", "clip", "slots_per_bar", "vae_workdir", "vae_step")


@dataclasses.dataclass(frozen=True)
class LoadedLDM:
    """A restored PhraseLDM: model (EMA weights when kept and wanted), the run's config, its
    diffusion schedule and section vocabulary, the checkpoint step, and the latents provenance
    the checkpoint recorded (None for checkpoints without it)."""

    model: dit.PhraseLDM
    config: ml_collections.ConfigDict
    schedule: schedules.Schedule
    section_vocab: sections.SectionVocab
    step: int
    used_ema: bool
    workdir: str
    latents_provenance: dict | None
    mesh: Mesh


class SamplingPipeline(NamedTuple):
    """`generate(*pipeline, settings)`."""

    ldm: LoadedLDM
    vae: vae_loading.LoadedVAE
    manifest: dict


def _read_json_config(path: str, what: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {what}")
    with open(path) as f:
        return config_lib.from_json(f.read())


def load_ldm(
    ldm_workdir: str, mesh: Mesh, *, step: int | None = None, use_ema: bool = True
) -> LoadedLDM:
    """Restores the PhraseLDM of a train_ldm workdir onto `mesh` (its own sharding rules)."""
    workdir = os.path.abspath(ldm_workdir)
    config = _read_json_config(
        os.path.join(workdir, "config.json"),
        "ldm_workdir must be a train_ldm run (experiments/ldm.py)",
    )
    if config.get("stage") != "train_ldm":
        raise ValueError(f"{workdir}/config.json: stage {config.get('stage')!r}, not train_ldm")
    vocab = sections.SectionVocab.load(os.path.join(workdir, train_ldm.SECTION_VOCAB))
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"{workdir}/checkpoints: none; train the LDM first")
    spec, _, _ = train_ldm.build_state_spec(config, mesh)
    checkpointer = checkpointing.Checkpointer(workdir, async_save=False)
    try:
        restored = checkpointer.restore(step, spec)
    finally:
        checkpointer.close()
    saved_vocab = restored.json.get("extra", {}).get("section_vocab")
    if saved_vocab is not None and list(saved_vocab) != vocab.types:
        raise ValueError(f"{workdir}/{train_ldm.SECTION_VOCAB}: differs from its checkpoint's")
    model, _, ema = train_state.unpack(spec, restored.state)
    used_ema = use_ema and ema is not None
    model = nnx.merge(*nnx.split(ema if used_ema else model))  # drop the optimizer's arrays
    return LoadedLDM(
        model=model,
        config=config,
        schedule=schedules.cosine_schedule(int(config.diffusion.num_steps)),
        section_vocab=vocab,
        step=restored.step,
        used_ema=used_ema,
        workdir=workdir,
        latents_provenance=restored.json.get("extra", {}).get("latents"),
        mesh=mesh,
    )


def _vae_checkpoint_choice(manifest: dict) -> str:
    """`best` when the latents came from the VAE run's best/ checkpoint, else `latest`."""
    step_dir = manifest.get("vae_checkpoint", "")
    parent = os.path.basename(os.path.dirname(os.path.dirname(os.path.normpath(step_dir))))
    return "best" if step_dir and parent == train_vae.BEST_DIR else "latest"


def load_pipeline(
    ldm_workdir: str,
    mesh: Mesh,
    *,
    ldm_step: int | None = None,
    use_ema: bool = True,
    latents_dir: str = "",
    vae_workdir: str = "",
) -> SamplingPipeline:
    """The LDM, the latents manifest it trained on and the VAE that manifest names, checked to
    belong together. `latents_dir` / `vae_workdir` override the recorded paths (moved runs)."""
    ldm = load_ldm(ldm_workdir, mesh, step=ldm_step, use_ema=use_ema)
    latents_dir = os.path.abspath(latents_dir or ldm.config.latents.dir)
    if not os.path.exists(os.path.join(latents_dir, "manifest.json")):
        raise FileNotFoundError(
            f"{latents_dir}/manifest.json not found: the latents dir of {ldm.workdir} moved or "
            "was never extracted; pass latents_dir=... (experiments/extract.py writes it)"
        )
    manifest = ldm_pipeline.read_manifest(latents_dir)
    for key in MANIFEST_KEYS:
        if key not in manifest:
            raise ValueError(f"{latents_dir}/manifest.json: no {key!r}; re-run the extraction")
    recorded = ldm.latents_provenance or {}
    for key in CHECKED_PROVENANCE:
        if key in recorded and recorded[key] != manifest[key]:
            raise ValueError(
                f"{latents_dir}: {key}={manifest[key]!r} but {ldm.workdir} trained on "
                f"{recorded[key]!r}; pass the latents dir that run used (latents_dir=...)"
            )
    model_config = ldm.model.config
    if (model_config.n_slots, model_config.latent_dim) != (
        manifest["max_slots"],
        manifest["latent_dim"],
    ):
        raise ValueError(
            f"{latents_dir}: latents [{manifest['max_slots']}, "
            f"{manifest['latent_dim']}] do not fit the LDM in {ldm.workdir}"
        )
    vae = vae_loading.load_vae(
        vae_workdir or manifest["vae_workdir"], mesh, checkpoint=_vae_checkpoint_choice(manifest)
    )
    if vae.step != manifest["vae_step"] or vae.config_hash != manifest.get("vae_config_hash"):
        raise ValueError(
            f"VAE at step {vae.step} (hash {vae.config_hash}) but {latents_dir} was extracted "
            f"with step {manifest['vae_step']} (hash {manifest.get('vae_config_hash')}); "
            "decode with the VAE checkpoint the latents came from"
        )
    return SamplingPipeline(ldm, vae, manifest)
