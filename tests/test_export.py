"""Bundles from our runs and sampling from them: `make export` (the export stage) writes a bundle
of a tiny runlocal LDM run that `load_pretrained` reads back weight for weight; the sample stage
with `model=BUNDLE` writes .mid/.png/.wav and records the bundle; the refusals are one line."""

import json
import pathlib

import numpy as np
import pytest
from stage_fixtures import LDM_STEP, VAE_STEP, build_tiny_runs, load_config

import phrase_jax
from phrase_jax import errors, main
from phrase_jax.artifacts import bundle
from phrase_jax.generation import generate
from phrase_jax.inference import ldm_loading
from phrase_jax.training import sharding

STEPS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    return build_tiny_runs(tmp_path_factory.mktemp("export_runs"), ldm_runs=("cond",))


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("bundles") / "cond"
    main.run(load_config("export", f"runlocal,ldm_workdir={runs['cond']}"), str(out))
    return str(out)


def _arrays(model):
    return bundle.model_arrays(model)


def test_export_writes_the_runs_weights_and_what_sampling_needs(runs, exported):
    names = sorted(p.name for p in pathlib.Path(exported).iterdir())
    assert names == ["bundle.json", "config.json", "ldm.safetensors", "ldm_ema.safetensors",
                     "vae.safetensors"]  # fmt: skip
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    for use_ema in (True, False):
        run = ldm_loading.load_pipeline(runs["cond"], mesh, use_ema=use_ema)
        loaded = phrase_jax.load_pretrained(exported, use_ema=use_ema)
        assert loaded.used_ema == {"vae": False, "ldm": use_ema}
        for ours, theirs in ((loaded.ldm, run.ldm.model), (loaded.vae, run.vae.model)):
            a, b = _arrays(ours), _arrays(theirs)
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    manifest = json.loads(pathlib.Path(runs["latents"], "manifest.json").read_text())
    meta = loaded.meta
    assert (loaded.scale, loaded.clip, loaded.slots_per_bar) == (0.5, 3.0, 4)
    for name, value in manifest["special_latents"].items():
        assert meta["latents"]["special_latents"][name] == pytest.approx(value)
    assert loaded.section_vocab.types == run.ldm.section_vocab.types
    assert loaded.max_len == run.vae.config.data.max_len
    assert meta["diffusion"]["prediction"] == run.ldm.config.diffusion.prediction
    provenance = meta["provenance"]
    assert (provenance["ldm_step"], provenance["vae_step"]) == (LDM_STEP, VAE_STEP)
    assert provenance["vae_config_hash"] == manifest["vae_config_hash"]
    assert provenance["ldm_workdir"] == runs["cond"] and provenance["vae_workdir"] == runs["vae"]


def test_a_bundle_generates_the_songs_of_its_run(runs, exported):
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    settings = generate.SampleSettings(num_songs=2, bars=3, steps=STEPS, sampler="ddim")
    from_run, _ = generate.generate(*ldm_loading.load_pipeline(runs["cond"], mesh), settings)
    pipeline = ldm_loading.load_bundle_pipeline(exported, mesh)
    from_bundle, _ = generate.generate(*pipeline, settings)
    for a, b in zip(from_run, from_bundle, strict=True):
        np.testing.assert_allclose(a.latents_nd, b.latents_nd, rtol=1e-5, atol=1e-5)
        assert a.song == b.song


def test_sample_stage_reads_a_bundle_and_writes_mid_png_wav(exported, tmp_path):
    arg = f"runlocal,model={exported},steps={STEPS},wav=True,synthesizer=sine,programs=0:24"
    main.run(load_config("sample", arg), str(tmp_path))
    stats = json.loads((tmp_path / "samples.json").read_text())
    assert len(stats["songs"]) == 2
    for summary in stats["songs"]:
        files = summary["files"]
        assert sorted(files) == ["midi", "png", "wav"]
        assert (tmp_path / files["png"]).read_bytes().startswith(b"\x89PNG")
        assert (tmp_path / files["wav"]).read_bytes()[:4] == b"RIFF"
        assert (tmp_path / files["midi"]).read_bytes()[:4] == b"MThd"
    settings = stats["settings"]
    assert settings["model"] == exported and settings["wav_synthesizer"] == "sine"
    assert settings["provenance"]["ldm_step"] == LDM_STEP and settings["ldm_step"] == LDM_STEP
    assert settings["programs"] == "0:24" and "ldm_workdir" not in settings


def test_a_missing_bundle_is_one_line_before_anything_loads(tmp_path):
    config = load_config("sample", f"runlocal,model={tmp_path / 'nowhere'}")
    with pytest.raises(errors.UserError, match=r"model=.*nowhere: no such folder") as caught:
        main.run(config, str(tmp_path / "out"))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "config.json").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.UserError, match="bundle.json not found"):
        main.run(load_config("sample", f"runlocal,model={tmp_path / 'empty'}"), str(tmp_path))


def test_guidance_is_refused_for_a_bundle_trained_without_condition_dropout(exported, tmp_path):
    copy = tmp_path / "no_dropout"
    copy.mkdir()
    for file in pathlib.Path(exported).iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    meta = json.loads((copy / "bundle.json").read_text())
    meta["ldm"]["config"]["condition_dropout"] = 0.0
    (copy / "bundle.json").write_text(json.dumps(meta))
    config = load_config("sample", f"runlocal,model={copy},steps={STEPS},guidance_scale=2.0")
    with pytest.raises(errors.UserError, match="guidance_scale=2.0: .*without condition dropout"):
        main.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "samples.json").exists()


def test_export_never_replaces_a_folder_that_is_not_a_bundle(runs, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(errors.UserError, match="not a bundle"):
        main.run(load_config("export", f"runlocal,ldm_workdir={runs['cond']}"), str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"
