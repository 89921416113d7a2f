"""A sample workdir: one song_NNN.mid (+ .png, .wav) per song and samples.json.

    song_000.mid  song_000.png  ...  samples.json  config.json

A new sampling run replaces the songs of an earlier one in the same folder (`clear`), so the
folder never mixes songs of two runs; samples.json describes exactly the songs present.
"""

from __future__ import annotations

import glob
import json
import os

from phrase_jax.artifacts import run_dir

SAMPLES_JSON = "samples.json"
SONG_PREFIX = "song_"


def song_file_stem(index: int) -> str:
    """`song_007` for song 7: the name every output of one song shares."""
    return f"{SONG_PREFIX}{index:03d}"


def clear(out_dir: str) -> list[str]:
    """Removes an earlier run's song files and samples.json from `out_dir` (nothing else);
    returns the names removed."""
    removed = []
    stale = glob.glob(os.path.join(glob.escape(out_dir), f"{SONG_PREFIX}*.*"))
    for file in sorted(stale) + [os.path.join(out_dir, SAMPLES_JSON)]:
        if os.path.isfile(file):
            os.remove(file)
            removed.append(os.path.basename(file))
    return removed


def write(out_dir: str, stats: dict) -> None:
    """samples.json (process 0), written after the song files it lists."""
    run_dir.write_json_atomic(os.path.join(out_dir, SAMPLES_JSON), stats)


def read(out_dir: str) -> dict:
    file = os.path.join(out_dir, SAMPLES_JSON)
    if not os.path.exists(file):
        raise run_dir.MissingArtifact(f"{file} not found: run the sample stage into {out_dir}")
    with open(file) as f:
        return json.load(f)
