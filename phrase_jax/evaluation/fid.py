"""PhraseFID and its n-gram variants (SPEC 7, with the ref's matrix square root fixed).

Each set is a list of songs, each song a [T_i, D] array of phrase latents in VAE space (unscaled;
both sets must be in the same space). Generated songs keep only their first
slots_per_bar * n_bars slots (`trim_songs`). PhraseFID fits one Gaussian to all phrase latents of
a set (each slot one sample) and returns the Fréchet distance

    ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

Tr((S_1 S_2)^(1/2)) is computed in the symmetric form Tr((A S_2 A)^(1/2)) with A = S_1^(1/2):
A S_2 A is symmetric positive semi-definite, so its square root comes from `eigh` with no
complex round-off and no singular-matrix retries (the ref took an eigendecomposition of the
non-symmetric product itself). The n-gram FID fits the Gaussian to n consecutive latents
concatenated ([n * D] windows, all windows inside each song; songs shorter than n give none).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_ORDERS = (1, 2, 4, 8)


def trim_songs(
    latents_nsd: np.ndarray | Sequence[np.ndarray],
    n_bars: Sequence[int],
    slots_per_bar: int = 4,
) -> list[np.ndarray]:
    """Song i's first slots_per_bar * n_bars[i] latents: a list of [T_i, D] float64 arrays.

    `latents_nsd` is [N, S, D] (padded sampler output) or a list of [S_i, D] arrays.
    """
    if len(latents_nsd) != len(n_bars):
        raise ValueError(f"trim_songs: {len(latents_nsd)} songs but {len(n_bars)} bar counts")
    songs = []
    for index, (song, bars) in enumerate(zip(latents_nsd, n_bars, strict=True)):
        song = np.asarray(song, np.float64)
        length = int(bars) * slots_per_bar
        if song.ndim != 2 or not 0 <= length <= song.shape[0]:
            raise ValueError(
                f"trim_songs: song {index} has latents of shape {song.shape}, which cannot hold "
                f"{bars} bars of {slots_per_bar} slots"
            )
        songs.append(song[:length])
    return songs


def gaussian_statistics(samples_nd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], unbiased covariance [D, D]) of N >= 2 samples [N, D]."""
    samples_nd = np.asarray(samples_nd, np.float64)
    if samples_nd.ndim != 2 or samples_nd.shape[0] < 2:
        raise ValueError(
            f"a Gaussian fit needs [N >= 2, D] samples, got shape {samples_nd.shape}: "
            "use more or longer songs"
        )
    return samples_nd.mean(axis=0), np.cov(samples_nd, rowvar=False).reshape(
        samples_nd.shape[1], samples_nd.shape[1]
    )


def _psd_sqrt(matrix_dd: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; round-off negative eigenvalues count as 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix_dd + matrix_dd.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(
    mu1_d: np.ndarray, sigma1_dd: np.ndarray, mu2_d: np.ndarray, sigma2_dd: np.ndarray
) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1_d, mu2_d = np.atleast_1d(mu1_d), np.atleast_1d(mu2_d)
    sigma1_dd, sigma2_dd = np.atleast_2d(sigma1_dd), np.atleast_2d(sigma2_dd)
    if mu1_d.shape != mu2_d.shape or sigma1_dd.shape != sigma2_dd.shape:
        raise ValueError(
            f"frechet_distance: mismatched shapes {mu1_d.shape}/{sigma1_dd.shape} vs "
            f"{mu2_d.shape}/{sigma2_dd.shape}"
        )
    root1 = _psd_sqrt(sigma1_dd)
    middle = root1 @ sigma2_dd @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt_product = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1_d - mu2_d
    distance = diff @ diff + np.trace(sigma1_dd) + np.trace(sigma2_dd) - 2.0 * trace_sqrt_product
    return float(max(distance, 0.0))  # a tiny negative value is round-off of a zero distance


def fid_from_samples(samples_a_nd: np.ndarray, samples_b_md: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to [N, D] and [M, D] samples."""
    return frechet_distance(*gaussian_statistics(samples_a_nd), *gaussian_statistics(samples_b_md))


def ngram_vectors(songs: Sequence[np.ndarray], n: int) -> np.ndarray:
    """[M, n * D]: every window of n consecutive latents of each [T_i, D] song, concatenated in
    order (window j of a song = latents j..j+n-1); M = sum_i max(T_i - n + 1, 0)."""
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}")
    if not songs:
        raise ValueError("ngram_vectors: no songs given")
    dim = np.asarray(songs[0]).shape[-1]
    windows = []
    for song in songs:
        song = np.asarray(song, np.float64)
        count = song.shape[0] - n + 1
        if count > 0:
            windows.append(np.concatenate([song[k : k + count] for k in range(n)], axis=1))
    if not windows:
        return np.zeros((0, n * dim))
    return np.concatenate(windows, axis=0)


def phrase_fid(
    generated: Sequence[np.ndarray], reference: Sequence[np.ndarray], n: int = 1
) -> float:
    """PhraseFID (n = 1) or its n-gram variant between two lists of [T_i, D] songs."""
    generated_windows = ngram_vectors(generated, n)
    reference_windows = ngram_vectors(reference, n)
    for name, windows in (("generated", generated_windows), ("reference", reference_windows)):
        if windows.shape[0] < 2:
            raise ValueError(
                f"phrase_fid: the {name} set has {windows.shape[0]} windows of {n} latents; "
                "a Gaussian fit needs at least 2"
            )
    return fid_from_samples(generated_windows, reference_windows)


def ngram_fids(
    generated: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    orders: Sequence[int] = DEFAULT_ORDERS,
) -> dict[str, float]:
    """{"phrase_fid": n=1, "fid_2gram": ..., "fid_4gram": ..., "fid_8gram": ...} for `orders`."""
    return {
        ("phrase_fid" if n == 1 else f"fid_{n}gram"): phrase_fid(generated, reference, n)
        for n in orders
    }
