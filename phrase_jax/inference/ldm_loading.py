"""Load a trained PhraseLDM with the latents manifest and the VAE it belongs to (SPEC 6).

    pipeline = load_pipeline("runs/ldm_lencond", mesh)      # (ldm, vae, manifest)
    songs, stats = generate.generate(*pipeline, generate.SampleSettings(num_songs=4))

The LDM run's own config.json rebuilds its architecture and sharding; only its checkpoint's
EMA weights (when kept and wanted, else the raw ones) are read. The manifest is the one the run
trained on (its `latents.dir`, or an override for moved runs), checked against the provenance
the checkpoint recorded; the VAE is the checkpoint the manifest names (step, latest or best),
checked by config hash, so latents are always decoded by the VAE that encoded the training data.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from phrase_jax.artifacts import latents, ldm_run, run_dir, vae_run
from phrase_jax.diffusion import schedules
from phrase_jax.inference import params, pretrained, vae_loading
from phrase_jax.models import dit
from phrase_jax.music import sections
from phrase_jax.training import sharding


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


def load_ldm(
    ldm_workdir: str, mesh: Mesh, *, step: int | None = None, use_ema: bool = True
) -> LoadedLDM:
    """Restores the PhraseLDM of a train_ldm workdir onto `mesh` (its own sharding rules)."""
    workdir = os.path.abspath(ldm_workdir)
    config = ldm_run.read_config(workdir)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise run_dir.MissingArtifact(f"{workdir}/checkpoints: no checkpoints; train the LDM first")
    model_config = dit.PhraseLDMConfig.from_mapping(config.model)
    used_ema = use_ema and config.ema_decay > 0
    restored = params.restore_model(
        lambda: dit.PhraseLDM(model_config, rngs=nnx.Rngs(config.seed)),
        workdir,
        step,
        mesh,
        sharding.logical_rules(config.sharding),
        ema=used_ema,
    )
    return LoadedLDM(
        model=restored.model,
        config=config,
        schedule=schedules.cosine_schedule(int(config.diffusion.num_steps)),
        section_vocab=ldm_run.read_section_vocab(workdir, restored.json),
        step=restored.step,
        used_ema=used_ema,
        workdir=workdir,
        latents_provenance=ldm_run.recorded_latents(restored.json),
        mesh=mesh,
    )


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
    manifest = latents.read(
        latents_dir,
        hint=f"the latents dir of {ldm.workdir} moved or was never extracted; pass "
        "latents_dir=... (experiments/extract.py writes it)",
    )
    vae_ref = latents.vae_checkpoint(manifest, latents_dir)
    latents.check_training_data(
        ldm.latents_provenance, manifest, latents_dir=latents_dir, run=ldm.workdir,
        fix="pass the latents dir that run used (latents_dir=...)", ignore=latents.MOVABLE,
    )  # fmt: skip
    model_config = ldm.model.config
    if (model_config.n_slots, model_config.latent_dim) != (
        manifest["max_slots"],
        manifest["latent_dim"],
    ):
        raise run_dir.WrongArtifact(
            f"{latents_dir}: latents [{manifest['max_slots']}, "
            f"{manifest['latent_dim']}] do not fit the LDM in {ldm.workdir}"
        )
    vae = vae_loading.load_vae(
        vae_workdir or manifest["vae_workdir"], mesh, checkpoint=vae_ref.kind
    )
    if vae.step != manifest["vae_step"] or vae.config_hash != manifest.get("vae_config_hash"):
        raise run_dir.WrongArtifact(
            f"VAE at step {vae.step} (hash {vae.config_hash}) but {latents_dir} was extracted "
            f"with step {manifest['vae_step']} (hash {manifest.get('vae_config_hash')}); "
            "decode with the VAE checkpoint the latents came from"
        )
    return SamplingPipeline(ldm, vae, manifest)


def load_bundle_pipeline(path: str, mesh: Mesh, *, use_ema: bool = True) -> SamplingPipeline:
    """A bundle (`artifacts/bundle.py`: `make export` or the official import) as the pipeline
    `load_pipeline` returns, so `generate` takes either."""
    loaded = pretrained.load_pretrained(path, use_ema=use_ema, mesh=mesh)
    return pipeline_from_pretrained(loaded, mesh)


def pipeline_from_pretrained(
    loaded: pretrained.Pretrained, mesh: Mesh | None = None
) -> SamplingPipeline:
    """A loaded bundle as a SamplingPipeline: the LoadedLDM/LoadedVAE hold what generation
    reads (models, schedule, section vocabulary, prediction, max_len; `workdir` is the bundle
    folder, `step` its recorded training steps, 0 when unknown); the manifest is
    `loaded.manifest()` plus the bundle's provenance. `mesh`: where the models live (default:
    the first device, where `load_pretrained` puts them without a mesh)."""
    if mesh is None:
        mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), sharding.MESH_AXES)
    provenance = loaded.meta["provenance"]
    ldm = LoadedLDM(
        model=loaded.ldm,
        config=ml_collections.ConfigDict(
            {"diffusion": {"prediction": loaded.prediction, "num_steps": loaded.schedule.num_steps}}
        ),
        schedule=loaded.schedule,
        section_vocab=loaded.section_vocab,
        step=int(provenance.get("ldm_step") or 0),
        used_ema=loaded.used_ema["ldm"],
        workdir=loaded.path,
        latents_provenance=None,
        mesh=mesh,
    )
    vae = vae_loading.LoadedVAE(
        model=loaded.vae,
        config=ml_collections.ConfigDict({"data": {"max_len": loaded.max_len}}),
        config_hash=str(provenance.get("vae_config_hash", "")),
        checkpoint=vae_run.CheckpointRef(int(provenance.get("vae_step") or 0)),
        used_ema=loaded.used_ema["vae"],
        checkpoint_dir=loaded.path,
    )
    return SamplingPipeline(ldm, vae, dict(loaded.manifest(), provenance=provenance))


def load_configured_pipeline(
    config, mesh: Mesh, *, guidance_scale: float, sections: str
) -> SamplingPipeline:
    """The pipeline a sample/evaluate config names: the bundle `config.model` when set (its
    refusals checked: guidance without condition dropout, sections without known ids), else
    the LDM run `config.ldm_workdir` with its latents and VAE."""
    if config.get("model"):
        loaded = pretrained.load_pretrained(config.model, use_ema=config.use_ema, mesh=mesh)
        loaded.check_sampling(guidance_scale=guidance_scale, sections=sections)
        return pipeline_from_pretrained(loaded, mesh)
    return load_pipeline(
        config.ldm_workdir, mesh, ldm_step=config.ldm_step or None, use_ema=config.use_ema,
        latents_dir=config.latents_dir, vae_workdir=config.vae_workdir,
    )  # fmt: skip
