"""Section recurrence score (SRS, SPEC 7, ref): how much of a song repeats earlier bars.

Bar latent = mean of its slot latents; bar self-similarity = cosine similarity of bar latents;
a cell is bright when its similarity exceeds the threshold (strictly, as in the ref). On every
diagonal k >= 1 of the upper triangle (cells (i, i + k), indexed by i) a run of at least
`min_run` consecutive bright cells counts, unless diagonal k + 1 has a bright cell at any index
of the same range (i .. i + run - 1): such runs belong to a block of mutually similar bars (one
homogeneous section, a band along the main diagonal) rather than a section that comes back.
SRS = total counted run length / n_bars. Real POP909 songs score about 0.444 (ref).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_RUN = 4


def bar_latents(slot_latents_td: np.ndarray, slots_per_bar: int = 4) -> np.ndarray:
    """[T, D] slot latents (T = slots_per_bar * n_bars) -> [n_bars, D] mean per bar."""
    slot_latents_td = np.asarray(slot_latents_td, np.float64)
    total = slot_latents_td.shape[0]
    if slot_latents_td.ndim != 2 or total % slots_per_bar:
        raise ValueError(
            f"bar_latents: {slot_latents_td.shape} slot latents are not whole bars of "
            f"{slots_per_bar} slots; trim the song to slots_per_bar * n_bars first"
        )
    return slot_latents_td.reshape(total // slots_per_bar, slots_per_bar, -1).mean(axis=1)


def bar_similarity(slot_latents_td: np.ndarray, slots_per_bar: int = 4) -> np.ndarray:
    """[B, B] cosine similarity between the song's bar latents (a zero bar latent is similar
    to nothing, itself included)."""
    bars_bd = bar_latents(slot_latents_td, slots_per_bar)
    norms = np.linalg.norm(bars_bd, axis=1, keepdims=True)
    unit_bd = bars_bd / np.maximum(norms, 1e-12)
    return unit_bd @ unit_bd.T


def _runs(bright: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of True in a 1-d bool array."""
    padded = np.concatenate([[False], bright, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [
        (int(start), int(stop - start)) for start, stop in zip(edges[::2], edges[1::2], strict=True)
    ]


def recurrence_run_length(bright_bb: np.ndarray, min_run: int = DEFAULT_MIN_RUN) -> int:
    """Total length of the counted diagonal runs of a [B, B] bool matrix (upper triangle)."""
    bright_bb = np.asarray(bright_bb, bool)
    if bright_bb.ndim != 2 or bright_bb.shape[0] != bright_bb.shape[1]:
        raise ValueError(f"recurrence_run_length needs a square matrix, got {bright_bb.shape}")
    n_bars = bright_bb.shape[0]
    total = 0
    for k in range(1, n_bars):
        above = np.diagonal(bright_bb, offset=k + 1)  # empty for the last diagonal
        for start, length in _runs(np.diagonal(bright_bb, offset=k)):
            if length >= min_run and not above[start : start + length].any():
                total += length
    return total


def srs_from_binary(bright_bb: np.ndarray, min_run: int = DEFAULT_MIN_RUN) -> float:
    """SRS of a [B, B] bool self-similarity matrix: counted run length / B."""
    n_bars = np.asarray(bright_bb).shape[0]
    if n_bars == 0:
        raise ValueError("srs_from_binary: a song without bars has no SRS")
    return recurrence_run_length(bright_bb, min_run) / n_bars


def section_recurrence_score(
    slot_latents_td: np.ndarray,
    slots_per_bar: int = 4,
    threshold: float = DEFAULT_THRESHOLD,
    min_run: int = DEFAULT_MIN_RUN,
) -> float:
    """SRS of one song from its [slots_per_bar * n_bars, D] slot latents."""
    similarity = bar_similarity(slot_latents_td, slots_per_bar)
    return srs_from_binary(similarity > threshold, min_run)


def mean_section_recurrence_score(
    songs: Sequence[np.ndarray],
    slots_per_bar: int = 4,
    threshold: float = DEFAULT_THRESHOLD,
    min_run: int = DEFAULT_MIN_RUN,
) -> float:
    """Mean SRS over songs, each a trimmed [slots_per_bar * n_bars, D] array."""
    if not songs:
        raise ValueError("mean_section_recurrence_score: no songs given")
    return float(
        np.mean([section_recurrence_score(s, slots_per_bar, threshold, min_run) for s in songs])
    )
