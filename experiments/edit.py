"""Edit a song with a trained PhraseLDM (issue 14): continue it, refill bars or a section,
accompany a melody, rewrite one instrument. Writes edited.mid, edited.png (written regions
shaded, written notes outlined), edited.wav (when FluidSynth loads) and edit.json.

    python -m phrase_jax.main --workdir runs/edit_cont \
        --config experiments/edit.py:cpu,model=BUNDLE,input=song.mid,task=continue,bars=64
    ... task=infill,bars=9-16            # rewrite bars 9..16 (bars counted from the first note)
    ... task=infill,section=B            # the first B section (a sections-conditioned model)
    ... task=accompany,tracks=MELODY     # keep the melody (a name or a program), write the rest
    ... task=retrack,track=0             # rewrite the piano (program 0), keep the others
    make edit MODEL=BUNDLE INPUT=song.mid EDIT_ARGS=task=infill,bars=9-16

Variants name the LDM run (`ldm_workdir`) as experiments/sample.py's do (`lencond,cpu` reads
runs/ldm_lencond_cpu); `model=BUNDLE` replaces the runs. Scales set the sampler: (none) the
paper's DDPM-1000; `cpu` DPM-Solver++(2M) SDE-20; `runlocal` DDIM-4 (CI).
Options: `task` continue | infill | accompany | retrack, with `bars` (continue: bars in total;
infill: a-b), `keep_bars` (continue: bars kept, 0 = all), `section`, `tracks`, `track`;
`sections` (the song's labels, e.g. i4A8B8o4, for a sections-conditioned model when the input
has none); `sampler`, `steps`, `guidance_scale`, `clip`, `seed`; RePaint resampling:
`resample_repeats` (0: off), `resample_jump` (steps noised back), `resample_every`;
`wav` auto | yes | no; how the input is read (`quantize_step`, `track_choice`,
`normalize_key`: the settings the model's data was prepared with, prepare's defaults).
"""

from __future__ import annotations

import ml_collections

from experiments import sample as sample_experiment
from phrase_jax import run_names

VARIANT_GROUPS = sample_experiment.VARIANT_GROUPS
VARIANT_DEFAULTS = sample_experiment.VARIANT_DEFAULTS
VARIANTS = sample_experiment.VARIANTS
RUN_KIND = "edit"


def get_config(arg=None):
    chosen = sample_experiment.ldm_variants(arg, "experiments/edit.py")

    config = ml_collections.ConfigDict()
    config.stage = "edit"
    config.seed = 0
    config.input = ""  # the MIDI file to edit
    config.task = "infill"
    config.bars = ""  # infill: "a-b"; continue: the bars in total, e.g. "64"
    config.keep_bars = 0  # continue: bars kept from the start (0 = the whole input)
    config.section = ""  # infill: a section label ("B", "B2" the second B)
    config.tracks = ""  # accompany: tracks kept, names or programs ("MELODY", "13,0")
    config.track = ""  # retrack: the track rewritten
    config.sections = ""  # the song's sections when the input has no labels
    config.model = ""  # a bundle folder (make export, make import-official): replaces the runs
    config.ldm_workdir = run_names.run_dir("ldm", chosen.words)
    config.ldm_step = 0
    config.use_ema = True
    config.latents_dir = ""
    config.vae_workdir = ""
    config.sampler = "ddpm"
    config.steps = 1000
    config.guidance_scale = 1.0
    config.clip = -1.0  # -1 = the manifest's clip, 0 = none
    config.resample_repeats = 0  # RePaint: jumps back per resampling point (0 = off)
    config.resample_jump = 1  # steps noised back per jump
    config.resample_every = 1  # resampling points: after every this many steps
    config.decode_chunk = 512
    config.piano_roll = True
    config.wav = "auto"  # auto: when FluidSynth loads | yes (sine tones without it) | no
    config.synthesizer = "auto"
    config.sound_font = ""
    config.quantize_step = 3  # as experiments/prepare.py
    config.track_choice = "keep_drums"
    config.normalize_key = True
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1)))

    for scale in sample_experiment.SCALES:
        if scale in chosen:
            config.sampler, config.steps = sample_experiment.SCALE_SAMPLERS[scale]
    if "runlocal" in chosen:
        config.decode_chunk = 64
        config.wav = "no"
    return config
