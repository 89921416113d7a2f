"""Generate songs with a trained PhraseLDM (SPEC 6): .mid + piano-roll .png per song, samples.json.

    python -m phrase_jax.main --config experiments/sample.py:lencond --workdir runs/samples_lencond
    python -m phrase_jax.main --config experiments/sample.py:lencond,cpu,bars=32,num_songs=8 \
        --workdir runs/samples_lencond_cpu
    python -m phrase_jax.main --config experiments/sample.py:seccond,sections=i4A8B8A8o4 \
        --workdir runs/samples_seccond
    make sample VARIANT=lencond,cpu [LDM_WORKDIR=runs/ldm_lencond_cpu] [SAMPLE_ARGS=num_songs=8]

The workdir is the output folder (`make sample` writes `runs/samples_<the same words>`).
Variants name the LDM run to read (`ldm_workdir`) by the run-name convention that
experiments/ldm.py's workdirs follow (`runs/ldm_<condition>[_bars][_<scale>]`): a condition
(`uncond` default, `lencond`, `seccond`), `bars`, and a scale: (none) the paper's 1000-step
DDPM sampler; `cpu` DPM-Solver++(2M) SDE with 20 steps (PhraseFID within 5% of DDPM-1000 where
the ODE samplers are 64% above it, docs/results.md); `runlocal` 2 short songs with 4 DDIM
steps (CI).
Options: `sampler` (ddpm | ddim | dpm_solver_pp | dpm_solver_pp_sde, aliases dpmpp, dpmpp_sde),
`steps`, `guidance_scale` (classifier-free guidance, conditional models), `bars` (0: the
section total, else 64), `sections` (e.g. i4A8B8o4), `clip` (-1: the manifest's, 0: none),
`seed`, `tempo`, `programs` (e.g. 0:24,33:32 remaps song program 0 to 24, 33 to 32),
`wav` (+ `synthesizer` auto | fluidsynth | sine, `sound_font`), `model` (a bundle folder, see
below), `ldm_workdir`, `latents_dir` / `vae_workdir` (override the recorded paths of
moved runs).

A bundle (`make export`, `make import-official`) replaces the three runs:
    python -m phrase_jax.main --config experiments/sample.py:cpu,wav=True,model=BUNDLE \
        --workdir runs/samples_bundle
    make sample MODEL=bundles/phrase-ldm-lencond        # DPM-Solver++ SDE-10, .wav on
"""

from __future__ import annotations

import ml_collections

from experiments import variants
from phrase_jax import run_names

VARIANT_GROUPS = variants.LDM_GROUPS
VARIANT_DEFAULTS = variants.LDM_DEFAULTS
VARIANTS = run_names.variant_words(VARIANT_GROUPS)
RUN_KIND = "samples"
SCALES = variants.SCALES
# Sampler and steps per scale (none: the paper's DDPM-1000); experiments/evaluate.py reads it too.
SCALE_SAMPLERS = {"cpu": ("dpm_solver_pp_sde", 20), "runlocal": ("ddim", 4)}


def ldm_variants(arg: str | None, source: str) -> run_names.Variants:
    """The words of `arg` and the LDM run they name (experiments/evaluate.py shares it)."""
    return run_names.parse_variants(arg, VARIANT_GROUPS, defaults=VARIANT_DEFAULTS, source=source)


def get_config(arg=None):
    chosen = ldm_variants(arg, "experiments/sample.py")

    config = ml_collections.ConfigDict()
    config.stage = "sample"
    config.seed = 0
    config.model = ""  # a bundle folder (make export, make import-official): replaces the runs
    config.ldm_workdir = run_names.run_dir("ldm", chosen.words)
    config.ldm_step = 0  # 0 = the latest checkpoint
    config.use_ema = True  # the EMA weights when the run kept them
    config.latents_dir = ""  # "" = the LDM run's latents.dir
    config.vae_workdir = ""  # "" = the VAE the latents manifest names
    config.num_songs = 20
    config.bars = 0  # 0 = the sections' total, else 64 (SPEC 7 length accuracy)
    config.sections = ""
    config.sampler = "ddpm"
    config.steps = 1000  # ref: 1000 ancestral steps
    config.guidance_scale = 1.0
    config.clip = -1.0  # -1 = the manifest's clip (scaled space), 0 = none
    config.end = "auto"  # auto | detect ([SEP] latent) | condition (the requested bars)
    config.batch_size = 16  # songs per sampler call
    config.decode_chunk = 1024  # phrases per VAE decoder call
    config.tempo = 90.0
    config.piano_roll = True
    config.wav = False  # FluidSynth when pyfluidsynth is installed, else sine tones
    config.synthesizer = "auto"  # auto | fluidsynth | sine (generation/audio.py)
    config.sound_font = ""  # "" = $PHRASE_JAX_SOUNDFONT, a system GM font, pretty_midi's
    config.programs = ""  # remap programs per track, e.g. "0:24,33:32" (song:output, 128 drums)
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1)))

    for scale in SCALES:
        if scale in chosen:
            config.sampler, config.steps = SCALE_SAMPLERS[scale]
    if "cpu" in chosen:
        config.num_songs = 4
        config.batch_size = 4
        config.decode_chunk = 512
    elif "runlocal" in chosen:
        config.num_songs = 2
        config.bars = 4
        config.batch_size = 2
        config.decode_chunk = 64
    return config
