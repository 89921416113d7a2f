"""Latent extraction (SPEC 3): encode every song of every split with a trained PhraseVAE.

    python -m phrase_jax.main --config experiments/extract.py --workdir runs/latents
    python -m phrase_jax.main --config experiments/extract.py:cpu --workdir runs/latents_cpu
    make extract-latents VARIANT=cpu

The workdir becomes the latents dir that experiments/ldm.py reads (`latents.dir`), by the
run-name convention `runs/latents[_<scale>]`. Variants pick the matching VAE run (`vae_workdir`):
(none) `runs/vae`, `cpu` `runs/vae_cpu`, `runlocal` `runs/vae_runlocal`; `data.dir` defaults to
`data/pop909` (the Makefile passes its DATA_DIR).
Re-running with the same VAE checkpoint and settings reuses the finished extraction.
"""

from __future__ import annotations

import os

import ml_collections

from experiments import variants
from phrase_jax import run_names

VARIANT_GROUPS = (variants.SCALES,)
VARIANTS = run_names.variant_words(VARIANT_GROUPS)
RUN_KIND = "latents"


def get_config(arg=None):
    chosen = run_names.parse_variants(arg, VARIANT_GROUPS, source="experiments/extract.py")
    config = ml_collections.ConfigDict()
    config.stage = "extract_latents"
    config.seed = 42
    config.vae_workdir = run_names.run_dir("vae", chosen.words)
    config.vae_checkpoint = "latest"  # latest | best (the VAE run's best/ by valid F1)
    config.data = ml_collections.ConfigDict(
        dict(
            dir=os.path.join("data", "pop909"),  # `make data`'s output; the Makefile passes it
            max_len=0,  # encoder length; 0 = the VAE run's own data.max_len
        )
    )
    config.splits = ("train", "valid", "test")
    config.max_slots = 512  # 128 bars x 4 slots (ref); longer songs are skipped and listed
    config.batch_size = 512  # phrases per encoder call (global), rounded up to the data axis
    config.songs_per_shard = 128
    config.clip_percentile = 99.9
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1)))
    if "runlocal" in chosen:
        config.batch_size = 64
    return config
