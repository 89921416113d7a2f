"""Descriptors of a song from its notes alone, no model (issue 13.3): per bar and per song.

Per bar (`BAR_FEATURES`), from the notes that start in the bar, on the 12-per-quarter grid:
- `notes`: all notes, drums included;
- `onsets`: distinct onset positions, drums included;
- `polyphony`: mean number of pitched notes sounding at once over the bar's positions where at
  least one sounds (a note's tail past the barline is cut at the bar's end);
- `pitch_class_entropy`: bits, of the pitched notes' pitch-class counts (12 equal: log2 12);
- `pitch_range`: highest minus lowest pitched note, semitones;
- `mean_duration`: of the pitched notes, in quarter notes (uncut).
A bar without pitched notes has NaN for the last four (an empty bar: notes = onsets = 0).

Per song (`SONG_FEATURES`):
- `scale_consistency`, `groove_consistency`: `note_stats`' definitions (largest in-scale share
  over 24 keys; 1 - mean onset-set difference of consecutive bars);
- `bar_recurrence`: the share of the song's non-empty bars that another bar of the song repeats:
  bar profile = [unit duration-weighted chroma (12), unit onset pattern (16 bins a bar)] / sqrt 2,
  similarity = the profiles' dot product (the mean of the two cosines), and a bar recurs when
  another bar's similarity is >= `RECURRENCE_THRESHOLD`. NaN with fewer than 2 non-empty bars.
The per-song vector (`SONG_DESCRIPTORS`, for the Fréchet distance) is the song's mean of each
bar feature (NaN bars skipped) followed by the song features. Drums are left out of everything
pitched (chroma, entropy, range, duration, polyphony, scale). Numpy only: the edit stage reads
the per-bar descriptors at its seams.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from phrase_jax.evaluation import note_stats
from phrase_jax.music import midi_io, vocab
from phrase_jax.music.events import Bar, Song

BAR_FEATURES = (
    "notes", "onsets", "polyphony", "pitch_class_entropy", "pitch_range", "mean_duration",
)  # fmt: skip
SONG_FEATURES = ("scale_consistency", "groove_consistency", "bar_recurrence")
SONG_DESCRIPTORS = tuple(f"mean_{name}" for name in BAR_FEATURES) + SONG_FEATURES
ONSET_BINS = 16  # onset pattern resolution: 16th notes in 4/4
# At 0.9 a bar recurs when its chords and rhythm come back, with room for a changed voicing or a
# passing note; held-out POP909 songs then have a median recurrence of 0.91 (10%-90%: 0.73-0.97,
# benchmarks/bench_midi_eval.py), neither saturated nor empty.
RECURRENCE_THRESHOLD = 0.9
MIDI_SUFFIXES = (".mid", ".midi")


@dataclasses.dataclass(frozen=True)
class SongDescriptors:
    """Everything measured of one song: `bars_bf` [n_bars, len(BAR_FEATURES)] (NaN where a bar
    cannot define a feature), `song` [len(SONG_FEATURES)], `vector` [len(SONG_DESCRIPTORS)]."""

    name: str
    bars_bf: np.ndarray
    song: np.ndarray
    vector: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """The per-song vector by name."""
        return dict(zip(SONG_DESCRIPTORS, map(float, self.vector), strict=True))


def _pitched(bar: Bar) -> list:
    return [
        note
        for program, notes in bar.tracks.items()
        if program != vocab.DRUM_PROGRAM
        for note in notes
    ]


def bar_descriptors(bar: Bar) -> dict[str, float]:
    """The `BAR_FEATURES` of one bar (see the module docstring)."""
    return dict(zip(BAR_FEATURES, map(float, bar_descriptor_vector(bar)), strict=True))


def bar_descriptor_vector(bar: Bar) -> np.ndarray:
    """[len(BAR_FEATURES)] float64, in `BAR_FEATURES` order."""
    every = [note for notes in bar.tracks.values() for note in notes]
    pitched = _pitched(bar)
    values = np.full(len(BAR_FEATURES), np.nan)
    values[0] = len(every)
    values[1] = len({note.onset for note in every})
    if pitched:
        length = max(bar.length, max(note.onset for note in pitched) + 1)
        sounding = note_stats.sounding_counts(
            [(n.onset, n.onset + max(n.duration, 1)) for n in pitched], length
        )
        pitches = np.array([note.pitch for note in pitched])
        values[2] = sounding[sounding > 0].mean()
        values[3] = note_stats.pitch_class_entropy(np.bincount(pitches % 12, minlength=12))
        values[4] = pitches.max() - pitches.min()
        values[5] = np.mean([n.duration for n in pitched]) / vocab.POSITIONS_PER_QUARTER
    return values


def bar_profile(bar: Bar) -> np.ndarray:
    """[12 + ONSET_BINS]: unit duration-weighted chroma of the pitched notes and unit onset
    pattern of all notes, each scaled by 1/sqrt 2 (a part with no notes stays zero), so the dot
    product of two profiles is the mean of the chroma and onset cosines."""
    chroma = np.zeros(12)
    for note in _pitched(bar):
        chroma[note.pitch % 12] += max(1, min(note.duration, bar.length - note.onset))
    onsets = np.zeros(ONSET_BINS)
    for notes in bar.tracks.values():
        for note in notes:
            onsets[min(note.onset * ONSET_BINS // max(bar.length, 1), ONSET_BINS - 1)] = 1.0
    parts = [part / np.linalg.norm(part) if part.any() else part for part in (chroma, onsets)]
    return np.concatenate(parts) / np.sqrt(2.0)


def bar_self_similarity(song: Song) -> np.ndarray:
    """[n_bars, n_bars] similarity of the bars' profiles (1 on the diagonal of non-empty bars)."""
    if not song.bars:
        return np.zeros((0, 0))
    profiles = np.stack([bar_profile(bar) for bar in song.bars])
    return profiles @ profiles.T


