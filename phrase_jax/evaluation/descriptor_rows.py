"""The model-independent table (issue 13.3): sets of songs, each described by its MIDI alone
(`midi_descriptors`) and compared with the stored statistics of held-out real songs
(`artifacts/real_statistics`, `descriptor_comparison`).

    stats = statistics_for(real_statistics="", data_dir="data/pop909", splits=("valid", "test"))
    rows = [song_row("generated", "generated", songs, stats), ceiling_row(stats),
            *folder_rows(["other_system/"], stats)]

Where the real statistics come from, first match wins: a stored file (`real_statistics=`),
a bundle's copy when the data are absent or it was built from the same data and splits, the
prepared data (held-out `splits`; the ceiling from draws of training songs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
from absl import logging

from data_pipelines import sources
from phrase_jax import errors
from phrase_jax.artifacts import bundle, real_statistics
from phrase_jax.evaluation import descriptor_comparison, midi_descriptors
from phrase_jax.music import layout, midi_io
from phrase_jax.music.events import Song

CEILING_SONGS = 20  # the reference's 20 songs per model: the ceiling at the size of a row
CEILING_DRAWS = 5


def prepared_songs(data_dir: str, split: str, rows: Sequence[int] | None = None) -> list[Song]:
    """The `Song`s of a prepared split (those of record `rows` only, when given), assembled
    from their slots: the songs the models see."""
    slots_per_bar = sources.read_manifest(data_dir)["settings"]["slots_per_bar"]
    records = sources.read_songs(data_dir, split)
    if rows is not None:  # assembling is the slow part (about 0.1 s a POP909 song)
        records = [records[i] for i in rows]
    return [
        layout.assemble_song(record["slots"], slots_per_bar, name=record["name"])[0]
        for record in records
    ]


def from_prepared_data(
    data_dir: str,
    splits: Sequence[str],
    *,
    ceiling_split: str = "train",
    ceiling_songs: int = CEILING_SONGS,
    ceiling_draws: int = CEILING_DRAWS,
    seed: int = 0,
) -> real_statistics.RealStatistics:
    """The statistics of the prepared songs of `splits`, with the ceiling of `ceiling_draws`
    disjoint seeded draws of `ceiling_songs` songs of `ceiling_split` (fewer draws when the split
    is short; no ceiling when it is empty, one of `splits`, or ceiling_songs is 0)."""
    held_out = [midi_descriptors.describe(s) for split in splits
                for s in prepared_songs(data_dir, split)]  # fmt: skip
    source = {"data_dir": os.path.abspath(data_dir), "splits": list(splits)}
    stats = real_statistics.build(held_out, source)
    if ceiling_songs < 1 or ceiling_split in splits:
        return stats
    total = len(sources.read_songs(data_dir, ceiling_split))
    if not total:
        return stats
    draws = max(1, min(ceiling_draws, total // ceiling_songs))
    order = np.random.default_rng(seed).permutation(total)[: draws * ceiling_songs]
    songs = [midi_descriptors.describe(s) for s in prepared_songs(data_dir, ceiling_split, order)]
    described = [songs[i * ceiling_songs : (i + 1) * ceiling_songs] for i in range(draws)]
    name = (
        f"real {ceiling_split} songs ({len(described[0])} a draw, mean of {draws} draws): ceiling"
    )
    return real_statistics.with_ceiling(stats, described, name)


def statistics_for(
    *,
    real_statistics_path: str = "",
    data_dir: str = "",
    splits: Sequence[str] = ("valid", "test"),
    bundle_path: str = "",
    seed: int = 0,
) -> real_statistics.RealStatistics:
    """The real statistics to compare with (see the module docstring); a UserError naming the
    keys when none can be had."""
    if real_statistics_path:
        return real_statistics.load(real_statistics_path)
    stored = None
    if bundle_path:
        stored = bundle.read_real_statistics(bundle_path, bundle.read_meta(bundle_path))
    have_data = bool(data_dir) and os.path.isfile(os.path.join(data_dir, "manifest.json"))
    # The bundle's copy serves when it describes these very songs: it saves building them
    # again (about a minute on POP909), and it is all there is where the data are absent.
    if stored is not None and (
        not have_data
        or (
            stored.source.get("data_dir") == os.path.abspath(data_dir)
            and list(stored.source.get("splits", [])) == list(splits)
        )
    ):
        return stored
    if have_data:
        started = time.monotonic()
        stats = from_prepared_data(data_dir, splits, seed=seed)
        logging.info(
            "real statistics of %d songs of %s in %.1f s",
            stats.source["songs"], data_dir, time.monotonic() - started,
        )  # fmt: skip
        return stats
    raise errors.UserError(
        f"no real songs to compare with: data_dir={data_dir!r} holds no prepared data (make "
        "data), real_statistics is unset and no bundle with stored statistics is named; give "
        "data_dir=data/pop909 or real_statistics=path/to/real_statistics.json"
    )


def song_row(name: str, kind: str, songs: Sequence[Song], stats, info=None) -> dict:
    """One table row: `descriptor_comparison.compare` of `songs` against `stats`."""
    described = [midi_descriptors.describe(song) for song in songs]
    metrics = descriptor_comparison.compare(described, stats)
    return {"name": name, "kind": kind, "metrics": metrics, "info": dict(info or {})}


def ceiling_row(stats) -> dict | None:
    """The real-vs-real row stored with the statistics, or None when they hold none."""
    if stats.ceiling is None:
        return None
    metrics = {k: v for k, v in stats.ceiling.items() if k != "name"}
    return {"name": stats.ceiling["name"], "kind": "ceiling", "metrics": metrics, "info": {}}


def split_folders(folders: str | Sequence[str]) -> list[str]:
    """A config value of MIDI folders: a sequence, or one string of paths joined by ':'."""
    if isinstance(folders, str):
        folders = folders.split(os.pathsep)
    return [str(folder) for folder in folders if str(folder)]


def check_folders(folders: Sequence[str], key: str) -> None:
    """Each folder exists and holds a MIDI file (config `key` names them)."""
    for folder in folders:
        if not os.path.isdir(folder):
            raise errors.UserError(f"config {key}: {folder} is not a folder; give MIDI folders")
        if not midi_descriptors.midi_files(folder):
            raise errors.UserError(f"config {key}: {folder} holds no .mid/.midi file")


def folder_row(folder: str, stats, quantize_step: int = 3) -> dict:
    """The row of every MIDI file under `folder` (its path names the row); a file that cannot
    be read is skipped, logged and counted in the row's info."""
    songs, unreadable = [], []
    for path in midi_descriptors.midi_files(folder):
        try:
            songs.append(midi_descriptors.read_song(path, quantize_step))
        except midi_io.MidiReadError as error:
            logging.warning("skipped: %s", error)
            unreadable.append(os.path.relpath(path, folder))
    info = {"folder": os.path.abspath(folder), "unreadable": unreadable}
    return song_row(os.path.abspath(folder), "midi folder", songs, stats, info)


def folder_rows(folders: Sequence[str], stats, quantize_step: int = 3) -> list[dict]:
    return [folder_row(folder, stats, quantize_step) for folder in folders]
