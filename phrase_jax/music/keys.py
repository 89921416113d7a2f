"""Song-level key detection and normalisation to C major / A minor (SPEC 1.5, ref).

Histogram: pitch classes of non-drum notes weighted by duration x velocity. Templates: for each
of 24 keys, tonic 2, third and fifth 1.5, other scale degrees 1, non-scale -1 (minor = natural
minor). The best dot product wins; ties go to the earlier key (C major .. B major, C minor ..).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from phrase_jax.music import vocab
from phrase_jax.music.events import Song

PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_KEY_LABEL = re.compile(r"([A-Ga-g])([#b]*):(maj|min)")


def _template(scale: tuple[int, ...]) -> np.ndarray:
    weights = np.full(12, -1.0)
    weights[list(scale)] = 1.0
    weights[scale[0]] = 2.0
    weights[scale[2]] = 1.5  # third
    weights[scale[4]] = 1.5  # fifth
    return weights


def key_templates() -> np.ndarray:
    """[24, 12]: rows 0..11 major keys on tonics C..B, rows 12..23 minor keys."""
    major, minor = _template(_MAJOR_SCALE), _template(_MINOR_SCALE)
    return np.stack([np.roll(major, t) for t in range(12)] + [np.roll(minor, t) for t in range(12)])


_TEMPLATES = key_templates()


def pitch_class_histogram(song: Song) -> np.ndarray:
    """[12] duration x velocity weight per pitch class over non-drum notes."""
    histogram = np.zeros(12)
    for bar in song.bars:
        for program, notes in bar.tracks.items():
            if program == vocab.DRUM_PROGRAM:
                continue
            for note in notes:
                histogram[note.pitch % 12] += note.duration * note.velocity
    return histogram


def detect_key(song: Song) -> tuple[int, bool, float]:
    """(tonic 0..11, is_minor, score); score = best template dot product / total weight.

    A song without pitched notes is (0, False, 0.0).
    """
    histogram = pitch_class_histogram(song)
    total = histogram.sum()
    if total <= 0:
        return 0, False, 0.0
    scores = _TEMPLATES @ histogram
    best = int(np.argmax(scores))
    return best % 12, best >= 12, float(scores[best] / total)


def key_shift(tonic: int, is_minor: bool) -> int:
    """Semitones that move the key to C major / A minor, folded into [-6, 6] (here -5..6)."""
    target = 9 if is_minor else 0
    shift = (target - tonic) % 12
    return shift - 12 if shift > 6 else shift


def transpose(song: Song, shift: int) -> Song:
    """A new song with every non-drum pitch moved by `shift`; a pitch that would leave 0..127
    moves by octaves back inside (drums never move)."""
    bars = []
    for bar in song.bars:
        tracks = {}
        for program, notes in bar.tracks.items():
            if program == vocab.DRUM_PROGRAM or shift == 0:
                tracks[program] = list(notes)
                continue
            moved = []
            for note in notes:
                pitch = note.pitch + shift
                while pitch > 127:
                    pitch -= 12
                while pitch < 0:
                    pitch += 12
                moved.append(dataclasses.replace(note, pitch=pitch))
            tracks[program] = moved
        bars.append(dataclasses.replace(bar, tracks=tracks))
    return dataclasses.replace(song, bars=bars)


def normalize_key(song: Song) -> tuple[Song, int]:
    """Transpose the song so its detected key becomes C major / A minor: (new song, shift)."""
    tonic, is_minor, _ = detect_key(song)
    shift = key_shift(tonic, is_minor)
    return transpose(song, shift), shift


def parse_key_labels(text: str) -> list[tuple[int, bool]]:
    """Every `Tonic:maj|min` label in `text`, in order, as (tonic 0..11, is_minor).

    POP909's `analyzed_key.txt` holds one label (`Gb:maj`) or, for songs that modulate, several
    run together (`D:majE:maj`).
    """
    keys = []
    for letter, accidentals, mode in _KEY_LABEL.findall(text):
        tonic = _LETTERS[letter.upper()] + accidentals.count("#") - accidentals.count("b")
        keys.append((tonic % 12, mode == "min"))
    return keys


def parse_key_label(text: str) -> tuple[int, bool]:
    """The first key label in `text` (e.g. "Gb:maj" -> (6, False), "C#:min" -> (1, True))."""
    keys = parse_key_labels(text)
    if not keys:
        raise ValueError(f"no key label like 'Gb:maj' or 'C#:min' in {text.strip()!r}")
    return keys[0]
