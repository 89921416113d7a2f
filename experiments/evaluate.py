"""Evaluate a trained PhraseLDM (SPEC 7): generated vs real songs in metrics.json / metrics.md.

    python -m phrase_jax.main --config experiments/evaluate.py:lencond --workdir runs/eval_lencond
    python -m phrase_jax.main --config experiments/evaluate.py:lencond,cpu \
        --workdir runs/eval_lencond_cpu
    python -m phrase_jax.main --workdir runs/eval_lencond_vs_uncond_cpu \
        --config experiments/evaluate.py:lencond,cpu,compare.ldm_workdir=runs/ldm_uncond_cpu
    make eval VARIANT=lencond,cpu [LDM_WORKDIR=runs/ldm_lencond_cpu] [EVAL_ARGS=num_songs=50]

The workdir is the output folder (metrics.json, metrics.md, self_similarity.png). Variants name
the LDM run as experiments/sample.py does (`runs/ldm_<condition>[_bars][_<scale>]`): a condition
(`uncond` default, `lencond`, `seccond`), `bars`, and a scale: (none) the paper protocol, 100
songs of 64 bars (length accuracy) with the 1000-step DDPM sampler; `cpu` 20 songs (the ref's
count) with DPM-Solver++(2M) SDE, 20 steps; `runlocal` 2 songs of 4 bars, 4 DDIM steps (CI).
Sampling options are experiments/sample.py's. Evaluation options: `reference_songs` (training
songs whose slots form the PhraseFID reference set; ref 100), `real_splits` (the real row),
`memorisation_train_songs` (0: every training melody), `fid_orders`, `srs_threshold`,
`srs_min_run`, `melody_program`, `plot_songs`, `label`, `data_dir` (prepared data; "" = the one
the latents manifest names). `compare.*` adds a comparison row: another LDM run
(`compare.ldm_workdir`, same VAE) and/or another `compare.sampler` / `compare.steps` /
`compare.guidance_scale` (empty, 0 and -1 keep the evaluated row's).
A bundle replaces the runs: `model=BUNDLE` (`make eval MODEL=...`); its real rows are encoded
with the bundle's VAE from `data_dir` (default: the data it was exported from). Where those
data are absent, a bundle that stores real statistics is still measured on the rows that need
no real latents (PhraseFID and MR are then undefined).
The model-independent table (MIDI descriptors against the held-out songs' statistics; the
real-vs-real ceiling; docs/design.md) reads `real_statistics` (a real_statistics.json; "" = from
the prepared held-out songs, else the bundle's copy) and adds a row per folder of
`extra_midi_dirs` (MIDI folders joined by ':', read at `midi_quantize_step`; 3 = 16th notes).
"""

from __future__ import annotations

import ml_collections

from experiments import sample
from phrase_jax import run_names

# The same words name the same LDM run as in experiments/sample.py.
VARIANT_GROUPS = sample.VARIANT_GROUPS
VARIANT_DEFAULTS = sample.VARIANT_DEFAULTS
VARIANTS = sample.VARIANTS
RUN_KIND = "eval"


def get_config(arg=None):
    chosen = sample.ldm_variants(arg, "experiments/evaluate.py")

    config = ml_collections.ConfigDict()
    config.stage = "evaluate"
    config.seed = 0  # sampling noise and the choice of reference songs
    config.model = ""  # a bundle folder (make export / import-official): replaces the runs
    config.ldm_workdir = run_names.run_dir("ldm", chosen.words)
    config.ldm_step = 0  # 0 = the latest checkpoint
    config.use_ema = True
    config.latents_dir = ""  # "" = the LDM run's latents.dir
    config.vae_workdir = ""  # "" = the VAE the latents manifest names
    config.data_dir = ""  # "" = the prepared data the latents manifest (or bundle) names
    config.label = ""  # row name of the evaluated LDM ("" = run, step and sampler)
    # Sampling (experiments/sample.py's keys; phrase_jax.stages.sample.SampleSettings).
    config.num_songs = 100  # ref protocol: 20; SPEC 7: at least 100
    config.bars = 0  # 0 = the sections' total, else 64 (SPEC 7 length accuracy)
    config.sections = ""
    config.sampler = "ddpm"
    config.steps = 1000
    config.guidance_scale = 1.0
    config.clip = -1.0  # -1 = the manifest's clip (scaled space), 0 = none
    config.end = "auto"
    config.batch_size = 16
    config.decode_chunk = 1024
    config.compare = ml_collections.ConfigDict(
        dict(ldm_workdir="", ldm_step=0, sampler="", steps=0, guidance_scale=-1.0, label="")
    )
    # Metrics.
    config.reference_songs = 100  # ref: all slots of 100 training songs
    config.real_splits = ("valid", "test")
    config.memorisation_train_songs = 0  # 0 = every training melody
    config.melody_program = 13  # POP909 MELODY
    config.fid_orders = (1, 2, 4, 8)
    config.srs_threshold = 0.5
    config.srs_min_run = 4
    config.plot_songs = 3
    config.real_statistics = ""  # a real_statistics.json; "" = the held-out songs' (or bundle's)
    config.extra_midi_dirs = ""  # MIDI folders joined by ':', one row each (other systems)
    config.midi_quantize_step = 3  # how those files are read: 3 = 16th notes, as the data
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1)))

    for scale in sample.SCALES:
        if scale in chosen:
            config.sampler, config.steps = sample.SCALE_SAMPLERS[scale]
    if "cpu" in chosen:
        config.num_songs = 20
        config.batch_size = 10
        config.decode_chunk = 512
    elif "runlocal" in chosen:
        config.num_songs = 2
        config.bars = 4
        config.batch_size = 2
        config.decode_chunk = 64
        config.plot_songs = 2
    return config
