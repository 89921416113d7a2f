"""Prepare a dataset: MIDI -> tokens -> ArrayRecord shards + manifest.json (docs/design.md,
"Prepared data"). The workdir is the prepared data folder the training stages read.

    python -m phrase_jax.main --config experiments/prepare.py:pop909,input_dir=/data/pop909 \
        --workdir data/pop909
    python -m phrase_jax.main --config experiments/prepare.py:chorales --workdir data/chorales
    python -m phrase_jax.main --config experiments/prepare.py:midi,input_dir=/data/my_midi \
        --workdir data/my_midi
    make data  /  make data-chorales

Variants: a dataset, `pop909` (default; needs `input_dir`, the folder of NNN/ song folders),
`chorales` (the Bach chorales shipped with music21, no input) or `midi` (any folder of MIDI
files, searched recursively; needs `input_dir`); and `runlocal` (the first 4 songs, one worker).

Every MIDI file is read in a worker process within `read_limits` (checked before the expensive
work) and `job_limits` (wall time and memory per file), so one bad file costs only itself; each
rejected file is listed in manifest.json with a one-line reason, and dropped notes are counted
by reason per song. The stage fails (non-zero exit) when no song loads.

`settings.reading`: `default` (bars from the MIDI's meter, or for POP909 from `beat_midi.txt`
downbeats; 16th notes; drums kept) or `remiz` (token for token what the reference tokenizer
REMI-z reads; `remiz_reading.load_song_remiz(path)` is the same reading for one file). POP909
stays on `default`: the reference's POP909 songs were rebuilt from 16th-note phrase piano rolls
(PhraseLDM_code `data_preprocess/POP909/pop909_longshen.py`) whose bars are the section labels'
bars; the downbeat annotations give those barlines in 556 of 909 songs, REMI-z's reading of
POP909's own MIDI ticks in 48 (docs/results.md, issue 11).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from data_pipelines import datasets, isolated_workers
from phrase_jax import run_names
from phrase_jax.music import midi_limits

DATASETS = ("pop909", "chorales", "midi")
VARIANT_GROUPS = (DATASETS, ("runlocal",))
VARIANT_DEFAULTS = ("pop909",)
VARIANTS = run_names.variant_words(VARIANT_GROUPS)


def get_config(arg=None):
    chosen = run_names.parse_variants(
        arg, VARIANT_GROUPS, defaults=VARIANT_DEFAULTS, source="experiments/prepare.py"
    )
    dataset = chosen.pick(DATASETS)
    defaults = datasets.DatasetSettings()

    config = ml_collections.ConfigDict()
    config.stage = "prepare"
    config.dataset = dataset
    config.input_dir = ""  # pop909: the POP909 folder; midi: the MIDI folder; chorales: unused
    config.workers = 0  # reading processes; 0 = all cores (capped by job_limits.memory_mb)
    config.limit = 0  # only the first N songs by name; 0 = all
    config.songs = ""  # comma-separated song names to prepare; "" = all
    config.settings = ml_collections.ConfigDict(
        dict(
            quantize_step=defaults.quantize_step,  # 3 = 16th notes on the 12-per-quarter grid
            normalize_key=defaults.normalize_key,
            trim_silent_bars=defaults.trim_silent_bars,
            slots_per_bar=0,  # LDM layout width; 0 = the dataset's (pop909 4, chorales 5, midi 4)
            track_choice=defaults.track_choice,  # pitch_order (ref) | keep_drums | most_notes
            reading=defaults.reading,  # default | remiz (token for token the REMI-z reading)
            with_velocity=defaults.with_velocity,
            max_bars=defaults.max_bars,  # longer songs stay in the VAE corpus only
            section_rule=defaults.section_rule,  # POP909 labels: exact | trim | none
            section_slack=defaults.section_slack,
        )
    )
    config.read_limits = ml_collections.ConfigDict(dataclasses.asdict(midi_limits.ReadLimits()))
    config.job_limits = ml_collections.ConfigDict(dataclasses.asdict(isolated_workers.JobLimits()))
    config.output = ml_collections.ConfigDict(
        dict(seed=42, valid_fraction=0.05, test_fraction=0.05, records_per_shard=100_000)
    )
    if "runlocal" in chosen:
        config.limit = 4
        config.workers = 1
    return config
