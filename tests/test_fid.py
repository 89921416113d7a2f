"""PhraseFID and n-gram FIDs (SPEC 7) against closed forms and scipy's matrix square root."""

import numpy as np
import pytest
import scipy.linalg

from phrase_jax.evaluation import fid


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's sqrtm of the (non-symmetric) product."""
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_exact_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    assert expected == pytest.approx(5.0 + 4.0 + 1.0)  # 1+0+4 means, (1-3)^2 + (2-1)^2 + 0
    got = fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, abs=1e-10)


def test_matches_scipy_sqrtm_for_full_covariances():
    rng = np.random.default_rng(0)
    for dim in (1, 4, 16):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim)
        expected = _scipy_frechet(mu1, s1, mu2, s2)
        assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
        assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def test_same_gaussian_and_same_set_give_zero():
    rng = np.random.default_rng(1)
    s = _random_spd(rng, 8)
    assert fid.frechet_distance(np.ones(8), s, np.ones(8), s) == pytest.approx(0.0, abs=1e-9)
    samples = rng.normal(size=(300, 8))
    assert fid.fid_from_samples(samples, samples) == pytest.approx(0.0, abs=1e-9)


def test_singular_covariances_stay_finite():
    """Fewer samples than dimensions: rank-deficient covariances, where sqrtm of the product
    is ill-conditioned; the symmetric form still gives a finite, non-negative value."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(6, 16)) + 1.0
    value = fid.fid_from_samples(a, b)
    assert np.isfinite(value) and value > 0
    assert fid.fid_from_samples(a, a) == pytest.approx(0.0, abs=1e-8)


def test_large_samples_approach_the_analytic_value():
    rng = np.random.default_rng(3)
    mu1, mu2 = np.zeros(4), np.array([0.5, 0.0, -0.5, 1.0])
    std1, std2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.5, 1.0, 0.5, 2.0])
    a = mu1 + std1 * rng.normal(size=(40_000, 4))
    b = mu2 + std2 * rng.normal(size=(40_000, 4))
    analytic = ((mu1 - mu2) ** 2).sum() + ((std1 - std2) ** 2).sum()
    assert fid.fid_from_samples(a, b) == pytest.approx(analytic, rel=0.03)


def test_ngram_vectors_concatenate_windows_within_songs():
    songs = [np.arange(10.0).reshape(5, 2), np.arange(6.0).reshape(3, 2) + 100, np.ones((1, 2))]
    grams = fid.ngram_vectors(songs, 2)
    assert grams.shape == (4 + 2 + 0, 4)
    np.testing.assert_array_equal(grams[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(grams[3], [6, 7, 8, 9])
    np.testing.assert_array_equal(grams[4], [100, 101, 102, 103])  # no window crosses songs
    assert fid.ngram_vectors(songs, 4).shape == (2, 8)
    assert fid.ngram_vectors(songs, 8).shape == (0, 16)
    np.testing.assert_array_equal(fid.ngram_vectors(songs, 1), np.concatenate(songs))
    with pytest.raises(ValueError, match="order"):
        fid.ngram_vectors(songs, 0)


def test_trim_songs_drops_padding():
    latents = np.full((2, 12, 3), 1e6)
    latents[0, :8], latents[1, :4] = 1.0, 2.0
    trimmed = fid.trim_songs(latents, [2, 1], slots_per_bar=4)
    assert [t.shape for t in trimmed] == [(8, 3), (4, 3)]
    assert trimmed[0].max() == 1.0 and trimmed[1].max() == 2.0
    with pytest.raises(ValueError, match="song 1"):
        fid.trim_songs(latents, [1, 4])
    with pytest.raises(ValueError, match="bar counts"):
        fid.trim_songs(latents, [1])


def test_ngram_fids_keys_and_values():
    rng = np.random.default_rng(4)
    real = [rng.normal(size=(40, 3)) for _ in range(10)]
    shifted = [song + 2.0 for song in real]
    scores = fid.ngram_fids(shifted, real, orders=(1, 2, 4))
    assert set(scores) == {"phrase_fid", "fid_2gram", "fid_4gram"}
    # A constant shift of 2 in every dimension moves the mean only: n * 3 dims * 4.
    assert scores["phrase_fid"] == pytest.approx(12.0, rel=1e-6)
    assert scores["fid_4gram"] == pytest.approx(48.0, rel=1e-6)
    assert fid.ngram_fids(real, real, orders=(1, 8))["fid_8gram"] == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="generated set has 0 windows"):
        fid.phrase_fid([np.ones((3, 3))], real, n=4)
