"""The prepare stage through the entry point: experiments/prepare.py, one-line errors."""

import json

import pytest

from experiments import prepare as prepare_config
from phrase_jax import config_lib, errors, main


def _config(arg):
    config = prepare_config.get_config(arg)
    config_lib.validate(config)
    return config


def test_chorales_runlocal_through_main(tmp_path):
    workdir = tmp_path / "chorales"
    main.run(_config("chorales,runlocal"), str(workdir))
    manifest = json.loads((workdir / "manifest.json").read_text())
    assert manifest["counts"]["songs_loaded"] == 4 and manifest["settings"]["slots_per_bar"] == 5
    assert manifest["settings"]["track_choice"] == "keep_drums"
    assert json.loads((workdir / "config.json").read_text())["stage"] == "prepare"


def test_missing_or_empty_input_is_one_line(tmp_path):
    with pytest.raises(errors.UserError, match="input_dir is empty"):
        main.run(_config("midi"), str(tmp_path / "out"))
    config = _config("midi")
    config.input_dir = str(tmp_path / "nowhere")
    with pytest.raises(errors.UserError, match="no such folder"):
        main.run(config, str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    config.input_dir = str(tmp_path / "empty")
    with pytest.raises(errors.UserError, match="no .mid/.midi files"):
        main.run(config, str(tmp_path / "out"))
    config.settings.track_choice = "loudest"
    with pytest.raises(errors.UserError, match="track_choice"):
        main.run(config, str(tmp_path / "out"))


def test_no_song_loads_fails(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    (folder / "a.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x01\xe0")  # header only
    (folder / "b.mid").write_text("not midi")
    config = _config("midi,runlocal")
    config.input_dir = str(folder)
    with pytest.raises(errors.UserError, match="none of the 2 songs loaded") as info:
        main.run(config, str(tmp_path / "out"))
    assert "\n" not in str(info.value)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    reasons = sorted(s["reason"] for s in manifest["skipped"])
    assert reasons == ["no notes", "not a MIDI file (no MThd header)"]
