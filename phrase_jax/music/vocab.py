"""The 1000-id REMI-z vocabulary of SPEC 1.1, in the reference's exact order.

The layout is data: `Vocab.to_json` writes it next to every run and `Vocab.check_json` refuses a
file that disagrees, so a checkpoint is never read with a different token table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

SPECIAL_TOKENS = (
    "[EOS]", "[BOS]", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[HIST]", "[PITCH]",
    "[INST]", "[MELODY]", "[CHORD]", "[COMPRESS]",
    "[C0]", "[C1]", "[C2]", "[C3]", "[C4]", "[C5]", "[C6]", "[C7]", "[C8]", "[C9]",
)  # fmt: skip

EOS, BOS, UNK, CLS, SEP, PAD, MASK = 0, 1, 2, 3, 4, 5, 6
INST = 9
COMPRESS_QUERIES = (13, 14, 15, 16)  # [C0]..[C3]: the four bottleneck query positions
BAR_END = 23  # b-1

ONSET_BASE, NUM_ONSETS = 24, 128
PROGRAM_BASE, NUM_PROGRAMS = 152, 129  # i-0..i-128; 128 = drums
PITCH_BASE, NUM_PITCHES = 281, 256  # p-0..p-255; a drum note is p-(pitch+128)
DURATION_BASE, NUM_DURATIONS = 537, 128  # d-0..d-127
VELOCITY_BASE, NUM_VELOCITIES = 665, 32
TIME_SIG_BASE, NUM_TIME_SIGS = 697, 254
TEMPO_BASE, NUM_TEMPOS = 951, 49
VOCAB_SIZE = 1000

DRUM_PROGRAM = 128
POSITIONS_PER_QUARTER = 12
MAX_DURATION = 127


def _time_signature_table() -> tuple[tuple[int, int], ...]:
    # MusicBERT's table, reused by REMI-z: denominators 1..64, numerators 1..2*denominator.
    return tuple((num, 2**i) for i in range(7) for num in range(1, 2 * 2**i + 1))


TIME_SIGNATURES = _time_signature_table()
_TIME_SIG_INDEX = {ts: i for i, ts in enumerate(TIME_SIGNATURES)}


def onset_id(position: int) -> int:
    return ONSET_BASE + position


def program_id(program: int) -> int:
    return PROGRAM_BASE + program


def pitch_id(pitch: int, is_drum: bool) -> int:
    return PITCH_BASE + pitch + (128 if is_drum else 0)


def duration_id(steps: int) -> int:
    return DURATION_BASE + min(max(int(steps), 1), MAX_DURATION)


def velocity_bin(velocity: int) -> int:
    return min(max(int(velocity), 0), 127) // 4


def velocity_from_bin(bin_index: int) -> int:
    return bin_index * 4 + 2


def velocity_id(velocity: int) -> int:
    return VELOCITY_BASE + velocity_bin(velocity)


def time_signature_id(numerator: int, denominator: int) -> int:
    """Id of `s-*`; signatures outside the table fall back to 4/4 (REMI-z behaviour)."""
    return TIME_SIG_BASE + _TIME_SIG_INDEX.get((numerator, denominator), _TIME_SIG_INDEX[(4, 4)])


def tempo_bin(bpm: float) -> int:
    return round(12 * math.log2(min(max(bpm, 16.0), 256.0) / 16.0))


def tempo_from_bin(bin_index: int) -> float:
    return 16.0 * 2 ** (bin_index / 12)


def tempo_id(bpm: float) -> int:
    return TEMPO_BASE + tempo_bin(bpm)


def _token_strings() -> tuple[str, ...]:
    tokens = list(SPECIAL_TOKENS) + ["b-1"]
    tokens += [f"o-{i}" for i in range(NUM_ONSETS)]
    tokens += [f"i-{i}" for i in range(NUM_PROGRAMS)]
    tokens += [f"p-{i}" for i in range(NUM_PITCHES)]
    tokens += [f"d-{i}" for i in range(NUM_DURATIONS)]
    tokens += [f"v-{i}" for i in range(NUM_VELOCITIES)]
    tokens += [f"s-{i}" for i in range(NUM_TIME_SIGS)]
    tokens += [f"t-{i}" for i in range(NUM_TEMPOS)]
    return tuple(tokens)


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Token strings <-> ids. `Vocab()` is the SPEC table; a loaded one must equal it."""

    tokens: tuple[str, ...] = dataclasses.field(default_factory=_token_strings)

    def __post_init__(self):
        if len(self.tokens) != VOCAB_SIZE or len(set(self.tokens)) != VOCAB_SIZE:
            raise ValueError(f"vocabulary must hold {VOCAB_SIZE} distinct tokens")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {tok: i for i, tok in enumerate(self.tokens)}

    def encode(self, strings: list[str]) -> list[int]:
        index = self.index
        return [index.get(s, UNK) for s in strings]

    def decode(self, ids) -> list[str]:
        return [self.tokens[int(i)] if 0 <= int(i) < VOCAB_SIZE else "[UNK]" for i in ids]

    def to_dict(self) -> dict:
        return {
            "tokens": list(self.tokens),
            "time_signatures": [list(ts) for ts in TIME_SIGNATURES],
            "positions_per_quarter": POSITIONS_PER_QUARTER,
        }

    @property
    def sha256(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_json(self, path: str | os.PathLike) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Vocab:
        with open(path) as f:
            data = json.load(f)
        vocab = cls(tuple(data["tokens"]))
        if vocab.sha256 != cls().sha256:
            raise ValueError(
                f"{path}: vocabulary differs from phrase_jax's token table; "
                "this run was made with another tokenizer and cannot be read"
            )
        return vocab
