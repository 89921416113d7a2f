"""Note statistics of `Song`s, generated vs real (SPEC 7).

Per song, on the 12-per-quarter grid with bars laid end to end (a note keeps its full duration
across barlines, cut at the song's end):
- `notes_per_bar`: all notes (drums included) / bars.
- `polyphony`: mean number of pitched notes sounding at once, over the grid positions where at
  least one pitched note sounds.
- `pitch_class_entropy`: Shannon entropy in bits (log2) of the pitch-class histogram of note
  counts; 12 equally used pitch classes give log2(12) ~ 3.585.
- `scale_consistency`: largest fraction of notes inside one scale, over the 24 major and natural
  minor scales.
- `groove_consistency`: 1 - mean over consecutive bar pairs of (number of grid positions where
  exactly one of the two bars has an onset) / (the longer bar's length); drums included.
- `empty_beat_rate`: fraction of beats (quarter notes; a bar of L positions has ceil(L / 12)) in
  which no note of any track sounds or starts.
Drums are left out of polyphony, pitch-class entropy and scale consistency. A statistic that a
song cannot define (no pitched note; fewer than 2 bars for groove) is NaN and the set means skip
it. Set values are means of the per-song values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from phrase_jax.music import keys, vocab
from phrase_jax.music.events import Song

STATISTICS = (
    "notes_per_bar",
    "polyphony",
    "pitch_class_entropy",
    "scale_consistency",
    "groove_consistency",
    "empty_beat_rate",
)
_BEAT = vocab.POSITIONS_PER_QUARTER
_SCALES = keys.key_templates() > 0  # [24, 12] scale membership: the templates' positive degrees


def sounding_counts(intervals: list[tuple[int, int]], length: int) -> np.ndarray:
    """[length] number of (start, end) intervals covering each grid position."""
    delta = np.zeros(length + 1, np.int64)
    for start, end in intervals:
        start, end = min(start, length), min(end, length)
        delta[start] += 1
        delta[end] -= 1
    return np.cumsum(delta[:-1])


def pitch_class_entropy(pitch_class_counts: np.ndarray) -> float:
    """Entropy in bits of a [12] count histogram; NaN when it is all zeros."""
    total = pitch_class_counts.sum()
    if total <= 0:
        return float("nan")
    p = pitch_class_counts[pitch_class_counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def scale_consistency(pitch_class_counts: np.ndarray) -> float:
    """Largest in-scale fraction of a [12] count histogram over 24 keys; NaN when empty."""
    total = pitch_class_counts.sum()
    if total <= 0:
        return float("nan")
    return float((_SCALES @ pitch_class_counts).max() / total)


def groove_consistency(onset_sets: Sequence[set[int]], lengths: Sequence[int]) -> float:
    """1 - mean over consecutive bar pairs of |onsets of one bar xor the other's| / the longer
    bar's length; NaN for fewer than 2 bars."""
    if len(onset_sets) < 2:
        return float("nan")
    distances = [
        len(a ^ b) / max(la, lb)
        for a, b, la, lb in zip(onset_sets, onset_sets[1:], lengths, lengths[1:], strict=False)
    ]
    return 1.0 - float(np.mean(distances))


def note_statistics(song: Song) -> dict[str, float]:
    """The six statistics of one song (see the module docstring)."""
    if not song.bars:
        raise ValueError(f"note_statistics: song {song.name!r} has no bars")
    lengths = [bar.length for bar in song.bars]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total_length = int(offsets[-1])
    pitched, everything = [], []
    pitch_class_counts = np.zeros(12)
    onset_sets = []
    n_notes = 0
    for bar, offset in zip(song.bars, offsets[:-1], strict=True):
        onsets = set()
        for program, notes in bar.tracks.items():
            for note in notes:
                start = int(offset) + note.onset
                interval = (start, start + max(note.duration, 1))
                everything.append(interval)
                onsets.add(note.onset)
                n_notes += 1
                if program != vocab.DRUM_PROGRAM:
                    pitched.append(interval)
                    pitch_class_counts[note.pitch % 12] += 1
        onset_sets.append(onsets)

    pitched_counts = sounding_counts(pitched, total_length)
    sounding = pitched_counts[pitched_counts > 0]
    polyphony = float(sounding.mean()) if sounding.size else float("nan")

    groove = groove_consistency(onset_sets, lengths)

    any_sounding = sounding_counts(everything, total_length) > 0
    beats = empty = 0
    for offset, length in zip(offsets[:-1], lengths, strict=True):
        for beat_start in range(0, length, _BEAT):
            beats += 1
            lo = int(offset) + beat_start
            empty += not any_sounding[lo : int(offset) + min(beat_start + _BEAT, length)].any()

    return {
        "notes_per_bar": n_notes / len(song.bars),
        "polyphony": polyphony,
        "pitch_class_entropy": pitch_class_entropy(pitch_class_counts),
        "scale_consistency": scale_consistency(pitch_class_counts),
        "groove_consistency": groove,
        "empty_beat_rate": empty / beats if beats else float("nan"),
    }


def mean_note_statistics(songs: Sequence[Song]) -> dict[str, float]:
    """Per-statistic mean over songs, NaN values skipped (NaN if no song defines it)."""
    if not songs:
        raise ValueError("mean_note_statistics: no songs given")
    table = np.array([[note_statistics(s)[name] for name in STATISTICS] for s in songs])
    means = {}
    for column, name in enumerate(STATISTICS):
        defined = table[:, column][~np.isnan(table[:, column])]
        means[name] = float(defined.mean()) if defined.size else float("nan")
    return means


def compare_note_statistics(
    generated: Sequence[Song] | dict[str, float], real: Sequence[Song] | dict[str, float]
) -> dict[str, dict[str, float]]:
    """{statistic: {"generated", "real", "abs_diff"}}; each side is songs or precomputed means
    (so the real set's means can be computed once and reused)."""
    gen = generated if isinstance(generated, dict) else mean_note_statistics(generated)
    ref = real if isinstance(real, dict) else mean_note_statistics(real)
    return {
        name: {"generated": gen[name], "real": ref[name], "abs_diff": abs(gen[name] - ref[name])}
        for name in STATISTICS
    }


def note_statistics_table(comparison: dict[str, dict[str, float]]) -> str:
    """A markdown table of `compare_note_statistics` output, one row per statistic."""
    lines = ["| statistic | generated | real | abs diff |", "|---|---|---|---|"]
    for name, row in comparison.items():
        lines.append(
            f"| {name} | {row['generated']:.4f} | {row['real']:.4f} | {row['abs_diff']:.4f} |"
        )
    return "\n".join(lines) + "\n"
