"""Bar boundaries in quarter notes, from MIDI time signatures or from beat/downbeat annotations.

Both sources give an endless run of bars (the last signature repeats) that `midi_io` cuts to the
span of the notes. Every bar fits the token grid (SPEC 1.1-1.2): at most 128 positions and a
signature the `s-*` table holds; longer or unlisted bars are split into near-equal parts, e.g.
12/4 -> 6/4 + 6/4, 9/4 -> 5/4 + 4/4, so a bar written back to MIDI reads back as the same bars.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from fractions import Fraction

from phrase_jax.music import vocab

MAX_BAR_POSITIONS = vocab.NUM_ONSETS  # o-0..o-127: a bar can hold at most 128 onset positions
_TABLE = frozenset(vocab.TIME_SIGNATURES)
_DENOMINATORS = tuple(sorted({den for _, den in vocab.TIME_SIGNATURES}))  # 1, 2, 4, ..., 64


@dataclasses.dataclass(frozen=True)
class BarSpan:
    """One bar: `start` in quarter notes from the song origin, and its time signature."""

    start: Fraction
    time_signature: tuple[int, int]

    @property
    def length(self) -> Fraction:
        """Bar length in quarter notes: numerator * 4 / denominator."""
        num, den = self.time_signature
        return Fraction(4 * num, den)

    @property
    def end(self) -> Fraction:
        return self.start + self.length


def quarters(time_signature: tuple[int, int]) -> Fraction:
    num, den = time_signature
    return Fraction(4 * num, den)


def split_time_signature(numerator: int, denominator: int) -> list[tuple[int, int]]:
    """Split n/d into the fewest near-equal bars that the token grid and `s-*` table hold.

    (7, 4) -> [(7, 4)]; (12, 4) -> [(6, 4), (6, 4)]; (9, 4) -> [(5, 4), (4, 4)].
    """
    if numerator < 1 or denominator not in _DENOMINATORS:
        raise ValueError(f"time signature {numerator}/{denominator} is not representable")
    parts = 1
    while True:
        largest = -(-numerator // parts)
        fits_grid = largest * 4 * vocab.POSITIONS_PER_QUARTER <= MAX_BAR_POSITIONS * denominator
        if (largest, denominator) in _TABLE and fits_grid:
            break
        parts += 1
    base, extra = divmod(numerator, parts)
    return [(base + 1, denominator)] * extra + [(base, denominator)] * (parts - extra)


def signatures_for_length(length: Fraction) -> list[tuple[int, int]]:
    """Signatures for a bar of `length` quarters (a bar cut short by a signature change)."""
    if length <= 0:
        raise ValueError(f"bar length must be positive, got {length}")
    for den in _DENOMINATORS[2:]:  # prefer n/4, then n/8, ... (a bar of whole notes is rare)
        num = length * den / 4
        if num.denominator == 1:
            return split_time_signature(int(num), den)
    # Off the 64th-note grid: the closest 64ths. Only the bar's own length is approximate; the
    # next bar still starts exactly where the signature change is.
    return split_time_signature(max(1, round(length * 16)), 64)


def on_grid(time_signature: tuple[int, int]) -> bool:
    """Whether a bar of this signature is a whole number of grid positions (1/64 is not)."""
    num, den = time_signature
    return num >= 1 and den in _DENOMINATORS and (num * 4 * vocab.POSITIONS_PER_QUARTER) % den == 0


def meter_changes(
    changes: Sequence[tuple[Fraction, tuple[int, int]]],
) -> list[tuple[Fraction, tuple[int, int]]]:
    """The (position in quarters, signature) changes that open bars, sorted, starting at 0.

    Positions snap to the 12-per-quarter grid; of several events at one position the last wins.
    Ignored, because they would open phantom bars that shift every later barline: signatures the
    MIDI format cannot mean (denominator not a power of two up to 64, numerator 0), signatures
    whose bar is not a whole number of grid positions (1/64, 27/64 slivers), and events that
    repeat the meter in force. Before the first change the meter is 4/4 (the MIDI default).
    """
    grid = vocab.POSITIONS_PER_QUARTER
    by_position: dict[Fraction, tuple[int, int]] = {}
    for position, signature in sorted(changes, key=lambda change: change[0]):
        if not on_grid(signature):
            continue
        snapped = Fraction(round(Fraction(position) * grid), grid)
        by_position[max(snapped, Fraction(0))] = tuple(signature)
    kept = [(Fraction(0), by_position.pop(Fraction(0), (4, 4)))]
    for position, signature in sorted(by_position.items()):
        if signature != kept[-1][1]:
            kept.append((position, signature))
    return kept


def count_bars(
    changes: Sequence[tuple[Fraction, tuple[int, int]]], song_quarters: float, stop_after: int
) -> int:
    """Bars `bars_from_time_signatures` makes up to `song_quarters`, counted without making them
    (arithmetic per meter segment); counting stops once past `stop_after`."""
    meters = meter_changes(changes)
    song_end = Fraction(song_quarters)
    total = 0
    for index, (position, signature) in enumerate(meters):
        if position > song_end:
            break
        next_position = meters[index + 1][0] if index + 1 < len(meters) else song_end
        end = min(next_position, song_end)
        per_period = len(split_time_signature(*signature))
        total += (int((end - position) // quarters(signature)) + 1) * per_period
        if total > stop_after:
            break
    return total


def bars_from_time_signatures(
    changes: Sequence[tuple[Fraction, tuple[int, int]]],
) -> Iterator[BarSpan]:
    """Bars from (position in quarters, signature) changes (filtered by `meter_changes`); bars
    start at 0 and at each change.

    A change inside a bar ends that bar early. The last signature repeats forever; callers stop
    when they have enough bars.
    """
    ordered = meter_changes(changes)
    for index, (position, signature) in enumerate(ordered):
        next_change = ordered[index + 1][0] if index + 1 < len(ordered) else None
        cursor = position
        parts = split_time_signature(*signature)
        while next_change is None or cursor < next_change:
            for part in parts:
                if next_change is not None and cursor + quarters(part) > next_change:
                    for short in signatures_for_length(next_change - cursor):
                        yield BarSpan(cursor, short)
                        cursor += quarters(short)
                    cursor = next_change
                    break
                yield BarSpan(cursor, part)
                cursor += quarters(part)
                if next_change is not None and cursor >= next_change:
                    break


def bars_from_downbeats(downbeats: Sequence[int], earliest: float) -> Iterator[BarSpan]:
    """Bars from downbeat beat indices, one quarter per beat, bar of L beats = L/4.

    The bar at downbeat i lasts until downbeat i+1; the last bar repeats the length of the one
    before it (4 beats if there is a single downbeat). Music before the first downbeat goes into
    pickup bars of the first bar's length, right-aligned to the first downbeat, so an anacrusis
    keeps its metrical position (beat 4 of a 4/4 pickup is onset 36); they start no later than
    `earliest` (in beats).
    """
    marks = sorted(set(int(d) for d in downbeats))
    if not marks:
        raise ValueError("bars_from_downbeats needs at least one downbeat")
    lengths = [b - a for a, b in itertools.pairwise(marks)]
    first_length = lengths[0] if lengths else 4
    last_length = lengths[-1] if lengths else 4
    start = marks[0]
    while start > earliest:
        start -= first_length
    while start < marks[0]:
        yield from _beat_bar(start, first_length)
        start += first_length
    for mark, length in zip(marks[:-1], lengths, strict=True):
        yield from _beat_bar(mark, length)
    start = marks[-1]
    while True:
        yield from _beat_bar(start, last_length)
        start += last_length


def _beat_bar(start: int, beats: int) -> Iterator[BarSpan]:
    cursor = Fraction(start)
    for part in split_time_signature(beats, 4):
        yield BarSpan(cursor, part)
        cursor += quarters(part)
