"""Evaluate folders of MIDI files without a model (issue 13.3): per-bar and per-song MIDI
descriptors against held-out real songs, with the real-vs-real ceiling.

    python -m phrase_jax.main --workdir runs/eval_midi \
        --config experiments/evaluate_midi.py:midi_dirs=outputs/demo/songs,data_dir=data/pop909
    python -m phrase_jax.main --workdir runs/eval_midi \
        --config experiments/evaluate_midi.py:midi_dirs=a/:b/,real_statistics=bundles/x
    make eval-midi MIDI_DIRS=a/:b/ [STATS=bundles/x or path/to/real_statistics.json]

The workdir is the output folder (midi_metrics.json, midi_metrics.md, config.json and the
real_statistics.json it compared with). `midi_dirs`: folders joined by ':', one table row each
(every .mid/.midi under it, read at `midi_quantize_step`: 3 = 16th notes, as the prepared data).
`real_statistics`: a real_statistics.json (make eval and make eval-midi write one), a folder
holding one, or a bundle exported with its data; "" = built from the prepared `data_dir`'s
`real_splits` songs (the ceiling from draws of its training songs).
"""

from __future__ import annotations

import ml_collections

RUN_KIND = "eval_midi"


def get_config(arg=None):
    del arg  # no variants: everything is a key
    config = ml_collections.ConfigDict()
    config.stage = "evaluate_midi"
    config.seed = 0  # the ceiling's draws of training songs
    config.midi_dirs = ""  # MIDI folders joined by ':', one row each
    config.real_statistics = ""  # a real_statistics.json, a folder holding one, or a bundle
    config.data_dir = "data/pop909"  # prepared data, when real_statistics is ""
    config.real_splits = ("valid", "test")
    config.midi_quantize_step = 3
    return config
