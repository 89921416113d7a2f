"""The metrics of one row of the evaluation table (SPEC 7): a set of songs as latents and as
`Song`s, measured against reference latents and training melodies. Undefined metrics (too few
songs, no bars) are NaN, never an error."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from phrase_jax.evaluation import fid, generation, memorisation, note_stats, structure
from phrase_jax.music.events import Song


@dataclasses.dataclass(frozen=True)
class MetricSettings:
    slots_per_bar: int = 4
    fid_orders: tuple[int, ...] = fid.DEFAULT_ORDERS
    srs_threshold: float = structure.DEFAULT_THRESHOLD
    srs_min_run: int = structure.DEFAULT_MIN_RUN
    melody_program: int = memorisation.MELODY_PROGRAM


@dataclasses.dataclass
class SongSet:
    """The songs of one table row. `latents`: per song [slots_per_bar * n_bars_i, D] unscaled
    VAE latents; `songs`: the same songs as `Song`s; `target_bars`: the length asked for
    (generated rows; None for real songs); `info`: provenance written with the row."""

    name: str
    kind: str  # real | generated | comparison
    latents: list[np.ndarray]
    songs: list[Song]
    target_bars: int | None = None
    info: dict = dataclasses.field(default_factory=dict)


def _nan_unless(defined: bool, compute) -> float:
    return float(compute()) if defined else float("nan")


def evaluate_set(
    song_set: SongSet,
    reference: Sequence[np.ndarray],
    training_melodies: Sequence[Sequence[int]],
    settings: MetricSettings,
) -> dict[str, float]:
    """Every SPEC 7 metric of one set: PhraseFID and n-gram FIDs vs `reference` (trimmed
    [T_i, D] songs), mean SRS, MR vs `training_melodies`, length accuracy (when the set has a
    target), song diversity and phrase spread, and the mean note statistics."""
    spb = settings.slots_per_bar
    latents, songs = song_set.latents, song_set.songs
    n_bars = [len(x) // spb for x in latents]
    metrics: dict[str, float] = {"songs": len(songs), "mean_n_bars": float(np.mean(n_bars))}
    for n in settings.fid_orders:
        key = "phrase_fid" if n == 1 else f"fid_{n}gram"
        enough = (
            bool(reference)
            and bool(latents)
            and min(len(fid.ngram_vectors(s, n)) for s in (latents, reference)) >= 2
        )  # no reference: a bundle evaluated where its data are absent
        metrics[key] = _nan_unless(enough, lambda n=n: fid.phrase_fid(latents, reference, n))
    with_bars = [x for x in latents if len(x)]
    metrics["srs"] = _nan_unless(
        bool(with_bars),
        lambda: structure.mean_section_recurrence_score(
            with_bars, spb, settings.srs_threshold, settings.srs_min_run
        ),
    )
    melodies = memorisation.song_melodies(songs, settings.melody_program)
    if len(training_melodies) >= 2:
        result = memorisation.memorisation(melodies, training_melodies)
        metrics.update(result.summary())
    else:
        metrics.update(memorisation_rate=np.nan, mean_t2r=np.nan, mean_max_similarity=np.nan)
    metrics["melody_songs"] = sum(bool(m) for m in melodies)
    if song_set.target_bars is not None:
        metrics.update(generation.length_accuracy(n_bars, song_set.target_bars))
    metrics["song_diversity"] = _nan_unless(  # a distance between songs needs two songs
        len(with_bars) >= 2, lambda: generation.song_diversity(with_bars)
    )
    metrics["phrase_spread"] = _nan_unless(
        sum(map(len, latents)) >= 2, lambda: generation.phrase_spread(with_bars)
    )
    songs_with_bars = [s for s in songs if s.bars]
    if songs_with_bars:
        metrics.update(note_stats.mean_note_statistics(songs_with_bars))
    else:
        metrics.update(dict.fromkeys(note_stats.STATISTICS, float("nan")))
    return metrics
