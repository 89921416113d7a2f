"""Reconstruction metrics (SPEC 2) on hand-computed phrase pairs."""

import numpy as np
import pytest

from phrase_jax.evaluation import reconstruction as rec
from phrase_jax.music import vocab

V = vocab.Vocab()


def ids(text: str) -> list[int]:
    return V.encode(text.split())


TARGET = ids("i-0 o-0 p-60 d-12 p-64 d-12 o-12 p-67 d-6")


def test_phrase_rolls_hold_durations_and_drop_drums_and_duplicates():
    assert rec.phrase_rolls(TARGET) == {0: {(0, 60): 12, (0, 64): 12, (12, 67): 6}}
    assert rec.phrase_rolls(ids("i-0 o-0 p-60 d-12 p-60 d-6")) == {0: {(0, 60): 6}}
    assert rec.phrase_rolls(ids("i-128 o-0 p-164 d-3")) == {}
    assert rec.phrase_rolls([vocab.INST]) == rec.phrase_rolls([vocab.BAR_END]) == {}
    assert rec.phrase_rolls(ids("i-0 o-100 p-60 d-3")) == {0: {(100, 60): 3}}  # long bars count


def test_partial_match_known_answer():
    decoded = ids("i-0 o-0 p-60 d-12 p-64 d-6 o-24 p-67 d-6")
    m = rec.compare_phrase(decoded, TARGET).metrics()
    # cells: (0,60) same duration; (0,64) duration differs; (24,67) vs (12,67) miss. 3 vs 3.
    assert m["f1_op"] == pytest.approx(4 / 6) and m["f1_opd"] == pytest.approx(2 / 6)
    assert m["f1_iopd"] == pytest.approx(2 / 6) and m["exact_match"] == 0.0


def test_wrong_instrument_only_hurts_f1iopd():
    m = rec.compare_phrase(ids("i-1") + TARGET[1:], TARGET).metrics()
    assert (m["f1_op"], m["f1_opd"], m["f1_iopd"], m["exact_match"]) == (1.0, 1.0, 0.0, 0.0)


def test_micro_average_and_per_instrument_mean():
    pairs = [
        (TARGET, TARGET),
        (ids("i-13 o-0 p-72 d-6 p-76 d-12"), ids("i-13 o-0 p-72 d-12")),
        (ids("i-128 o-0 p-164 d-3"), ids("i-128 o-0 p-166 d-3")),  # drums: no cells at all
    ]
    counts = rec.reconstruction_counts(pairs)
    assert (counts.pred_cells, counts.true_cells, counts.op_hits, counts.opd_hits) == (5, 4, 4, 3)
    assert counts.per_instrument == {0: [3, 3, 3], 13: [0, 2, 1]}
    m = counts.metrics()
    assert m["f1_op"] == pytest.approx(8 / 9) and m["f1_opd"] == pytest.approx(6 / 9)
    assert m["f1_iopd"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["exact_match"] == pytest.approx(1 / 3) and m["phrases"] == 3


def test_empty_phrases_are_perfect_and_extra_notes_are_not():
    m = rec.compare_phrase([vocab.INST], [vocab.INST]).metrics()
    assert (m["f1_op"], m["f1_opd"], m["f1_iopd"], m["exact_match"]) == (1.0, 1.0, 1.0, 1.0)
    m = rec.compare_phrase(TARGET, [vocab.INST]).metrics()
    assert (m["f1_op"], m["f1_iopd"]) == (0.0, 0.0)


def test_batch_stops_at_eos_and_pad_and_skips_bos():
    eos, pad, bos = vocab.EOS, vocab.PAD, vocab.BOS
    targets = np.full((2, 16), pad, dtype=np.int32)
    decoded = np.full((2, 20), pad, dtype=np.int32)
    second = ids("i-13 o-0 p-72 d-12")
    targets[0, : len(TARGET) + 1] = TARGET + [eos]
    targets[1, : len(second) + 1] = second + [eos]
    # Row 0: exact, then garbage after [EOS]; row 1: a wrong duration, cut by [PAD].
    decoded[0, : len(TARGET) + 4] = [bos] + TARGET + [eos] + ids("p-80 d-3")
    decoded[1, :5] = ids("i-13 o-0 p-72 d-6") + [pad]
    decoded[1, 5:9] = ids("o-3 p-70 d-3 b-1")
    m = rec.batch_reconstruction_metrics(decoded, targets)
    assert m["exact_match"] == 0.5 and m["f1_op"] == 1.0
    assert m["f1_opd"] == pytest.approx(2 * 3 / 8) and m["phrases"] == 2
    assert rec.trim_sequence([bos, 30, 40, eos, 70]) == [30, 40]
    assert rec.trim_sequence(np.array([30, pad, 40])) == [30]
    with pytest.raises(ValueError, match="one batch size"):
        rec.batch_reconstruction_metrics(decoded[:1], targets)


def test_counts_add_up():
    a = rec.compare_phrase(TARGET, TARGET)
    b = rec.compare_phrase(ids("i-13 o-0 p-72 d-6"), ids("i-13 o-0 p-72 d-12"))
    total = rec.ReconstructionCounts()
    total += a
    total += b
    assert total.phrases == 2 and total.exact == 1 and total.per_instrument[13] == [0, 1, 1]
    assert a.per_instrument == {0: [3, 3, 3]}  # adding never mutates the operands
