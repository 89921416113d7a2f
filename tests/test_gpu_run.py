"""The prepared GPU run (benchmarks/gpu_run.py, experiments/gpu_run.py): its time plan, its
paper-size bf16 settings, and (slow) the whole run on CPU with the runlocal models on five
prepared chorales, with a time limit that stops the LDM early."""

import json
import pathlib

import pytest

from benchmarks import gpu_run
from benchmarks import gpu_time_plan as time_plan
from phrase_jax import demo, errors
from phrase_jax.music import vocab

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def experiments_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # experiment files import `experiments.*`


def test_a_training_phase_gets_what_the_later_phases_leave():
    now = [0.0]
    shares = {"data": 10.0, "vae": 100.0, "ldm": 50.0, "sample": 20.0}
    budget = time_plan.Budget(200.0, shares, clock=lambda: now[0])
    # At the start: 200 - (50 + 20) = 130 left for vae, at most 1.5 x its share of 100.
    assert budget.limit("vae", stretch=1.5, floor=5.0) == 130.0
    assert budget.limit("vae", stretch=1.2, floor=5.0) == 120.0
    now[0] = 100.0  # 200 - 100 - 20 = 80 left before sampling: 1.5 x 50 fits
    assert budget.limit("ldm", stretch=1.5, floor=5.0) == 75.0
    now[0] = 120.0  # vae ran long: the ldm gets what is left before sampling
    assert budget.limit("ldm", stretch=1.5, floor=5.0) == 60.0
    now[0] = 190.0  # nothing left: the floor
    assert budget.limit("ldm", stretch=1.5, floor=5.0) == 5.0


def test_planned_steps_fit_the_limit_within_bounds():
    plan = dict(planned=1000, setup_s=10.0, efficiency=0.5, min_steps=50, max_scale=4.0)
    # (100 - 20 - 10) s * 0.5 / 0.01 s = 3500 steps.
    assert time_plan.plan_steps(100.0, 0.01, 20.0, **plan) == 3500
    assert time_plan.plan_steps(100.0, 0.001, 20.0, **plan) == 4000  # at most 4 x planned
    assert time_plan.plan_steps(25.0, 0.01, 20.0, **plan) == 50  # no time: the minimum


