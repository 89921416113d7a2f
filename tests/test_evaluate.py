"""The evaluation stage end to end on a tiny chain (5 prepared songs, Bach chorales and POP909
when present → untrained runlocal VAE → real latent extraction → untrained runlocal LDMs):
metrics.json / metrics.md with the real, generated, comparison and reported rows, the
self-similarity PNG, the real row's PhraseFID recomputed from the npz shards, and sets whose
metrics are undefined."""

import json
import math
import pathlib

import numpy as np
import pytest
from stage_fixtures import chorales_only, load_config, save_tiny_ldm, save_tiny_vae

from phrase_jax import config_lib, errors, main
from phrase_jax.artifacts import bundle, real_statistics
from phrase_jax.evaluation import descriptor_rows, fid, report
from phrase_jax.generation import generate
from phrase_jax.music import midi_io
from phrase_jax.music.events import Bar, Note, Song
from phrase_jax.stages import evaluate

STEPS = 2
# The second dataset's chain reuses the first one's compiled programs (same shapes).
pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")


@pytest.fixture(scope="module")
def chain(prepared, tmp_path_factory) -> dict[str, pathlib.Path]:
    """5 songs (3 train, 1 valid, 1 test), their latents, an exact-bars LDM and a
    length-bucket + sections LDM on them."""
    root = tmp_path_factory.mktemp("eval_chain")
    dirs = {name: root / name for name in ("vae", "latents", "ldm_bars", "ldm_cond")}
    dirs["data"] = pathlib.Path(prepared.dir)
    save_tiny_vae(dirs["vae"])
    extract = (
        f"runlocal,data.dir={dirs['data']},vae_workdir={dirs['vae']},max_slots={prepared.max_slots}"
    )
    main.run(load_config("extract", extract), str(dirs["latents"]))
    save_tiny_ldm(dirs["ldm_bars"], dirs["latents"], ("bars",))
    save_tiny_ldm(dirs["ldm_cond"], dirs["latents"], ("length", "sections"))
    return dirs


def _finite_or_null(value) -> bool:
    return value is None or (isinstance(value, int | float) and math.isfinite(value))


