"""The VAE benchmark on a tiny model: records, JSON lines, timing helpers, torch reference parity.

The benchmark must run on one real device even under the 8 simulated devices of the tests.
"""

import json

import numpy as np
import pytest

from benchmarks import bench_vae, common
from experiments import vae_common
from phrase_jax.models import vae
from phrase_jax.music.vocab import BOS, COMPRESS_QUERIES, EOS, PAD

TINY = vae.VAEConfig(
    d_model=32,
    num_heads=2,
    head_dim=16,
    d_ff=64,
    num_encoder_layers=1,
    num_decoder_layers=2,
    relative_buckets=8,
    relative_max_distance=16,
    latent_dim=8,
)
SMALL_RUN = ["--runs", "2", "--batch_size", "4", "--length", "12", "--phrases", "6"]


def test_time_calls_keeps_the_first_call_apart_and_takes_the_median():
    calls = []

    def fn():
        calls.append(len(calls))

    timing = common.time_calls(fn, runs=3, warmup=2)
    assert len(calls) == 5 and len(timing.times_s) == 3
    assert timing.median_s == sorted(timing.times_s)[1]
    assert timing.first_s >= 0.0 and timing.spread >= 0.0
    with pytest.raises(ValueError, match="runs >= 1"):
        common.time_calls(fn, runs=0)


def test_memory_and_json_lines_helpers(tmp_path):
    assert common.peak_rss_mib() >= common.current_rss_mib() * 0.5 > 0.0
    assert common.speedup(None, 2.0) is None and common.speedup(3.0, 1.5) == 2.0
    path = tmp_path / "sub" / "bench.jsonl"
    common.write_json_lines(str(path), [{"a": 1}])
    common.write_json_lines(str(path), [{"b": 2.5}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"b": 2.5}]


def test_cpu_vector_extensions_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma avx512f\nprocessor\t: 1\n")
    assert common.cpu_vector_extensions(str(cpuinfo)) == ["sse4_2", "avx2", "fma", "avx512f"]
    assert common.cpu_vector_extensions(str(tmp_path / "missing")) == []


def test_full_batch_has_no_padding_and_the_vae_layout():
    batch = bench_vae.full_batch(3, 16, 1000)
    assert batch["encoder_ids"].shape == batch["decoder_inputs"].shape == (3, 16)
    assert (batch["encoder_ids"][:, :4] == COMPRESS_QUERIES).all()
    assert (batch["encoder_ids"][:, 4] == BOS).all() and (batch["encoder_ids"][:, -1] == EOS).all()
    assert (batch["decoder_inputs"][:, 0] == BOS).all()
    assert (batch["decoder_targets"][:, -1] == EOS).all()
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], batch["decoder_targets"][:, :-1])
    assert batch["encoder_mask"].all() and batch["decoder_mask"].all()
    assert not (batch["encoder_ids"] == PAD).any()
    with pytest.raises(ValueError, match="too short"):
        bench_vae.full_batch(2, 6, 1000)


def test_decoded_steps_counts_the_positions_the_loop_ran():
    ids = np.full((2, 6), PAD, np.int32)
    ids[0, :3] = [30, 31, EOS]
    ids[1, :2] = [30, EOS]
    assert bench_vae.decoded_steps(ids) == 3
    ids[1, :] = 40  # a row without [EOS] keeps the loop running to max_len
    assert bench_vae.decoded_steps(ids) == 6


def test_benchmark_records_on_a_tiny_model(tmp_path):
    path = tmp_path / "bench.jsonl"
    records = bench_vae.main(
        [*SMALL_RUN, "--decode_lengths", "5", "--json", str(path)], config=TINY
    )
    by_name = {r["benchmark"]: r for r in records}
    assert set(by_name) == {"train_step", "greedy_decode_5", "peak_rss_jax"}
    train = by_name["train_step"]
    assert train["median_s"] > 0 and len(train["times_s"]) == 2
    assert train["tokens_per_s"] == round(4 * 24 / train["median_s"])
    assert train["reference_s"] is None  # the figures are for the paper model only
    decode = by_name["greedy_decode_5"]
    assert decode["phrases"] == 6 and 1 <= decode["steps"] <= 5 and decode["median_s"] > 0
    assert by_name["peak_rss_jax"]["mib"] > 0
    assert [json.loads(line)["benchmark"] for line in path.read_text().splitlines()] == [
        r["benchmark"] for r in records
    ]


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        bench_vae.parse_args(["--skip", "everything"])


@pytest.mark.parity
def test_reference_decodes_the_same_tokens_and_trains():
    """Same weights on both sides: transformers' cached greedy loop gives our tokens."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from benchmarks import torch_reference

    records = bench_vae.main(
        [*SMALL_RUN, "--runs", "1", "--decode_lengths", "9", "--reference", "--skip", "train"],
        config=TINY,
    )
    torch_decode = {r["benchmark"]: r for r in records}["torch_greedy_decode_9"]
    assert torch_decode["rows_equal_to_jax"] == 1.0
    assert torch_decode["jax_speedup"] > 0

    reference = torch_reference.build_reference(TINY)
    step = torch_reference.make_train_step(
        reference, bench_vae.full_batch(4, 12, 1000), learning_rate=3e-3
    )
    losses = [step() for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_first_argmax_matches_jnp_argmax_with_ties_and_nan():
    """The decoding speed-up keeps argmax semantics: first maximum, NaN counts as maximum."""
    import jax.numpy as jnp

    from phrase_jax.models import decoding

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 1000)).astype(np.float32)
    logits[1, [7, 500]] = 9.0  # a tie: the first index wins
    logits[2, [3, 900]] = np.nan
    logits[3] = -np.inf
    ours = np.asarray(decoding.first_argmax(jnp.asarray(logits)))
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
    assert ours[1] == 7 and ours[2] == 3 and ours[3] == 0


def test_non_pad_tokens_per_second_before_and_after_buckets(chorales_data, monkeypatch):
    # Two buckets, of which the chorale phrases fill only the first: two step shapes to compile.
    monkeypatch.setattr(vae_common, "PHRASE_BUCKETS", (32, 128))
    records = bench_vae.main(
        ["--runs", "1", "--skip", "train,decode", "--data_dir", chorales_data,
         "--bucket_tokens", "256"],
        config=TINY,
    )  # fmt: skip
    by_name = {r["benchmark"]: r for r in records}
    fixed, buckets = by_name["vae_epoch_fixed"], by_name["vae_epoch_buckets"]
    assert fixed["shapes"].startswith("128x128+128:") and buckets["shapes"].startswith("8x32+27:")
    assert float(fixed["padding"].rstrip("%")) > float(buckets["padding"].rstrip("%"))
    for row in (fixed, buckets):
        assert row["epoch_s"] > 0 and row["nonpad_tokens_per_s"] > 0
    ratio = buckets["nonpad_tokens_per_s"] / fixed["nonpad_tokens_per_s"]
    assert by_name["vae_bucket_speedup"]["nonpad_tokens_per_s_ratio"] == pytest.approx(
        ratio, rel=0.01
    )
