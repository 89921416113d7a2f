"""Section recurrence score (SPEC 7) on hand-built self-similarity matrices and latents."""

import numpy as np
import pytest

from phrase_jax.evaluation import structure


def _bright(n_bars: int, diagonals: dict[int, range]) -> np.ndarray:
    """Symmetric bool matrix: the main diagonal plus cells (i, i + k) for i in each range."""
    m = np.eye(n_bars, dtype=bool)
    for k, rows in diagonals.items():
        for i in rows:
            m[i, i + k] = m[i + k, i] = True
    return m


def test_repeated_section_counts():
    # Bars 8..15 repeat bars 0..7: diagonal 8 bright over i = 0..7.
    assert structure.srs_from_binary(_bright(16, {8: range(8)})) == pytest.approx(8 / 16)


def test_runs_shorter_than_min_run_are_ignored():
    assert structure.srs_from_binary(_bright(16, {6: range(3)})) == 0.0
    assert structure.srs_from_binary(_bright(16, {6: range(4)})) == pytest.approx(4 / 16)
    assert structure.srs_from_binary(_bright(16, {6: range(3)}), min_run=3) == pytest.approx(3 / 16)
    # Two runs of 3 separated by a dark cell are not one run of 6.
    assert structure.srs_from_binary(_bright(16, {5: [0, 1, 2, 4, 5, 6]})) == 0.0


def test_block_of_similar_bars_along_the_main_diagonal_does_not_count():
    m = np.zeros((16, 16), bool)
    m[4:12, 4:12] = True  # one homogeneous 8-bar section: every diagonal k has k+1 bright too
    np.fill_diagonal(m, True)
    assert structure.srs_from_binary(m) == 0.0


def test_run_shadowed_by_the_next_diagonal_is_not_counted():
    # Diagonals 3 and 4 both bright over i = 0..5: only diagonal 4 (diagonal 5 dark) counts.
    assert structure.recurrence_run_length(_bright(20, {3: range(6), 4: range(6)})) == 6
    # One bright cell of diagonal k+1 inside the range is enough to drop the run ...
    assert structure.recurrence_run_length(_bright(20, {3: range(6), 4: [5]})) == 0
    # ... one just outside it is not.
    assert structure.recurrence_run_length(_bright(20, {3: range(6), 4: [6]})) == 6


def test_srs_from_latents_with_a_returning_section():
    dim, n_bars = 32, 16
    basis = np.eye(dim)
    bars = [basis[i] for i in range(n_bars)]
    bars[8:12] = bars[0:4]  # section A comes back at bar 8
    wobble = np.stack([basis[20], -basis[20], basis[21], -basis[21]])  # sums to zero per bar
    slots = np.concatenate([bar + 0.3 * wobble for bar in bars])  # [64, 32]
    np.testing.assert_allclose(structure.bar_latents(slots), np.stack(bars), atol=1e-12)
    similarity = structure.bar_similarity(slots)
    assert similarity.shape == (16, 16) and similarity[0, 8] == pytest.approx(1.0)
    assert similarity[0, 1] == pytest.approx(0.0)
    assert structure.section_recurrence_score(slots) == pytest.approx(4 / 16)
    score = structure.mean_section_recurrence_score([slots, slots[:32]])
    assert score == pytest.approx((4 / 16 + 0.0) / 2)


def test_threshold_and_slots_per_bar_are_parameters():
    bars = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [0.6, 0.8]])
    slots = np.repeat(bars, 2, axis=0)  # 2 slots per bar
    sim = structure.bar_similarity(slots, slots_per_bar=2)
    assert sim[0, 1] == pytest.approx(0.6)
    # Threshold 0.5: everything bright, a block -> 0; threshold 0.7: only the period-2 repeats.
    assert structure.section_recurrence_score(slots, slots_per_bar=2) == 0.0
    score = structure.section_recurrence_score(slots, slots_per_bar=2, threshold=0.7, min_run=2)
    assert score == pytest.approx((4 + 2) / 6)  # diagonal 2 (4 cells) and diagonal 4 (2 cells)
    score = structure.section_recurrence_score(slots, slots_per_bar=2, threshold=0.7, min_run=3)
    assert score == pytest.approx(4 / 6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="whole bars"):
        structure.bar_latents(np.zeros((6, 3)))
    with pytest.raises(ValueError, match="without bars"):
        structure.srs_from_binary(np.zeros((0, 0), bool))
    with pytest.raises(ValueError, match="square"):
        structure.recurrence_run_length(np.zeros((3, 4), bool))
