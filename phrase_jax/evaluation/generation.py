"""Generation metrics (SPEC 7): length accuracy, latent diversity, and one call for every
latent-space metric of a generated set.

The metrics live in their own modules: `fid` (PhraseFID, n-gram FIDs), `structure` (SRS),
`memorisation` (melody WER, T2R, MR) and `note_stats` (note statistics of `Song`s). This module
adds length accuracy and diversity and `latent_generation_metrics`, which an evaluation stage
calls with the sampler's latents.

Length accuracy: a song's length bucket is floor(n_bars / 10) (the LDM's length condition), so
conditioning on 64 bars asks for 60 <= n_bars < 70; "exact" asks for n_bars itself.
Diversity: `song_diversity` is the mean pairwise L2 distance between mean-pooled song latents
(how different whole songs are); `phrase_spread` is the mean pairwise L2 distance between all
phrase latents of the set (the ref's `compute_diversity`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from phrase_jax.evaluation import fid, structure
from phrase_jax.music.sections import length_bucket  # the LDM's length condition, one rule


def length_accuracy(
    generated_n_bars: Sequence[int], target_n_bars: int | Sequence[int]
) -> dict[str, float]:
    """Fractions of songs in the target's bucket and of exactly the target length, and the mean
    absolute bar error. `target_n_bars` is one length for all songs or one per song."""
    generated = np.asarray(generated_n_bars, np.int64)
    target = np.broadcast_to(np.asarray(target_n_bars, np.int64), generated.shape)
    if generated.size == 0:
        raise ValueError("length_accuracy: no generated songs given")
    return {
        "length_bucket_accuracy": float((length_bucket(generated) == length_bucket(target)).mean()),
        "length_exact_accuracy": float((generated == target).mean()),
        "mean_abs_bar_error": float(np.abs(generated - target).mean()),
    }


def mean_pairwise_distance(points_nd: np.ndarray, chunk: int = 1024) -> float:
    """Mean L2 distance over all pairs i < j of [N, D] points (0 for N < 2); O(chunk * N)
    memory, so tens of thousands of phrase latents fit."""
    points_nd = np.asarray(points_nd, np.float64)
    n = points_nd.shape[0]
    if n < 2:
        return 0.0
    squared_norms = (points_nd**2).sum(axis=1)
    total = 0.0
    for start in range(0, n, chunk):
        block = points_nd[start : start + chunk]
        squared = (
            squared_norms[start : start + chunk, None]
            + squared_norms[None]
            - 2 * (block @ points_nd.T)
        )
        distances = np.sqrt(np.clip(squared, 0.0, None))
        rows = np.arange(block.shape[0])
        distances[rows, start + rows] = 0.0  # the self-distance is exactly 0, not round-off
        total += distances.sum()
    return float(total / (n * (n - 1)))  # every unordered pair was summed twice


def song_diversity(songs: Sequence[np.ndarray]) -> float:
    """Mean pairwise L2 distance between the mean latents of [T_i, D] songs."""
    non_empty = [np.asarray(song, np.float64) for song in songs if len(song)]
    if not non_empty:
        raise ValueError("song_diversity: no non-empty songs given")
    return mean_pairwise_distance(np.stack([song.mean(axis=0) for song in non_empty]))


def phrase_spread(songs: Sequence[np.ndarray]) -> float:
    """Mean pairwise L2 distance between all phrase latents of [T_i, D] songs."""
    if not songs:
        raise ValueError("phrase_spread: no songs given")
    return mean_pairwise_distance(np.concatenate([np.asarray(s, np.float64) for s in songs]))


def latent_generation_metrics(
    generated_latents: np.ndarray | Sequence[np.ndarray],
    generated_n_bars: Sequence[int],
    reference_songs: Sequence[np.ndarray],
    *,
    target_n_bars: int | Sequence[int] | None = None,
    slots_per_bar: int = 4,
    fid_orders: Sequence[int] = fid.DEFAULT_ORDERS,
    srs_threshold: float = structure.DEFAULT_THRESHOLD,
    srs_min_run: int = structure.DEFAULT_MIN_RUN,
) -> dict[str, float]:
    """Every latent-space metric of a generated set, in VAE space (unscaled latents).

    generated_latents: [N, S, D] sampler output (or N arrays [S_i, D]); only the first
    slots_per_bar * n_bars slots of each song count. reference_songs: trimmed [T_i, D] real
    songs (ref: 100 training songs). Returns PhraseFID and n-gram FIDs, mean SRS of the
    generated and of the reference songs, song diversity and phrase spread, and, given
    `target_n_bars`, length accuracy.
    """
    generated = fid.trim_songs(generated_latents, generated_n_bars, slots_per_bar)
    metrics = fid.ngram_fids(generated, reference_songs, fid_orders)
    srs_args = (slots_per_bar, srs_threshold, srs_min_run)
    non_empty = [song for song in generated if len(song)]
    metrics["srs"] = (
        structure.mean_section_recurrence_score(non_empty, *srs_args) if non_empty else 0.0
    )
    metrics["reference_srs"] = structure.mean_section_recurrence_score(reference_songs, *srs_args)
    metrics["song_diversity"] = song_diversity(generated)
    metrics["phrase_spread"] = phrase_spread(generated)
    metrics["mean_n_bars"] = float(np.mean(generated_n_bars))
    if target_n_bars is not None:
        metrics.update(length_accuracy(generated_n_bars, target_n_bars))
    return metrics
