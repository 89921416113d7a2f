"""A set of songs against real songs by their MIDI descriptors (`midi_descriptors`), no model.

- Overlapping area, per feature: sum over bins of min(p_b, q_b), p and q the two sets' shares of
  values in each bin; 1 for equal distributions, 0 for disjoint ones. Histograms on shared bins,
  not KDEs: notes and onsets per bar are small integers, where a kernel smears mass between
  values that cannot occur and its bandwidth moves the score; the real side is stored as counts
  on fixed edges (`real_statistics`), a few hundred numbers instead of every sample; and the
  result is exact and deterministic. The edges are the real set's quantiles (equal-mass bins,
  duplicates merged, so an integer feature gets one bin per common value) with open outer bins:
  every bin holds real data, and a value beyond the real range lands in an outer bin where real
  songs are rare. Per-bar features use `BAR_BINS` bins over all bars of a set, per-song features
  `SONG_BINS` over its songs (sets of tens of songs). NaN values (undefined) are left out.
- `mean_overlap`: the mean of the per-feature overlaps (the issue's target metric).
- `descriptor_fd`: the Fréchet distance between Gaussians fitted to the per-song descriptor
  vectors, each dimension standardised by the real set's mean and standard deviation (so no
  feature weighs more for its unit); songs with an undefined descriptor are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from phrase_jax.evaluation import fid
from phrase_jax.evaluation.midi_descriptors import (
    BAR_FEATURES,
    SONG_DESCRIPTORS,
    SONG_FEATURES,
    SongDescriptors,
)

BAR_BINS = 20
SONG_BINS = 10
# Every compared feature: the per-bar ones over bars, the per-song ones over songs.
FEATURES = BAR_FEATURES + SONG_FEATURES


def defined(values) -> np.ndarray:
    values = np.asarray(values, np.float64).reshape(-1)
    return values[~np.isnan(values)]


def histogram_edges(values, bins: int) -> np.ndarray:
    """Inner edges: the `bins`-quantiles of the defined `values`, duplicates merged ([0] when
    nothing is defined). Values below the first edge, between edges and from the last edge on
    fall in len(edges) + 1 bins."""
    values = defined(values)
    if values.size == 0:
        return np.zeros(1)
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))


def histogram(values, edges) -> np.ndarray:
    """[len(edges) + 1] counts of the defined `values` in the bins `histogram_edges` describes
    (a bin holds its lower edge)."""
    index = np.searchsorted(np.asarray(edges, np.float64), defined(values), side="right")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.float64)


def overlap(counts_a, counts_b) -> float:
    """Overlapping area of two count histograms on the same bins; NaN if either is empty."""
    a, b = np.asarray(counts_a, np.float64), np.asarray(counts_b, np.float64)
    if a.sum() <= 0 or b.sum() <= 0:
        return float("nan")
    return float(np.minimum(a / a.sum(), b / b.sum()).sum())


def feature_samples(descriptors: Sequence[SongDescriptors]) -> dict[str, np.ndarray]:
    """feature -> its values over the set: a per-bar feature over every bar of every song, a
    per-song feature over the songs."""
    bars = [d.bars_bf for d in descriptors if len(d.bars_bf)]
    bars_bf = np.concatenate(bars) if bars else np.zeros((0, len(BAR_FEATURES)))
    songs = np.array([d.song for d in descriptors]).reshape(-1, len(SONG_FEATURES))
    samples = {name: bars_bf[:, i] for i, name in enumerate(BAR_FEATURES)}
    samples.update({name: songs[:, i] for i, name in enumerate(SONG_FEATURES)})
    return samples


def song_vectors(descriptors: Sequence[SongDescriptors]) -> np.ndarray:
    """[n_songs, len(SONG_DESCRIPTORS)] per-song descriptor vectors (NaN where undefined)."""
    return np.array([d.vector for d in descriptors]).reshape(-1, len(SONG_DESCRIPTORS))


def standardised_frechet(vectors_nd, real_vectors_md, mean_d, std_d) -> tuple[float, int]:
    """(Fréchet distance, songs used) between the fully defined rows of two descriptor tables,
    each standardised by (`mean_d`, `std_d`) (a zero std counts as 1); NaN if either side has
    fewer than 2 such rows."""
    std_d = np.where(np.asarray(std_d) > 0, std_d, 1.0)

    def usable(table):
        table = np.asarray(table, np.float64).reshape(-1, len(mean_d))
        return (table[~np.isnan(table).any(axis=1)] - mean_d) / std_d

    ours, real = usable(vectors_nd), usable(real_vectors_md)
    if len(ours) < 2 or len(real) < 2:
        return float("nan"), len(ours)
    return fid.fid_from_samples(ours, real), len(ours)


def compare(descriptors: Sequence[SongDescriptors], real) -> dict[str, float]:
    """The row of a set against `real` (a `real_statistics.RealStatistics`): `overlap_<feature>`
    for each of `FEATURES`, `mean_overlap` (over the defined ones), `descriptor_fd`, and the
    counts `songs`, `bars`, `fd_songs` (songs whose descriptors are all defined)."""
    samples = feature_samples(descriptors)
    row: dict[str, float] = {
        "songs": len(descriptors),
        "bars": int(sum(len(d.bars_bf) for d in descriptors)),
    }
    overlaps = []
    for name in FEATURES:
        value = overlap(histogram(samples[name], real.edges[name]), real.counts[name])
        row[f"overlap_{name}"] = value
        overlaps.append(value)
    finite = [v for v in overlaps if np.isfinite(v)]
    row["mean_overlap"] = float(np.mean(finite)) if finite else float("nan")
    row["descriptor_fd"], row["fd_songs"] = standardised_frechet(
        song_vectors(descriptors), real.song_vectors, real.mean, real.std
    )
    return row


def mean_rows(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of several rows (NaN values skipped), with `<key>_std` for the overlaps and
    the distance: the ceiling averaged over draws and how much the draws differ."""
    out: dict[str, float] = {}
    for key in rows[0]:
        values = defined([row[key] for row in rows])
        out[key] = float(values.mean()) if values.size else float("nan")
        if key.startswith("overlap_") or key in ("mean_overlap", "descriptor_fd"):
            out[f"{key}_std"] = float(values.std()) if values.size else float("nan")
    out["draws"] = len(rows)
    return out
