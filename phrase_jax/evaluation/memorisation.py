"""Melody memorisation of generated songs against the training set (SPEC 7, ref).

The melody of a song is its program-13 track (configurable) written as tokens, every bar
included: `i-13 o-.. p-.. d-.. ... b-1` per bar, just `b-1` for a bar without melody, so bar
structure counts as in the ref's REMI-z melody strings. A song with no melody note at all has
the empty melody `[]`.

WER(reference, hypothesis) = Levenshtein distance over tokens / len(reference), the reference
being the training melody (jiwer's convention, as in the ref). For one generated melody:
similarity to a training song = 1 - WER (can be negative when the generated melody is much
longer); T2R = WER to the nearest training melody / WER to the second nearest; the song is
memorised when T2R < 1/3; MR = memorised fraction of generated songs.

Defined edge cases: an empty generated melody has WER 1 to every training melody (all of it
deleted), so T2R = 1 and it is never memorised. When the two nearest WERs are both 0 (an exact
copy of a melody that occurs twice in training), T2R = 0: memorised. Training melodies must be
non-empty and there must be at least two of them; anything else raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np

from phrase_jax.music import tokenizer
from phrase_jax.music.events import Bar, Song

MELODY_PROGRAM = 13  # POP909's MELODY track (SPEC 1.6)
MEMORISED_T2R = 1.0 / 3.0


def melody_tokens(song: Song, program: int = MELODY_PROGRAM) -> list[int]:
    """The `program` track of `song` as token ids, one `b-1` per bar; [] without any note."""
    if not any(bar.tracks.get(program) for bar in song.bars):
        return []
    bars = []
    for bar in song.bars:
        notes = bar.tracks.get(program)
        bars.append(Bar(tracks={program: list(notes)} if notes else {}))
    return tokenizer.song_tokens(Song(bars=bars))


def _pattern_masks(pattern: Sequence[Hashable]) -> dict[Hashable, int]:
    """token -> bit mask of the positions in `pattern` that hold it (bit i = position i)."""
    masks: dict[Hashable, int] = {}
    for position, token in enumerate(pattern):
        masks[token] = masks.get(token, 0) | (1 << position)
    return masks


def _distance_from_masks(masks: dict[Hashable, int], m: int, text: Sequence[Hashable]) -> int:
    """Levenshtein distance between a pattern of length m >= 1 (given by its masks) and `text`.

    Myers' bit-parallel algorithm in Hyyrö's form for global edit distance: one column of the
    DP table is held as vertical +1/-1 delta bit vectors (`pv`, `mv`, bit i = row i+1), updated
    per text token with a few whole-column integer operations; Python's unbounded ints carry
    the column, so any length works and the cost is O(len(text) * m / 64) machine words.
    """
    full = (1 << m) - 1
    last_row = 1 << (m - 1)
    pv, mv, score = full, 0, m  # first column D[i][0] = i: every vertical delta is +1
    for token in text:
        eq = masks.get(token, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & full)
        mh = pv & xh
        if ph & last_row:
            score += 1
        elif mh & last_row:
            score -= 1
        # Row 0 is D[0][j] = j, so its horizontal delta is always +1: shift a 1 in.
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Minimum number of token insertions, deletions and substitutions turning `a` into `b`."""
    if not a or not b:
        return len(a) + len(b)
    return _distance_from_masks(_pattern_masks(a), len(a), b)


def word_error_rate(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> float:
    """levenshtein(reference, hypothesis) / len(reference); the reference must be non-empty."""
    if not reference:
        raise ValueError("word_error_rate: the reference token list is empty (WER undefined)")
    return levenshtein(reference, hypothesis) / len(reference)


def error_rates(
    hypothesis: Sequence[Hashable], references: Sequence[Sequence[Hashable]]
) -> np.ndarray:
    """[R] WER of one hypothesis against each of R non-empty references."""
    for index, reference in enumerate(references):
        if not reference:
            raise ValueError(
                f"training melody {index} is empty: drop songs without a melody track before "
                "building the memorisation reference set"
            )
    if not hypothesis:
        return np.ones(len(references))
    masks, m = _pattern_masks(hypothesis), len(hypothesis)  # the hypothesis is reused R times
    return np.array([_distance_from_masks(masks, m, ref) / len(ref) for ref in references])


def top_two_ratio(wers: np.ndarray) -> float:
    """T2R = smallest WER / second smallest; 0 when both are 0 (an exact duplicate)."""
    if wers.shape[0] < 2:
        raise ValueError(f"T2R needs at least 2 training melodies, got {wers.shape[0]}")
    nearest, second = np.partition(wers, 1)[:2]
    return float(nearest / second) if second > 0 else 0.0


@dataclasses.dataclass
class MemorisationResult:
    """Per generated song [G]: `wers` [G, R] against R training melodies, `max_similarity`
    (1 - min WER), `nearest` (index of the nearest training melody), `t2r`, `memorised`."""

    wers: np.ndarray
    max_similarity: np.ndarray
    nearest: np.ndarray
    t2r: np.ndarray
    memorised: np.ndarray

    @property
    def memorisation_rate(self) -> float:
        """MR: fraction of generated songs with T2R < 1/3 (the threshold the result used)."""
        return float(self.memorised.mean()) if self.memorised.size else 0.0

    def summary(self) -> dict[str, float]:
        """Set-level means: MR, mean T2R, mean max similarity."""
        return {
            "memorisation_rate": self.memorisation_rate,
            "mean_t2r": float(self.t2r.mean()) if self.t2r.size else float("nan"),
            "mean_max_similarity": (
                float(self.max_similarity.mean()) if self.max_similarity.size else float("nan")
            ),
        }


def memorisation(
    generated: Sequence[Sequence[Hashable]],
    training: Sequence[Sequence[Hashable]],
    threshold: float = MEMORISED_T2R,
) -> MemorisationResult:
    """Memorisation of G generated melodies against R >= 2 non-empty training melodies.

    Cost: G * R bit-parallel edit distances; about 1.5 ms each for POP909 melodies (~1200 tokens).
    """
    if len(training) < 2:
        raise ValueError(
            f"memorisation needs at least 2 training melodies for T2R, got {len(training)}"
        )
    wers = np.array([error_rates(melody, training) for melody in generated]).reshape(
        len(generated), len(training)
    )
    t2r = np.array([top_two_ratio(row) for row in wers])
    return MemorisationResult(
        wers=wers,
        max_similarity=1.0 - wers.min(axis=1, initial=np.inf),
        nearest=wers.argmin(axis=1) if len(generated) else np.zeros(0, np.int64),
        t2r=t2r,
        memorised=t2r < threshold,
    )


def song_melodies(songs: Sequence[Song], program: int = MELODY_PROGRAM) -> list[list[int]]:
    """`melody_tokens` of each song (training songs without the track give [] and must be
    dropped by the caller before `memorisation`)."""
    return [melody_tokens(song, program) for song in songs]
