"""PhraseVAE reconstruction metrics on token-id phrases (SPEC 2, ref).

Each phrase becomes a piano roll per instrument whose cells hold durations: cell (onset, pitch)
of program P = duration. Drums are left out; of two notes on one (program, onset, pitch) cell the
later in token order wins, as when the ref writes a dense roll. The roll is kept sparse, so onsets
past 47 (bars longer than 4/4) count instead of falling off a 48 x 128 array; for 4/4 bars it
is the ref's 48 x 128 roll.

- F1op: a hit is a cell non-zero in both rolls (instrument ignored, as in one-track phrases).
- F1opd: a hit also needs equal durations.
- F1iopd: F1opd per target instrument (hits need the same program), averaged over the target's
  instruments.
- exact match: the token sequences (cut at [EOS]/[PAD]) are equal.
Counts are micro-averaged over a set of phrases; F1 of an empty set of cells on both sides is 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from phrase_jax.music import tokenizer, vocab

Cell = tuple[int, int]  # (onset, pitch)


def phrase_rolls(ids: Sequence[int]) -> dict[int, dict[Cell, int]]:
    """{program: {(onset, pitch): duration}} for one phrase's non-drum notes (malformed notes
    are dropped by the tokenizer's rules)."""
    program, notes, _ = tokenizer.parse_phrase(ids)
    if program is None or program == vocab.DRUM_PROGRAM or not notes:
        return {}
    roll: dict[Cell, int] = {}
    for note in notes:
        roll[(note.onset, note.pitch)] = note.duration
    return {program: roll}


def trim_sequence(ids: Iterable[int]) -> list[int]:
    """Ids up to the first [EOS] or [PAD], without a leading [BOS]."""
    out = []
    for position, token in enumerate(ids):
        token = int(token)
        if token in (vocab.EOS, vocab.PAD):
            break
        if position == 0 and token == vocab.BOS:
            continue
        out.append(token)
    return out


def _f1(hits: int, predicted: int, actual: int) -> float:
    if predicted == 0 and actual == 0:
        return 1.0
    return 2.0 * hits / (predicted + actual)


@dataclasses.dataclass
class ReconstructionCounts:
    """Summed cell counts over phrases. `*_pred`/`*_true` are non-zero cells in the decoded /
    target rolls; `per_instrument[program] = [hits, predicted, actual]` for duration hits."""

    phrases: int = 0
    exact: int = 0
    pred_cells: int = 0
    true_cells: int = 0
    op_hits: int = 0
    opd_hits: int = 0
    per_instrument: dict[int, list[int]] = dataclasses.field(default_factory=dict)

    def __iadd__(self, other: ReconstructionCounts) -> ReconstructionCounts:
        for name in ("phrases", "exact", "pred_cells", "true_cells", "op_hits", "opd_hits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for program, counts in other.per_instrument.items():
            mine = self.per_instrument.setdefault(program, [0, 0, 0])
            for i in range(3):
                mine[i] += counts[i]
        return self

    def metrics(self) -> dict[str, float]:
        """f1_op, f1_opd, f1_iopd, exact_match (fractions in [0, 1]) and the phrase count."""
        target_programs = [p for p, counts in self.per_instrument.items() if counts[2] > 0]
        if target_programs:
            f1_iopd = float(
                np.mean([_f1(*self.per_instrument[p]) for p in sorted(target_programs)])
            )
        else:
            f1_iopd = _f1(0, sum(c[1] for c in self.per_instrument.values()), 0)
        return {
            "f1_op": _f1(self.op_hits, self.pred_cells, self.true_cells),
            "f1_opd": _f1(self.opd_hits, self.pred_cells, self.true_cells),
            "f1_iopd": f1_iopd,
            "exact_match": self.exact / self.phrases if self.phrases else 1.0,
            "phrases": float(self.phrases),
        }


def compare_phrase(decoded: Sequence[int], target: Sequence[int]) -> ReconstructionCounts:
    """Counts for one (decoded, target) pair of phrase id lists (already trimmed)."""
    decoded, target = [int(t) for t in decoded], [int(t) for t in target]
    counts = ReconstructionCounts(phrases=1, exact=int(decoded == target))
    pred_rolls, true_rolls = phrase_rolls(decoded), phrase_rolls(target)
    pred_flat = _flatten(pred_rolls)
    true_flat = _flatten(true_rolls)
    counts.pred_cells, counts.true_cells = len(pred_flat), len(true_flat)
    counts.op_hits = len(pred_flat.keys() & true_flat.keys())
    counts.opd_hits = sum(pred_flat[c] == true_flat[c] for c in pred_flat.keys() & true_flat.keys())
    for program in pred_rolls.keys() | true_rolls.keys():
        pred, true = pred_rolls.get(program, {}), true_rolls.get(program, {})
        hits = sum(pred[c] == true[c] for c in pred.keys() & true.keys())
        mine = counts.per_instrument.setdefault(program, [0, 0, 0])
        mine[0] += hits
        mine[1] += len(pred)
        mine[2] += len(true)
    return counts


def _flatten(rolls: dict[int, dict[Cell, int]]) -> dict[Cell, int]:
    """Instrument-free roll: one phrase has one program, so cells never collide in practice;
    on a collision the higher program's duration wins (deterministic)."""
    flat: dict[Cell, int] = {}
    for program in sorted(rolls):
        flat.update(rolls[program])
    return flat


def reconstruction_counts(
    pairs: Iterable[tuple[Sequence[int], Sequence[int]]],
) -> ReconstructionCounts:
    """Summed counts over (decoded, target) phrase pairs; each side is trimmed first."""
    total = ReconstructionCounts()
    for decoded, target in pairs:
        total += compare_phrase(trim_sequence(decoded), trim_sequence(target))
    return total


def batch_reconstruction_counts(decoded_bl, targets_bl) -> ReconstructionCounts:
    """Counts for a batch: decoded_bl [B, L1] ids from greedy decoding (an optional leading
    [BOS]; stops at [EOS]/[PAD]) and targets_bl [B, L2] (`phrase [EOS] [PAD]...`)."""
    decoded_bl, targets_bl = np.asarray(decoded_bl), np.asarray(targets_bl)
    if decoded_bl.ndim != 2 or targets_bl.ndim != 2 or len(decoded_bl) != len(targets_bl):
        raise ValueError(
            f"decoded and targets must be [B, L] with one batch size, got shapes "
            f"{decoded_bl.shape} and {targets_bl.shape}"
        )
    return reconstruction_counts(zip(decoded_bl.tolist(), targets_bl.tolist(), strict=True))


def batch_reconstruction_metrics(decoded_bl, targets_bl) -> dict[str, float]:
    """F1op, F1opd, F1iopd and exact-match rate for one batch (see module docstring)."""
    return batch_reconstruction_counts(decoded_bl, targets_bl).metrics()