def test_stage_writes_metrics_table_and_plot(chain, prepared, tmp_path):
    spb = prepared.slots_per_bar
    midi_dir = tmp_path / "held_out_midi"  # the held-out songs themselves, as MIDI files
    midi_dir.mkdir()
    for split in ("valid", "test"):
        for song in descriptor_rows.prepared_songs(str(chain["data"]), split):
            midi_io.song_to_midi(song).write(str(midi_dir / f"{song.name}.mid"))
    arg = (
        f"runlocal,ldm_workdir={chain['ldm_bars']},steps={STEPS},"
        f"compare.ldm_workdir={chain['ldm_cond']},compare.sampler=ddpm,"
        f"melody_program={prepared.melody_program},extra_midi_dirs={midi_dir}"
    )
    main.run(load_config("evaluate", arg), str(tmp_path))
    result = json.loads((tmp_path / evaluate.METRICS_JSON).read_text())
    # The model-independent table: generated rows, the ceiling, the extra folder, which holds
    # the very songs of the real statistics.
    midi_rows = {row["kind"]: row["metrics"] for row in result["midi_rows"]}
    assert list(midi_rows) == ["generated", "comparison", "ceiling", "midi folder"]
    assert midi_rows["midi folder"]["mean_overlap"] == pytest.approx(1.0)
    assert midi_rows["generated"]["songs"] == 2 and result["real_statistics"]["songs"] == 2
    for metrics in midi_rows.values():
        assert metrics["mean_overlap"] is None or 0.0 <= metrics["mean_overlap"] <= 1.0
    stats = real_statistics.load(str(tmp_path))
    assert stats.source["splits"] == ["valid", "test"] and stats.ceiling is not None
    rows = {row["kind"]: row for row in result["rows"]}
    assert [row["kind"] for row in result["rows"]] == ["real", "generated", "comparison"]
    assert len(result["reported"]) == 3
    for row in result["rows"] + result["reported"]:
        assert all(_finite_or_null(v) for v in row["metrics"].values()), row

    real = rows["real"]["metrics"]
    assert real["songs"] == 2 and "length_bucket_accuracy" not in real
    for key in ("phrase_fid", "fid_2gram", "fid_4gram", "fid_8gram", "srs", "song_diversity"):
        assert real[key] is not None and real[key] >= 0, key
    assert 0.0 <= real["memorisation_rate"] <= 1.0 and real["notes_per_bar"] > 0
    assert result["reference"]["songs"] == 3 and result["reference"]["training_melodies"] == 3

    # The real row's PhraseFID, recomputed from the shards: held-out vs all 3 training songs.
    manifest = json.loads((chain["latents"] / "manifest.json").read_text())

    def shard_songs(split):
        songs = []
        for name in manifest["shards"][split]:
            with np.load(chain["latents"] / name) as shard:
                songs += fid.trim_songs(shard["latents"], shard["n_bars"], spb)
        return songs

    held_out = shard_songs("valid") + shard_songs("test")
    expected = fid.phrase_fid(held_out, shard_songs("train"))
    assert real["phrase_fid"] == pytest.approx(expected, rel=1e-9)

    # Exact bars end each generated song at 4 bars; the comparison's length bucket only ends a
    # song at a slot near the [SEP] latent, which an untrained model may never produce.
    for kind, most_bars in (("generated", 4), ("comparison", prepared.max_slots // spb)):
        generated, info = rows[kind]["metrics"], rows[kind]["info"]
        assert generated["songs"] == 2 and 0 <= generated["mean_n_bars"] <= most_bars
        assert info["bars"] == 4 and 0.0 <= generated["length_bucket_accuracy"] <= 1.0
    assert rows["generated"]["info"]["sampler"] == "ddim"
    assert rows["comparison"]["info"]["sampler"] == "ddpm"
    assert rows["comparison"]["info"]["ldm_workdir"] == str(chain["ldm_cond"])
    for kind in ("generated", "comparison"):
        n_bars = np.array(rows[kind]["info"]["n_bars"])
        assert rows[kind]["metrics"]["length_exact_accuracy"] == np.mean(n_bars == 4)
        assert rows[kind]["metrics"]["mean_n_bars"] == np.mean(n_bars)

    markdown = (tmp_path / report.MARKDOWN).read_text()
    for row in result["rows"]:
        assert row["name"] in markdown
    assert markdown.count(report.REPORTED_SOURCE) >= 3
    assert "| 4.240 | — | — | — | 0.444 | 5% |" in markdown
    assert "| 0.165 | 0% | 95% |" in markdown
    assert "Note statistics" in markdown and "Model-independent evaluation" in markdown
    png = tmp_path / result["plot"]
    assert png.read_bytes().startswith(b"\x89PNG")


def _song(n_bars: int, pitch: int = 60) -> Song:
    notes = {13: [Note(onset=0, pitch=pitch, duration=12, velocity=96)]}
    return Song(bars=[Bar(tracks=dict(notes)) for _ in range(n_bars)])


def test_undefined_metrics_are_nan_and_null_not_errors():
    """A set whose songs have no bars: FIDs, SRS, diversity and note statistics are undefined
    (NaN, null in JSON, "—" in the table); length accuracy still counts them."""
    rng = np.random.default_rng(0)
    reference = [rng.normal(size=(16, 8)) for _ in range(3)]
    empty = evaluate.SongSet("empty", "generated", [np.zeros((0, 8))] * 2, [Song(bars=[])] * 2, 64)
    melodies = [[1, 2, 3], [4, 5, 6]]
    settings = evaluate.MetricSettings()
    metrics = evaluate.evaluate_set(empty, reference, melodies, settings)
    for key in ("phrase_fid", "fid_8gram", "srs", "song_diversity", "notes_per_bar"):
        assert math.isnan(metrics[key]), key
    assert metrics["length_bucket_accuracy"] == 0.0 and metrics["memorisation_rate"] == 0.0
    assert report.json_ready({"a": [metrics["srs"], np.float32(1.5)]}) == {"a": [None, 1.5]}
    assert report.format_value(metrics["srs"], ".3f") == "—"

    # One 1-bar song: a Gaussian needs 2 windows, so FID-2 and up stay undefined; FID is not.
    short = evaluate.SongSet("short", "real", [rng.normal(size=(4, 8))], [_song(1)])
    metrics = evaluate.evaluate_set(short, reference, melodies, settings)
    assert math.isfinite(metrics["phrase_fid"]) and math.isfinite(metrics["fid_2gram"])
    assert math.isnan(metrics["fid_8gram"]) and "length_bucket_accuracy" not in metrics
    assert metrics["notes_per_bar"] == 1.0


def test_evaluate_config_names_the_ldm_run_and_the_comparison():
    assert load_config("evaluate").ldm_workdir == "runs/ldm_uncond"
    cpu = load_config("evaluate", "lencond,cpu")
    assert cpu.ldm_workdir == "runs/ldm_lencond_cpu" and cpu.num_songs == 20
    paper = load_config("evaluate")
    assert (paper.num_songs, paper.sampler, paper.steps) == (100, "ddpm", 1000)
    assert paper.reference_songs == 100
    config_lib.validate(paper)
    settings = generate.settings_from_config(paper)
    assert generate.resolve_length(settings, 128)[0] == 64  # SPEC 7: 64 bars
    assert evaluate.comparison_settings(paper, settings) is None
    other = load_config("evaluate", "compare.steps=50,compare.sampler=ddim")
    compared = evaluate.comparison_settings(other, settings)
    assert (compared.sampler, compared.steps, compared.guidance_scale) == ("ddim", 50, 1.0)
    with pytest.raises(ValueError, match="at most one"):
        load_config("evaluate", "lencond,uncond")


@chorales_only
def test_sampler_fid_rows_compare_each_sampler_with_ddpm(chain):
    from benchmarks import bench_vae, sampler_fid

    report = bench_vae.Report({})
    plans = [("ddpm", 4), ("ddim", 2), ("dpm_solver_pp_sde", 2)]
    results = sampler_fid.compare_samplers(
        report, str(chain["ldm_bars"]), plans, num_songs=2, bars=4
    )
    assert list(results) == ["fid_ddpm_4", "fid_ddim_2", "fid_dpm_solver_pp_sde_2",
                             "fid_ddpm_4_seed1"]  # fmt: skip
    baseline = results["fid_ddpm_4"]
    for record in report.records:
        value = results[record["benchmark"]]
        assert math.isfinite(value) and value >= 0
        assert record["vs_baseline"] == round(value / baseline - 1.0, 4)
        # Lower FID is better: at most 5% above the baseline qualifies.
        assert record["within_5pct"] == (value <= 1.05 * baseline)
        assert record["songs"] == 2 and record["bars"] == 4
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        sampler_fid.compare_samplers(report, str(chain["data"]), plans, num_songs=1, bars=4)


def test_a_bundle_is_evaluated_with_real_songs_encoded_by_its_vae(chain, prepared, tmp_path):
    """`model=BUNDLE`: the exported bars run; its real row is encoded with the bundle's VAE from
    the prepared songs the bundle names, so it equals the run's row (same VAE weights)."""
    spb = prepared.slots_per_bar
    bundle_dir = tmp_path / "bundle"
    main.run(load_config("export", f"runlocal,ldm_workdir={chain['ldm_bars']}"), str(bundle_dir))
    arg = f"runlocal,model={bundle_dir},steps={STEPS},melody_program={prepared.melody_program}"
    main.run(load_config("evaluate", arg), str(tmp_path / "eval"))
    result = json.loads((tmp_path / "eval" / evaluate.METRICS_JSON).read_text())
    rows = {row["kind"]: row for row in result["rows"]}
    assert list(rows) == ["real", "generated"] and result["settings"]["model"] == str(bundle_dir)
    assert rows["generated"]["metrics"]["songs"] == 2
    assert rows["generated"]["info"]["ldm_workdir"] == str(bundle_dir)
    manifest = json.loads((chain["latents"] / "manifest.json").read_text())

    def shard_songs(split):
        songs = []
        for name in manifest["shards"][split]:
            with np.load(chain["latents"] / name) as shard:
                songs += fid.trim_songs(shard["latents"], shard["n_bars"], spb)
        return songs

    assert result["reference"]["songs"] == len(shard_songs("train"))
    expected = fid.phrase_fid(shard_songs("valid") + shard_songs("test"), shard_songs("train"))
    assert rows["real"]["metrics"]["phrase_fid"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    with pytest.raises(errors.UserError, match="data_dir='nowhere'"):
        main.run(load_config("evaluate", f"runlocal,model={bundle_dir},data_dir=nowhere"),
                 str(tmp_path / "eval2"))  # fmt: skip

    # The export stored the held-out songs' statistics: where the data are gone, the bundle is
    # still measured against them (PhraseFID and MR need real latents: undefined).
    meta = bundle.read_meta(str(bundle_dir))
    assert meta["real_statistics"] == real_statistics.FILE_NAME
    meta["provenance"]["data"] = str(tmp_path / "moved_away")
    (bundle_dir / bundle.BUNDLE_JSON).write_text(json.dumps(meta))
    arg = f"runlocal,model={bundle_dir},steps={STEPS},melody_program={prepared.melody_program}"
    main.run(load_config("evaluate", arg), str(tmp_path / "eval3"))
    alone = json.loads((tmp_path / "eval3" / evaluate.METRICS_JSON).read_text())
    assert [row["kind"] for row in alone["rows"]] == ["generated"]
    assert alone["rows"][0]["metrics"]["phrase_fid"] is None
    assert [row["kind"] for row in alone["midi_rows"]] == ["generated", "ceiling"]
    assert alone["midi_rows"][1] == result["midi_rows"][1]  # the stored ceiling
    assert alone["real_statistics"]["data_dir"] == str(chain["data"])