def _fake_data_dir(root: pathlib.Path, slots_per_bar: int) -> str:
    root.mkdir(parents=True)
    manifest = {"vocab_sha256": vocab.Vocab().sha256, "settings": {"slots_per_bar": slots_per_bar}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


def test_the_default_settings_train_the_paper_models_in_bf16_within_nine_minutes(tmp_path):
    settings = gpu_run.load_settings()
    assert settings.dataset == "pop909" and settings.condition == "lencond"
    assert sum(settings.budget_s[p] for p in gpu_run.PHASES) <= settings.total_budget_s <= 540
    run = gpu_run.GpuRun(settings, tmp_path, log=lambda line: None)
    run.paths["data"] = _fake_data_dir(tmp_path / "data", slots_per_bar=4)
    for phase in ("vae_pretrain", "vae_ae", "vae"):
        config = run.stage_config(phase, time_limit_s=12.5)
        assert (config.model.d_model, config.model.num_encoder_layers) == (512, 3)  # paper
        assert (config.model.dtype, config.model.param_dtype) == ("bfloat16", "float32")
        assert config.compute_dtype == "float32"  # no cast of the fp32 master weights
        assert config.time_limit_s == 12.5 and config.batch_size == 512
        assert config.checkpoint.max_to_keep == 1
    ldm = run.stage_config("ldm", total_steps=123)
    assert ldm.model.n_slots == 512 and ldm.model.width == 512 and ldm.model.num_layers == 6
    assert ldm.model.dtype == "bfloat16" and ldm.model.conditions == ("length",)
    assert ldm.total_steps == 123 and 0 < ldm.ema_decay < 0.999
    evaluate = run.stage_config("evaluate")
    assert evaluate.melody_program == 13 and evaluate.ldm_workdir == run.paths["ldm"]
    with pytest.raises(KeyError, match="ldm.total_stepz"):
        gpu_run.load_settings("ldm.total_stepz=3")


@pytest.mark.slow
def test_runlocal_gpu_run_end_to_end_stops_at_its_time_limit(chorales_data, tmp_path):
    # Every training phase is calibrated to 40 steps; the LDM gets 1 s, which its compilation
    # alone outlasts, so it stops after its first step and the later phases still run.
    settings = gpu_run.load_settings(
        f"chorales,runlocal,data_dir={chorales_data},timings.fp32=False,calibrate.min_steps=40,"
        "budget_s.ldm=1,max_stretch=1.0,min_time_limit_s=0.5,total_budget_s=7200,budget_s.timings=1800,"
        # Limits no loaded CPU reaches for the VAE stages: only the LDM's may bite.
        "budget_s.vae_pretrain=900,budget_s.vae_ae=900,budget_s.vae=900"
    )
    out = tmp_path / "gpu_run"
    lines = []
    record = gpu_run.run_gpu(settings, str(out), log=lines.append)

    assert {name: entry["status"] for name, entry in record["phases"].items()} == {
        name: "ok" for name in gpu_run.PHASES
    }
    saved = json.loads((out / gpu_run.SUMMARY_JSON).read_text())
    assert saved["phases"].keys() == record["phases"].keys() and saved["device"]["platform"]
    assert record["phases"]["data"]["reused"] is True  # the prepared chorales, read-only

    timings = record["phases"]["timings"]
    assert {"vae_train_step_bf16", "ldm_train_step_bf16"} <= set(timings["rows"])
    assert timings["rows"]["vae_train_step_bf16"]["gflop_per_step"] > 0
    # JAX's xla attention computes what ours does; cuDNN is refused on a CPU, and recorded.
    xla = timings["rows"]["dit_self_attention_xla_bf16_fwd_bwd"]
    assert xla["max_deviation_over_std"] < 0.1
    assert "dit_self_attention_cudnn_bf16_fwd_bwd" in timings["failed"]
    assert len((out / gpu_run.TIMINGS_JSONL).read_text().splitlines()) == len(timings["rows"])

    for phase in ("vae_pretrain", "vae_ae", "vae"):
        entry = record["phases"][phase]
        assert entry["total_steps"] == entry["steps_done"] == 40
        assert entry["steps_basis"].startswith("calibrated") and not entry["stopped_by_time"]
    ldm = record["phases"]["ldm"]
    assert ldm["time_limit_s"] == 1.0 and ldm["stopped_by_time"] and ldm["steps_done"] == 1
    assert "valid" in ldm  # the stopped step was evaluated and checkpointed: sampling ran
    assert record["samples"]["totals"]["songs"] == 2 and len(list(out.glob("songs/*.mid"))) == 2
    assert [row["kind"] for row in record["evaluation"]] == ["real", "generated"]
    assert (out / "metrics.md").exists() and (out / gpu_run.LOG_FILE).stat().st_size > 0
    assert "| ldm | ok |" in (out / gpu_run.REPORT_MD).read_text()

    # The tiny bundle fits and loads; the training state and latent shards are gone.
    assert record["phases"]["export"]["written"] is True
    assert (out / "bundle" / "bundle.json").exists()
    assert not list(out.glob("runs/*/checkpoints")) and not list(out.glob("runs/latents/*.npz"))
    assert record["size_ok"] and record["output_mb"] < settings.max_output_mb
    assert lines[-1].startswith("[gpu-run] done in")

    with pytest.raises(errors.UserError, match="not empty"):
        gpu_run.run_gpu(settings, str(out), log=lines.append)
    assert {p.name for p in demo.PHASES[1:]} <= set(gpu_run.PHASES)


def test_a_failed_phase_skips_the_phases_that_need_it_and_the_summary_is_written(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("POP909_DIR", raising=False)
    settings = gpu_run.load_settings(f"runlocal,data_dir={tmp_path / 'no_data'}")
    lines = []
    record = gpu_run.run_gpu(settings, str(tmp_path / "out"), log=lines.append)
    status = {name: entry["status"] for name, entry in record["phases"].items()}
    assert status["data"].startswith("failed: UserError") and "make data" in status["data"]
    assert status["timings"] == "skipped: needs data" and status["vae_ae"].startswith("skipped")
    assert all(s.startswith("skipped") for name, s in status.items() if name != "data")
    saved = json.loads((tmp_path / "out" / gpu_run.SUMMARY_JSON).read_text())
    assert saved["phases"]["data"]["status"] == status["data"] and saved["size_ok"]
    assert any("failed: UserError" in line for line in lines)
