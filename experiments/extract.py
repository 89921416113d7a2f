"""Latent extraction (SPEC 3): encode every song of every split with a trained PhraseVAE.

    python -m phrase_jax.main --config experiments/extract.py --workdir runs/latents
    python -m phrase_jax.main --config experiments/extract.py:cpu --workdir runs/latents_cpu
    make extract-latents VARIANT=cpu

The workdir becomes the latents dir that experiments/ldm.py reads (`latents.dir`). Variants
pick the matching VAE run: (none) `runs/vae`, `cpu` `runs/vae_cpu`, `runlocal` `runs/vae_runlocal`.
Re-running with the same VAE checkpoint and settings reuses the finished extraction.
"""

from __future__ import annotations

import os

import ml_collections

VARIANTS = ("runlocal", "cpu")


def get_config(arg=None):
    variants = tuple(v for v in (arg or "").split(",") if v)
    if len(variants) > 1:
        raise ValueError(f"pick one variant of {VARIANTS}, got {variants}")
    config = ml_collections.ConfigDict()
    config.stage = "extract_latents"
    config.seed = 42
    config.vae_workdir = "_".join((os.path.join("runs", "vae"), *variants))
    config.vae_checkpoint = "latest"  # latest | best (the VAE run's best/ by valid F1)
    config.data = ml_collections.ConfigDict(
        dict(
            dir=os.environ.get("PHRASE_JAX_DATA_DIR", os.path.join("data", "pop909")),
            max_len=0,  # encoder length; 0 = the VAE run's own data.max_len
        )
    )
    config.splits = ("train", "valid", "test")
    config.max_slots = 512  # 128 bars x 4 slots (ref); longer songs are skipped and listed
    config.batch_size = 512  # phrases per encoder call (global), rounded up to the data axis
    config.songs_per_shard = 128
    config.clip_percentile = 99.9
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1)))
    if "runlocal" in variants:
        config.batch_size = 64
    return config
