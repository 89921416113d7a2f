"""Note events between MIDI and tokens: a song is a list of bars, a bar maps programs to notes.

Positions are on the 12-per-quarter grid relative to the bar start (SPEC 1.2).
"""

from __future__ import annotations

import dataclasses

from phrase_jax.music import vocab


@dataclasses.dataclass(frozen=True, order=True)
class Note:
    onset: int  # grid position inside the bar, 0 <= onset < 128
    pitch: int  # MIDI pitch 0..127, drums included (the token adds 128 for drums)
    duration: int  # grid steps, clamped to [1, 127]
    velocity: int = 96  # MIDI velocity 1..127


@dataclasses.dataclass
class Bar:
    tracks: dict[int, list[Note]] = dataclasses.field(default_factory=dict)  # program -> notes
    time_signature: tuple[int, int] = (4, 4)
    tempo: float = 90.0  # bpm at the bar start

    @property
    def length(self) -> int:
        """Grid positions in the bar: numerator * 48 / denominator."""
        num, den = self.time_signature
        return num * 4 * vocab.POSITIONS_PER_QUARTER // den


@dataclasses.dataclass
class Song:
    bars: list[Bar]
    name: str = ""
    sections: list[tuple[str, int]] | None = None  # (type letter, bars), e.g. [("i", 4), ("A", 8)]
