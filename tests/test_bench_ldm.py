"""The LDM benchmark on tiny models: every part runs and reports every field, fast.

The benchmark must run on one real device even under the 8 simulated devices of the tests.
"""

import json

import numpy as np
import pytest

from benchmarks import bench_ldm
from phrase_jax.generation import slot_decoding
from phrase_jax.models import dit, vae

TINY_LDM = dit.PhraseLDMConfig(
    n_slots=16, latent_dim=8, width=16, num_layers=1, num_heads=2, head_dim=8, num_kv_heads=1,
    ff_dim=16, rope_dim=4, time_features=8, cond_dim=8, memory_dim=8, conditions=("length",),
    max_bars=4,
)  # fmt: skip
TINY_VAE = vae.VAEConfig(
    d_model=16, num_heads=2, head_dim=8, d_ff=16, num_encoder_layers=1, num_decoder_layers=1,
    relative_buckets=4, relative_max_distance=8, latent_dim=8,
)  # fmt: skip
SONG_FIELDS = {"diffusion_s", "decode_s", "assembly_s", "midi_write_s", "end_to_end_s",
               "decoder_rows", "decoded_slots", "bars", "meets_target"}  # fmt: skip


def test_tiny_benchmark_reports_every_part(tmp_path, monkeypatch):
    path = tmp_path / "bench.jsonl"
    argv = ["--runs", "1", "--train_batches", "2", "--remat_batches", "2", "--step_batches", "1",
            "--bars", "4", "--max_len", "6", "--ddpm_steps", "4", "--samplers", "ddim:2",
            "--trained_ldm_workdir", "", "--real_lengths_data", str(tmp_path),
            "--json", str(path)]  # fmt: skip
    # Songs whose longest phrase is 3 decoder steps (the p50 of a fake corpus).
    monkeypatch.setattr(bench_ldm, "longest_phrase_lengths", lambda data_dir: {50: 3})
    records = bench_ldm.main(argv, ldm_config=TINY_LDM, vae_config=TINY_VAE)
    by_name = {r["benchmark"]: r for r in records}
    expected = {"train_step_b2", "train_step_b2_remat", "denoise_step_b1", "denoise_step_b1_bf16",
                "peak_rss"} | {
        "song_ddpm_1000_tracks", "song_ddim_2_tracks", "song_ddim_2_all",
        "song_p50_longest_phrase_3_ddim_2_tracks",
    }  # fmt: skip
    assert set(by_name) == expected
    for name in expected - {"peak_rss"}:
        record = by_name[name]
        assert record["median_s"] > 0 and len(record["times_s"]) == 1
        assert record["reference_s"] is None  # no issue figures for a custom config
    song_rows = ("song_ddpm_1000_tracks", "song_ddim_2_tracks", "song_ddim_2_all",
                 "song_p50_longest_phrase_3_ddim_2_tracks")  # fmt: skip
    for name in song_rows:
        assert SONG_FIELDS <= set(by_name[name])
        assert by_name[name]["bars"] == 4 and by_name[name]["decoded_slots"] == 16
    ddpm, ddim = by_name["song_ddpm_1000_tracks"], by_name["song_ddim_2_tracks"]
    assert ddpm["extrapolated_from_steps"] == 4 and "extrapolated_from_steps" not in ddim
    # Scaled to 1000 steps: 250x the diffusion time of the 4 timed steps.
    assert ddpm["diffusion_s"] > 10 * ddim["diffusion_s"] and ddpm["median_s"] > ddim["median_s"]
    # Decoding only track slots skips each bar's b-1 slot; no slot is near the far [INST].
    assert by_name["song_ddim_2_all"]["decoder_rows"] == 16
    assert by_name["song_ddim_2_tracks"]["decoder_rows"] == 12
    assert 0 <= by_name["denoise_step_b1_bf16"]["max_deviation_over_std"] < 1.0
    assert [json.loads(line)["benchmark"] for line in path.read_text().splitlines()] == [
        r["benchmark"] for r in records
    ]


def test_longest_phrase_lengths_are_per_song_percentiles(monkeypatch):
    from data_pipelines import sources

    # Song i has one phrase of i tokens among short ones; slots past 128 bars do not count.
    songs = [{"slots": [[1]] * 3 + [[1] * i]} for i in range(1, 11)]
    songs.append({"slots": [[1]] * 512 + [[1] * 500]})
    monkeypatch.setattr(sources, "read_songs", lambda d, split: songs if split == "train" else [])
    # Longest per song (+ [EOS]): 2 (twice: i = 1 and the long song), 3, ..., 11.
    assert bench_ldm.longest_phrase_lengths("unused", qs=(0, 50, 100)) == {0: 2, 50: 6, 100: 11}


def test_sampler_list_and_skip_are_checked():
    assert bench_ldm.parse_samplers("ddim:50,dpmpp:20") == [("ddim", 50), ("dpm_solver_pp", 20)]
    with pytest.raises(ValueError, match="METHOD:STEPS"):
        bench_ldm.parse_samplers("euler:10")
    with pytest.raises(SystemExit):
        bench_ldm.parse_args(["--skip", "nothing"])


def test_track_slots_skip_bar_ends_and_inst_padding():
    special = {"inst": [1.0, 0.0], "bar": [0.0, 1.0], "sep": [-1.0, -1.0]}
    latents = np.full((1, 8, 2), 5.0, np.float32)  # real phrases, far from every special
    latents[0, 1] = [0.9, 0.1]  # [INST] padding in a track slot
    latents[0, 2] = [0.3, -0.2]  # nearest to [INST] but outside its radius: decoded
    mask = slot_decoding.slots_to_decode(latents, np.array([7]), special, slots_per_bar=4)
    assert mask.tolist() == [[True, False, True, False, True, True, True, False]]
