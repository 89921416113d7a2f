"""The export stage (issue 12): a trained LDM run, its latents manifest and its VAE → one bundle
folder (`artifacts/bundle.py`) that `load_pretrained`, `make sample MODEL=...` and the notebook
read without the runs.

    python -m phrase_jax.main --config experiments/export.py:lencond,cpu \
        --workdir bundles/ldm_lencond_cpu
    make export VARIANT=lencond,cpu [LDM_WORKDIR=runs/ldm_lencond_cpu] [OUT=bundles/mine]

`run(config, workdir)` reads top to bottom: the LDM run checked → `ldm_loading.load_pipeline`
(the LDM's raw weights, the latents manifest it trained on, the VAE checkpoint that manifest
names: the weights that encoded the training data) → the LDM's EMA weights when the run kept
them → `bundle.write_bundle` into the workdir (replacing an earlier bundle there, never a folder
holding anything else) → config.json. The bundle records the manifest's scale, clip and special
latents, the slots per bar, the section vocabulary, the diffusion settings, the VAE's phrase
length and the provenance (the source runs, their steps, the VAE config hash, the data dir),
and, when the prepared data are at hand, the held-out songs' real statistics
(`artifacts/real_statistics`), so `make eval MODEL=...` runs where the data are absent.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from phrase_jax import config_lib, errors
from phrase_jax.artifacts import bundle, ldm_run, real_statistics, run_dir
from phrase_jax.evaluation import descriptor_rows
from phrase_jax.inference import ldm_loading
from phrase_jax.training import sharding

# What an earlier export leaves in its workdir; anything else there is not ours to replace.
OWN_FILES = {bundle.BUNDLE_JSON, run_dir.CONFIG_JSON, real_statistics.FILE_NAME} | {
    bundle.weights_file(m, ema) for m in bundle.MODELS for ema in (False, True)
}


def validate_config(config) -> None:
    """The LDM run exists (its config.json) and a named data dir holds prepared data, before
    anything is loaded."""
    ldm_run.require(config)
    if config.get("data_dir"):
        config_lib.require_file(config, "data_dir", "manifest.json", "run `make data` first")


def _check_workdir(workdir: str) -> None:
    foreign = sorted(set(os.listdir(workdir)) - OWN_FILES) if os.path.isdir(workdir) else []
    if foreign:
        raise errors.UserError(
            f"{workdir} holds {foreign[:3]}, not a bundle: export into a new or empty folder"
        )


def run(config, workdir: str) -> dict:
    """Writes the bundle of `config.ldm_workdir` into `workdir`; returns its bundle.json."""
    validate_config(config)
    workdir = os.path.abspath(workdir)
    _check_workdir(workdir)
    mesh = sharding.make_mesh(config.mesh)
    pipeline = ldm_loading.load_pipeline(
        config.ldm_workdir, mesh, ldm_step=config.ldm_step or None, use_ema=False,
        latents_dir=config.latents_dir, vae_workdir=config.vae_workdir,
    )  # fmt: skip
    ldm, vae, manifest = pipeline
    ema_ldm = None
    if config.use_ema and ldm.config.ema_decay > 0:
        ema_ldm = ldm_loading.load_ldm(ldm.workdir, mesh, step=ldm.step, use_ema=True).model
    provenance = {
        "source": "phrase_jax export",
        "ldm_workdir": ldm.workdir,
        "ldm_step": ldm.step,
        "vae_workdir": os.path.abspath(config.vae_workdir or manifest["vae_workdir"]),
        "vae_step": vae.step,
        "vae_checkpoint": vae.checkpoint.kind,
        "vae_config_hash": vae.config_hash,
        "vae_used_ema": vae.used_ema,
        "latents_dir": os.path.abspath(config.latents_dir or ldm.config.latents.dir),
        "data": manifest.get("data_dir", ""),
    }
    data_dir = config.get("data_dir") or manifest.get("data_dir", "")
    stats = None
    if data_dir and os.path.isfile(os.path.join(data_dir, "manifest.json")):
        stats = descriptor_rows.from_prepared_data(
            data_dir, config.get("real_splits", ("valid", "test")), seed=config.seed
        )
    else:
        logging.warning("no prepared data at %r: the bundle stores no real statistics", data_dir)
    if jax.process_index() == 0:
        bundle.write_bundle(
            workdir,
            vae_model=vae.model,
            ldm_model=ldm.model,
            ldm_ema=ema_ldm,
            scale=float(manifest["scale"]),
            clip=float(manifest["clip"]),
            special_latents=manifest["special_latents"],
            slots_per_bar=int(manifest["slots_per_bar"]),
            section_vocab=ldm.section_vocab,
            num_steps=int(ldm.config.diffusion.num_steps),
            prediction=ldm.config.diffusion.prediction,
            max_len=int(vae.config.data.max_len),
            provenance=provenance,
            real_statistics=stats,
            overwrite=True,
        )
        run_dir.write_config(config, workdir)  # after the bundle: its checks passed
    meta = bundle.read_meta(workdir)
    logging.info(
        "bundle %s: LDM %s step %d (%s), VAE step %d",
        workdir, ldm.workdir, ldm.step, "raw + EMA" if ema_ldm else "raw", vae.step,
    )  # fmt: skip
    return meta
