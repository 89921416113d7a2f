"""The end-to-end demo (phrase_jax/demo.py): dataset choice, stage configs built from
experiments/demo.py with this output folder's paths and the chorales' 5-slot layout, and (slow)
a runlocal demo on a dozen Bach chorales end to end, then re-runs that skip finished phases."""

import json
import pathlib

import pretty_midi
import pytest

from phrase_jax import demo
from phrase_jax.music import vocab

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def experiments_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # experiment files import `experiments.*`


def test_choose_dataset_order(tmp_path):
    pop909 = tmp_path / "pop909"
    (pop909 / "001").mkdir(parents=True)
    (pop909 / "001" / "001.mid").write_bytes(b"")
    env = {"POP909_DIR": str(pop909)}
    assert demo.choose_dataset("", {})[0] == "chorales"
    assert demo.choose_dataset("", env)[0] == "pop909"
    assert demo.choose_dataset("", {**env, "DEMO_DATASET": "chorales"})[0] == "chorales"
    assert demo.choose_dataset("pop909", {"DEMO_DATASET": "chorales"})[0] == "pop909"
    # A POP909_DIR that holds no POP909 does not switch the dataset.
    assert demo.choose_dataset("", {"POP909_DIR": str(tmp_path / "missing")})[0] == "chorales"
    with pytest.raises(ValueError, match="DEMO_DATASET='bach'"):
        demo.choose_dataset("", {"DEMO_DATASET": "bach"})


def _fake_data_dir(root: pathlib.Path, slots_per_bar: int) -> str:
    root.mkdir(parents=True)
    manifest = {"vocab_sha256": vocab.Vocab().sha256, "settings": {"slots_per_bar": slots_per_bar}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


def test_stage_configs_follow_the_data_layout(tmp_path):
    config = demo.load_demo_config("chorales", "max_bars=20,ldm.total_steps=7")
    paths = {p.name: str(tmp_path / p.workdir) for p in demo.PHASES}
    paths["data"] = _fake_data_dir(tmp_path / "data" / "chorales", slots_per_bar=5)
    by_name = {p.name: p for p in demo.PHASES}
    extract = demo.stage_config(config, by_name["extract"], paths)
    ldm = demo.stage_config(config, by_name["ldm"], paths)
    assert extract.max_slots == ldm.model.n_slots == 20 * 5
    assert extract.vae_workdir == paths["vae"] and ldm.latents.dir == paths["extract"]
    assert ldm.total_steps == 7 and ldm.model.conditions == ("length", "bars")
    vae_ae = demo.stage_config(config, by_name["vae_ae"], paths)
    assert vae_ae.init_from == paths["vae_pretrain"] and vae_ae.data.dir == paths["data"]
    assert vae_ae.data.max_len == 40  # chorale phrases: p99 25 tokens + 6 batch tokens
    evaluate = demo.stage_config(config, by_name["evaluate"], paths)
    assert evaluate.melody_program == 40 and evaluate.ldm_workdir == paths["ldm"]
    pop = demo.load_demo_config("pop909")
    paths["data"] = _fake_data_dir(tmp_path / "data" / "pop909", slots_per_bar=4)
    assert demo.stage_config(pop, by_name["ldm"], paths).model.n_slots == 512
    with pytest.raises(KeyError, match="ldm.total_stepz"):
        demo.load_demo_config("chorales", "ldm.total_stepz=3")


def _run(out: pathlib.Path, settings: str = "runlocal") -> tuple[dict, list[str]]:
    lines = []
    return demo.run_demo(demo.load_demo_config("chorales", settings), str(out),
                         log=lines.append), lines  # fmt: skip


@pytest.mark.slow
def test_runlocal_demo_end_to_end_and_resume(tmp_path):
    out = tmp_path / "demo"
    record, lines = _run(out)
    assert sum(" ... (" in line for line in lines) == 8  # every phase ran

    data_manifest = json.loads((out / "data" / "chorales" / "manifest.json").read_text())
    assert data_manifest["settings"]["slots_per_bar"] == 5
    latents = json.loads((out / "runs" / "latents" / "manifest.json").read_text())
    assert latents["slots_per_bar"] == 5 and latents["max_slots"] == 32 * 5
    assert sum(latents["splits"].values()) >= 10

    midis = sorted((out / "songs").glob("song_*.mid"))
    assert len(midis) == 2 and len(list((out / "songs").glob("song_*.png"))) == 2
    for path in midis:
        pretty_midi.PrettyMIDI(str(path))  # raises when unreadable
    samples = json.loads((out / "songs" / "samples.json").read_text())
    assert samples["settings"]["end"] == "condition"  # told the exact length: 4 bars
    for song in samples["songs"]:  # assembled by position, 5 slots a bar
        assert song["decoded_slots"] == 4 * 5 and song["bars"] <= 4
    assert "| real held-out" in (out / "metrics.md").read_text()  # the metrics table
    assert (out / "self_similarity.png").stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["kind"] for row in metrics["rows"]] == ["real", "generated"]
    assert metrics["settings"]["slots_per_bar"] == 5
    assert set(record["phases"]) == {p.name for p in demo.PHASES}
    assert "[demo] done: 2 songs" in lines[-1]

    # Unchanged settings: every phase is skipped at once.
    _, lines = _run(out)
    assert sum("skipping" in line for line in lines) == 8
    # Fewer songs: only the sampling and evaluation phases run again; no stale song remains.
    _, lines = _run(out, "runlocal,sample.num_songs=1")
    ran = [line for line in lines if " ... (" in line]
    assert [line.split("]")[0] for line in ran] == ["[demo 7/8", "[demo 8/8"]
    assert sorted(p.name for p in (out / "songs").glob("song_*")) == [
        "song_000.mid",
        "song_000.png",
    ]
