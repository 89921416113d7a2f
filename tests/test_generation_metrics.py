"""Length accuracy, diversity and the latent-metrics summary (SPEC 7)."""

import numpy as np
import pytest

from phrase_jax.evaluation import generation


def test_length_buckets_and_accuracy():
    assert generation.length_bucket(64) == 6 and generation.length_bucket(69) == 6
    assert generation.length_bucket(70) == 7 and generation.length_bucket(59) == 5
    scores = generation.length_accuracy([60, 69, 70, 59, 64], 64)
    assert scores["length_bucket_accuracy"] == pytest.approx(3 / 5)
    assert scores["length_exact_accuracy"] == pytest.approx(1 / 5)
    assert scores["mean_abs_bar_error"] == pytest.approx((4 + 5 + 6 + 5 + 0) / 5)
    per_song = generation.length_accuracy([12, 35, 128], [21, 30, 128])
    assert per_song["length_bucket_accuracy"] == pytest.approx(2 / 3)
    assert per_song["length_exact_accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no generated songs"):
        generation.length_accuracy([], 64)


def test_mean_pairwise_distance_known_triangle_and_chunking():
    points = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # sides 3, 4, 5
    assert generation.mean_pairwise_distance(points) == pytest.approx(4.0)
    assert generation.mean_pairwise_distance(points, chunk=1) == pytest.approx(4.0)
    assert generation.mean_pairwise_distance(points[:1]) == 0.0
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(50, 5))
    brute = np.linalg.norm(cloud[:, None] - cloud[None], axis=-1)[np.triu_indices(50, 1)].mean()
    assert generation.mean_pairwise_distance(cloud, chunk=7) == pytest.approx(brute, rel=1e-10)


def test_song_diversity_and_phrase_spread():
    same_mean = [np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([[0.0, 2.0], [0.0, -2.0]])]
    assert generation.song_diversity(same_mean) == pytest.approx(0.0)
    # Phrases (1,0), (-1,0), (0,2), (0,-2): pair distances 2, 4, and four of sqrt(5).
    expected = (2 + 4 + 4 * np.sqrt(5)) / 6
    assert generation.phrase_spread(same_mean) == pytest.approx(expected)
    apart = [np.zeros((4, 2)), np.full((4, 2), 3.0)]
    assert generation.song_diversity(apart) == pytest.approx(np.sqrt(18))


def test_latent_generation_metrics_ignores_padding():
    rng = np.random.default_rng(1)
    n_bars = [12, 10, 8, 11]
    reference = [rng.normal(size=(4 * n, 6)) for n in n_bars]
    padded = np.full((4, 64, 6), 1e3)  # padding far from every real latent
    for i, song in enumerate(reference):
        padded[i, : song.shape[0]] = song
    metrics = generation.latent_generation_metrics(
        padded, n_bars, reference, target_n_bars=10, fid_orders=(1, 2)
    )
    assert metrics["phrase_fid"] == pytest.approx(0.0, abs=1e-8)
    assert metrics["fid_2gram"] == pytest.approx(0.0, abs=1e-8)
    assert metrics["srs"] == pytest.approx(metrics["reference_srs"])
    assert metrics["length_bucket_accuracy"] == pytest.approx(3 / 4)
    assert metrics["length_exact_accuracy"] == pytest.approx(1 / 4)
    assert metrics["mean_n_bars"] == pytest.approx(41 / 4)
    assert metrics["phrase_spread"] == pytest.approx(generation.phrase_spread(reference), rel=1e-12)
    assert 0 < metrics["song_diversity"] < metrics["phrase_spread"]
    assert "length_bucket_accuracy" not in generation.latent_generation_metrics(
        padded, n_bars, reference, fid_orders=(1,)
    )
