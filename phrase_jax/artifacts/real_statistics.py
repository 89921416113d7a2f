"""The stored statistics of a real song set: what `descriptor_comparison.compare` needs of the
real side, so songs can be measured where the real songs are absent (a bundle, a shipped model).

real_statistics.json (FORMAT_VERSION 1), written atomically:
  format, format_version
  features          {name: {"edges": inner bin edges, "counts": real counts per bin}} for every
                    `descriptor_comparison.FEATURES` (len(counts) = len(edges) + 1)
  song_descriptors  {"names": SONG_DESCRIPTORS, "vectors": one list per real song (null where
                    undefined), "mean", "std": per dimension over the defined values}
  settings          {"recurrence_threshold", "onset_bins", "bar_bins", "song_bins"}: how the
                    descriptors and bins were made; loading refuses other values
  source            free-form: {"data_dir", "splits", "songs", "bars", "created", ...}
  ceiling           the row of other real songs against these statistics, averaged over draws
                    (`descriptor_comparison.mean_rows`, with "name"), or null
It is small (a few hundred numbers plus one vector per real song): a bundle carries one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Sequence

import numpy as np

from phrase_jax import errors
from phrase_jax.artifacts import run_dir
from phrase_jax.evaluation import descriptor_comparison as comparison
from phrase_jax.evaluation import midi_descriptors
from phrase_jax.evaluation.midi_descriptors import SONG_DESCRIPTORS, SongDescriptors

FORMAT = "phrase_jax.real_statistics"
FORMAT_VERSION = 1
FILE_NAME = "real_statistics.json"


def current_settings() -> dict:
    return {
        "recurrence_threshold": midi_descriptors.RECURRENCE_THRESHOLD,
        "onset_bins": midi_descriptors.ONSET_BINS,
        "bar_bins": comparison.BAR_BINS,
        "song_bins": comparison.SONG_BINS,
    }


@dataclasses.dataclass(frozen=True)
class RealStatistics:
    """In memory: `edges` / `counts` feature -> array; `song_vectors` [n, len(SONG_DESCRIPTORS)]
    with NaN where undefined; `mean` / `std` [len(SONG_DESCRIPTORS)]."""

    edges: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    song_vectors: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    source: dict
    ceiling: dict | None = None


def build(descriptors: Sequence[SongDescriptors], source: dict) -> RealStatistics:
    """The statistics of real songs' descriptors; `source` says where they came from."""
    if len(descriptors) < 2:
        raise errors.UserError(
            f"real statistics from {source.get('data_dir') or 'the real songs'}: "
            f"{len(descriptors)} song(s); at least 2 are needed (set real_splits)"
        )
    samples = comparison.feature_samples(descriptors)
    edges, counts = {}, {}
    for name in comparison.FEATURES:
        bins = (
            comparison.BAR_BINS if name in midi_descriptors.BAR_FEATURES else comparison.SONG_BINS
        )
        edges[name] = comparison.histogram_edges(samples[name], bins)
        counts[name] = comparison.histogram(samples[name], edges[name])
    vectors = comparison.song_vectors(descriptors)
    mean = np.array([np.mean(comparison.defined(c)) if comparison.defined(c).size else 0.0
                     for c in vectors.T])  # fmt: skip
    std = np.array([np.std(comparison.defined(c)) if comparison.defined(c).size else 1.0
                    for c in vectors.T])  # fmt: skip
    source = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "songs": len(descriptors),
        "bars": int(sum(len(d.bars_bf) for d in descriptors)),
        **source,
    }
    return RealStatistics(edges, counts, vectors, mean, std, source)


def with_ceiling(
    stats: RealStatistics, draws: Sequence[Sequence[SongDescriptors]], name: str
) -> RealStatistics:
    """`stats` with its ceiling row: each draw of other real songs compared with `stats`, the
    rows averaged (and their spread kept)."""
    rows = [comparison.compare(draw, stats) for draw in draws if len(draw)]
    if not rows:
        return stats
    return dataclasses.replace(stats, ceiling={"name": name, **comparison.mean_rows(rows)})


def _nullable(values) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values).reshape(-1)]


def _numbers(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)


def to_json(stats: RealStatistics) -> dict:
    ceiling = None
    if stats.ceiling is not None:
        ceiling = {k: (v if isinstance(v, str) else _nullable([v])[0])
                   for k, v in stats.ceiling.items()}  # fmt: skip
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "features": {
            name: {"edges": _nullable(stats.edges[name]), "counts": _nullable(stats.counts[name])}
            for name in comparison.FEATURES
        },
        "song_descriptors": {
            "names": list(SONG_DESCRIPTORS),
            "vectors": [_nullable(row) for row in stats.song_vectors],
            "mean": _nullable(stats.mean),
            "std": _nullable(stats.std),
        },
        "settings": current_settings(),
        "source": stats.source,
        "ceiling": ceiling,
    }


def save(stats: RealStatistics, path: str) -> str:
    """Writes `path` (a .json file) atomically; returns it."""
    path = os.path.abspath(path)
    run_dir.write_json_atomic(path, to_json(stats))
    return path


def from_json(content: dict, what: str) -> RealStatistics:
    """The in-memory statistics of a real_statistics.json dict; `what` names it in errors."""
    if content.get("format") != FORMAT:
        raise errors.UserError(f"{what}: format {content.get('format')!r}, not {FORMAT}")
    if content.get("format_version") != FORMAT_VERSION:
        raise errors.UserError(
            f"{what}: format_version {content.get('format_version')!r}; this phrase_jax reads "
            f"version {FORMAT_VERSION}: rebuild the statistics (make eval-midi) or update"
        )
    if content.get("settings") != current_settings():
        raise errors.UserError(
            f"{what}: made with descriptor settings {content.get('settings')}, this phrase_jax "
            f"uses {current_settings()}; rebuild the statistics from the data (make eval-midi)"
        )
    descriptors = content["song_descriptors"]
    if list(descriptors["names"]) != list(SONG_DESCRIPTORS):
        raise errors.UserError(f"{what}: descriptors {descriptors['names']}; rebuild it")
    features = content["features"]
    missing = [name for name in comparison.FEATURES if name not in features]
    if missing:
        raise errors.UserError(f"{what}: lacks features {missing}; rebuild it")
    ceiling = content.get("ceiling")
    if ceiling is not None:
        ceiling = {k: (v if isinstance(v, str) else _numbers([v])[0]) for k, v in ceiling.items()}
    vectors = [_numbers(row) for row in descriptors["vectors"]]
    return RealStatistics(
        edges={n: _numbers(features[n]["edges"]) for n in comparison.FEATURES},
        counts={n: _numbers(features[n]["counts"]) for n in comparison.FEATURES},
        song_vectors=np.array(vectors).reshape(-1, len(SONG_DESCRIPTORS)),
        mean=_numbers(descriptors["mean"]),
        std=_numbers(descriptors["std"]),
        source=dict(content.get("source", {})),
        ceiling=ceiling,
    )


def load(path: str) -> RealStatistics:
    """real_statistics.json at `path` (a file, or a folder holding FILE_NAME), checked."""
    file = os.path.join(path, FILE_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise errors.UserError(
            f"{file} not found: give a real_statistics.json (written by make eval / make "
            "eval-midi into their output folder) or a bundle exported with its data"
        )
    try:
        with open(file) as f:
            content = json.load(f)
    except ValueError as error:
        raise errors.UserError(f"{file}: not valid JSON ({error}); rebuild it") from None
    try:
        return from_json(content, file)
    except (KeyError, TypeError) as error:
        raise errors.UserError(f"{file}: malformed ({error!r}); rebuild it") from None
