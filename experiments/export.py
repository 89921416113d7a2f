"""Export a trained PhraseLDM run (with its latents manifest and VAE) as one bundle folder.

    python -m phrase_jax.main --config experiments/export.py:lencond,cpu \
        --workdir bundles/ldm_lencond_cpu
    make export VARIANT=lencond,cpu [LDM_WORKDIR=runs/ldm_lencond_cpu] [OUT=bundles/mine]

The workdir is the bundle folder (`make export` writes `runs/bundle_<the same words>` unless
OUT is given). Variants name the LDM run as in experiments/sample.py. Options: `ldm_workdir`,
`ldm_step` (0: latest), `use_ema` (also store the EMA weights when the run kept them),
`latents_dir` / `vae_workdir` (override the recorded paths of moved runs), `data_dir` (the
prepared data whose held-out `real_splits` songs' MIDI descriptors the bundle stores as
real_statistics.json, for evaluating it where the data are absent; "" = the data the latents
manifest names; skipped when that folder holds no prepared data).
"""

from __future__ import annotations

import ml_collections

from experiments import sample
from phrase_jax import run_names

VARIANT_GROUPS = sample.VARIANT_GROUPS
VARIANT_DEFAULTS = sample.VARIANT_DEFAULTS
VARIANTS = sample.VARIANTS
RUN_KIND = "bundle"


def get_config(arg=None):
    chosen = sample.ldm_variants(arg, "experiments/export.py")
    config = ml_collections.ConfigDict()
    config.stage = "export"
    config.seed = 0
    config.ldm_workdir = run_names.run_dir("ldm", chosen.words)
    config.ldm_step = 0  # 0 = the latest checkpoint
    config.use_ema = True  # store the EMA weights too when the run kept them
    config.latents_dir = ""  # "" = the LDM run's latents.dir
    config.vae_workdir = ""  # "" = the VAE the latents manifest names
    config.data_dir = ""  # "" = the prepared data the latents manifest names
    config.real_splits = ("valid", "test")  # the held-out songs of the stored real statistics
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1)))
    return config
