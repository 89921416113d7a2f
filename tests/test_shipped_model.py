"""The POP909 model that ships in models/ (issue 13): within its size budget, with its model card
and stored real statistics, and `make demo`'s two steps (the sample stage on the bundle, then
the MIDI evaluation against the bundle's statistics) run on it end to end."""

import json
import pathlib

from stage_fixtures import load_config

from phrase_jax import main
from phrase_jax.artifacts import bundle, model_card, real_statistics

SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "models" / "pop909-cpu"
MAX_BYTES = 25 * 2**20  # the repository budget for a shipped model


def test_the_shipped_bundle_fits_and_says_what_it_is():
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) <= MAX_BYTES
    meta = bundle.read_meta(str(SHIPPED))
    assert meta["latents"]["slots_per_bar"] == 4 and meta["latents"]["max_slots"] == 512
    assert "length" in meta["conditions"]["names"]
    card = (SHIPPED / model_card.CARD).read_text()
    for must in ("Training runs", "VAE validation", "Model-independent"):
        assert must in card
    real_statistics.load(str(SHIPPED))  # the stored statistics read back


def test_make_demo_steps_sample_and_evaluate_the_shipped_model(tmp_path):
    songs = tmp_path / "songs"
    sample_arg = (
        f"model={SHIPPED},sampler=dpm_solver_pp_sde,steps=2,num_songs=2,batch_size=2,bars=4"
    )
    main.run(load_config("sample", sample_arg), str(songs))
    assert sorted(p.name for p in songs.glob("song_*.mid")) == ["song_000.mid", "song_001.mid"]
    eval_arg = f"midi_dirs={songs},real_statistics={SHIPPED}"
    main.run(load_config("evaluate_midi", eval_arg), str(tmp_path / "eval"))
    rows = json.loads((tmp_path / "eval" / "midi_metrics.json").read_text())["midi_rows"]
    assert rows[0]["metrics"]["songs"] == 2 and rows[0]["metrics"]["bars"] > 0
    assert 0.0 <= rows[0]["metrics"]["mean_overlap"] <= 1.0