def bar_recurrence(song: Song, threshold: float = RECURRENCE_THRESHOLD) -> float:
    """The share of non-empty bars that another non-empty bar repeats (similarity >=
    `threshold`); NaN with fewer than 2 non-empty bars."""
    non_empty = [bar for bar in song.bars if any(bar.tracks.values())]
    if len(non_empty) < 2:
        return float("nan")
    similarity = bar_self_similarity(Song(bars=non_empty))
    np.fill_diagonal(similarity, -np.inf)
    # Round-off must not hide an exact repeat at threshold 1.
    return float(np.mean(similarity.max(axis=1) >= threshold - 1e-9))


def song_features(song: Song, threshold: float = RECURRENCE_THRESHOLD) -> dict[str, float]:
    """The `SONG_FEATURES` of one song."""
    counts = np.zeros(12)
    for bar in song.bars:
        for note in _pitched(bar):
            counts[note.pitch % 12] += 1
    onset_sets = [{n.onset for notes in bar.tracks.values() for n in notes} for bar in song.bars]
    return {
        "scale_consistency": note_stats.scale_consistency(counts),
        "groove_consistency": note_stats.groove_consistency(
            onset_sets, [bar.length for bar in song.bars]
        ),
        "bar_recurrence": bar_recurrence(song, threshold),
    }


def _nanmean_columns(table_nf: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(table_nf)
    counts = defined.sum(axis=0)
    sums = np.where(defined, table_nf, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def describe(song: Song, threshold: float = RECURRENCE_THRESHOLD) -> SongDescriptors:
    """Every descriptor of `song`, each computed once."""
    bars_bf = (
        np.stack([bar_descriptor_vector(bar) for bar in song.bars])
        if song.bars
        else np.zeros((0, len(BAR_FEATURES)))
    )
    song_values = np.array([song_features(song, threshold)[name] for name in SONG_FEATURES])
    vector = np.concatenate([_nanmean_columns(bars_bf), song_values])
    return SongDescriptors(song.name, bars_bf, song_values, vector)


def read_song(path: str | os.PathLike, quantize_step: int = 3) -> Song:
    """A MIDI file as a `Song` (bars from its own meter and tempo map, onsets and ends snapped
    to `quantize_step` grid positions: 3 = 16th notes, as the prepared data); raises
    `midi_io.MidiReadError` with the file's name for a file that cannot be read."""
    return midi_io.midi_to_song(
        midi_io.load_midi(path),
        name=os.path.splitext(os.path.basename(path))[0],
        quantize_step=quantize_step,
    )


def midi_files(folder: str) -> list[str]:
    """The MIDI files under `folder` (recursively), sorted."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.join(root, n) for n in names if n.lower().endswith(MIDI_SUFFIXES)]
    return sorted(found)
