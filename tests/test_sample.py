"""The sampling stage: song ends, assembly by slot position with disagreement counts, decoding of
in-song slots only, determinism, and the stage end to end (every sampler) on tiny untrained
runlocal-size VAE and LDM checkpoints made directly (training them would take minutes)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pretty_midi
import pytest
from flax import nnx
from stage_fixtures import LDM_RUNS, LDM_STEP, VAE_STEP, build_tiny_runs, load_config

from phrase_jax import config_lib, main
from phrase_jax.artifacts import vae_run
from phrase_jax.diffusion import samplers
from phrase_jax.generation import generate, slot_decoding
from phrase_jax.inference import ldm_loading
from phrase_jax.models import decoding
from phrase_jax.music import vocab
from phrase_jax.stages import sample, train_ldm
from phrase_jax.training import checkpointing, sharding, train_state

REPO = pathlib.Path(__file__).resolve().parents[1]

STEPS = 2  # sampler steps everywhere: compiled samplers are reused across tests


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    return build_tiny_runs(tmp_path_factory.mktemp("sample_runs"))


@pytest.fixture(scope="module")
def pipelines(runs):
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    return {c: ldm_loading.load_pipeline(runs[c], mesh) for c in LDM_RUNS}


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts the latent rows handed to the VAE decoder."""
    rows = []
    real = decoding.decode_latents

    def counting(model, z_bd, **kwargs):
        rows.append(len(z_bd))
        return real(model, z_bd, **kwargs)

    monkeypatch.setattr(decoding, "decode_latents", counting)
    return rows


def test_song_end_is_the_first_slot_near_the_sep_latent():
    # [SEP] lies 2.24 from [INST] and from b-1: a slot within 1.12 of it is [SEP].
    special = {"inst": [1.0, 0.0], "bar": [0.0, 1.0], "sep": [-1.0, -1.0]}
    songs = np.zeros((3, 6, 2), np.float32)
    songs[:, :] = [0.9, 0.1]  # near [INST]
    songs[0, 4:] = [-0.8, -1.2]  # padding from slot 4
    songs[1, 2] = [-2.5, 0.0]  # a phrase whose nearest special is [SEP], 1.8 away: not the end
    songs[1, 3] = [-0.9, -1.0]
    songs[2, :, :] = [3.0, 3.0]  # far from everything: no end
    assert slot_decoding.song_end_slots(songs, special).tolist() == [4, 3, 6]


def test_sections_and_bars_resolve_to_one_length():
    assert generate.parse_sections("i4A8B8o4") == [("i", 4), ("A", 8), ("B", 8), ("o", 4)]
    assert generate.resolve_length(generate.SampleSettings(sections="i4A8"), 128) == (
        12, [("i", 4), ("A", 8)])  # fmt: skip
    assert generate.resolve_length(generate.SampleSettings(), 128)[0] == generate.DEFAULT_BARS
    assert generate.resolve_length(generate.SampleSettings(bars=12, sections="i4A8"), 128)[0] == 12
    with pytest.raises(ValueError, match="sections='i4A'"):
        generate.parse_sections("i4A")
    with pytest.raises(ValueError, match="bars=16 but sections"):
        generate.resolve_length(generate.SampleSettings(bars=16, sections="i4A8"), 128)
    with pytest.raises(ValueError, match="bars=200: must be in 1..128"):
        generate.resolve_length(generate.SampleSettings(bars=200), 128)


def test_assembly_by_position_cuts_at_sep_and_counts_disagreements(pipelines, monkeypatch):
    """A hand-made decode of two 3-bar songs. Song 0: bar 0 correct, bar 1 with `b-1` in a track
    slot and `[INST]` in its b-1 slot, bar 2 starting with `[SEP]` (the song ends there).
    Song 1: three correct bars, the last one's b-1 slot decoded as a note phrase."""
    note = [vocab.PROGRAM_BASE, vocab.ONSET_BASE, vocab.PITCH_BASE + 60, vocab.DURATION_BASE + 12]
    inst, bar_end = [vocab.INST], [vocab.BAR_END]
    first_song = [note, inst, inst, bar_end, bar_end, inst, inst, inst, [vocab.SEP], inst, inst,
                  bar_end]  # fmt: skip
    second_song = [note, note, inst, bar_end, inst, inst, inst, bar_end, note, inst, inst, note]
    slots = first_song + second_song
    ids = np.full((len(slots), 32), vocab.PAD, np.int32)
    for row, slot in zip(ids, slots, strict=True):
        row[: len(slot) + 1] = [*slot, vocab.EOS]
    calls = []

    def fake_decode(model, z_bd, **kwargs):
        calls.append(len(z_bd))
        return ids[: len(z_bd)]

    monkeypatch.setattr(decoding, "decode_latents", fake_decode)
    # A section string fixes the length exactly: the stage decodes its 3 bars (end=auto).
    settings = generate.SampleSettings(num_songs=2, sections="i1A2", steps=STEPS)
    songs, stats = generate.generate(*pipelines["cond"], settings)
    assert calls == [24]  # one decode: exactly 2 songs x 3 bars x 4 slots
    first, second = stats["songs"]
    assert first["bars"] == 2 and len(songs[0].song.bars) == 2
    assert first["requested_bars"] == 3 and first["decoded_slots"] == 12
    assert first["notes"] == 1 and songs[0].song.bars[0].tracks[0][0].pitch == 60
    assert (first["misplaced_bar_ends"], first["bar_slot_mismatches"]) == (1, 1)
    assert first["misplaced_inst"] == 1 and first["position_disagreements"] == 2
    assert second["bars"] == 3 and second["position_disagreements"] == 1
    assert second["notes"] == 3  # bar 0: 2, bar 2: 1; a b-1 slot never adds notes
    assert stats["totals"]["disagreement_rate"] == pytest.approx(3 / 24)
    assert stats["settings"]["end"] == "condition" and stats["settings"]["told_length"]


def test_only_slots_inside_songs_are_decoded(pipelines, decode_counter):
    """Exact lengths decode exactly their slots; an unconditional model or a length bucket (which
    does not fix the length) decodes up to the detected `[SEP]`-like slot."""
    settings = generate.SampleSettings(num_songs=3, sections="i1A2", steps=STEPS, batch_size=2)
    songs, stats = generate.generate(*pipelines["cond"], settings)
    assert decode_counter == [24, 12]  # two batches of songs, 12 slots each, no padding
    assert [s.end_slot for s in songs] == [12, 12, 12] and stats["totals"]["decoded_phrases"] == 36
    assert all(len(s.song.bars) <= 3 for s in songs)

    for name, bars in (("uncond", 0), ("cond", 3)):
        settings = generate.SampleSettings(num_songs=2, bars=bars, steps=STEPS)
        decode_counter.clear()
        songs, stats = generate.generate(*pipelines[name], settings)
        special = pipelines[name].manifest["special_latents"]
        ends = slot_decoding.song_end_slots(np.stack([s.latents_nd for s in songs]), special)
        assert stats["settings"]["end"] == "detect" and [s.end_slot for s in songs] == ends.tolist()
        assert decode_counter == ([int(ends.sum())] if ends.sum() else [])
        requested = [s["requested_bars"] for s in stats["songs"]]
        assert requested == ([None, None] if name == "uncond" else [3, 3])


def test_generation_is_deterministic_for_a_seed(pipelines):
    def run(seed):
        settings = generate.SampleSettings(num_songs=2, sections="i1A1", steps=STEPS, seed=seed)
        songs, _ = generate.generate(*pipelines["cond"], settings)
        return np.stack([s.latents_nd for s in songs]), [s.song for s in songs]

    latents, songs = run(1)
    again, songs_again = run(1)
    np.testing.assert_array_equal(latents, again)
    assert songs == songs_again
    assert not np.allclose(latents, run(2)[0])
    assert not np.allclose(latents[0], latents[1])  # every song has its own noise


@pytest.mark.parametrize(
    "run_name, arg",
    [("uncond", "sampler=ddpm"), ("cond", "sampler=dpmpp,guidance_scale=2.0,bars=3,wav=True"),
     ("cond", "sampler=ddim,sections=i1A2,bars=0,num_songs=3")],
)  # fmt: skip
def test_stage_writes_midi_png_and_samples_json(runs, tmp_path, run_name, arg):
    config = load_config("sample", f"runlocal,ldm_workdir={runs[run_name]},steps={STEPS},{arg}")
    # An earlier run with more songs left its files here: they are replaced, never mixed in.
    for name in ("song_007.mid", "song_007.png", "song_000.wav", "samples.json"):
        (tmp_path / name).write_text("earlier run")
    (tmp_path / "notes.txt").write_text("not a song")
    main.run(config, str(tmp_path))
    stats = json.loads((tmp_path / sample.SAMPLES_JSON).read_text())
    assert len(stats["songs"]) == config.num_songs
    listed = {name for summary in stats["songs"] for name in summary["files"].values()}
    assert {p.name for p in tmp_path.glob("song_*")} == listed
    assert (tmp_path / "notes.txt").exists()
    for summary in stats["songs"]:
        midi = pretty_midi.PrettyMIDI(str(tmp_path / summary["files"]["midi"]))
        assert midi.get_tempo_changes()[1] == pytest.approx([90.0], rel=1e-4)
        png = (tmp_path / summary["files"]["png"]).read_bytes()
        assert png.startswith(b"\x89PNG")
    if config.sections:
        assert stats["settings"]["bars"] == 3 and stats["settings"]["sections"] == [
            ["i", 1], ["A", 2]]  # fmt: skip
        assert [s["decoded_slots"] for s in stats["songs"]] == [12, 12, 12]
    if config.wav:
        assert (tmp_path / stats["songs"][0]["files"]["wav"]).read_bytes()[:4] == b"RIFF"
    settings = stats["settings"]
    assert settings["ldm_step"] == LDM_STEP and settings["used_ema"]
    assert settings["sampler"] in samplers.METHODS
    assert settings["clip"] == 3.0  # the manifest's, in scaled space
    assert stats["totals"]["decoded_phrases"] == sum(s["decoded_slots"] for s in stats["songs"])
    for key in ("diffusion_s", "decode_s", "midi_write_s", "png_s", "load_s", "total_s"):
        assert stats["timings"][key] >= 0


def test_mismatched_runs_fail_with_clear_errors(runs, tmp_path):
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    with pytest.raises(FileNotFoundError, match="train_ldm run"):
        ldm_loading.load_pipeline(str(tmp_path), mesh)
    with pytest.raises(FileNotFoundError, match="pass latents_dir"):
        ldm_loading.load_pipeline(runs["uncond"], mesh, latents_dir=str(tmp_path / "moved"))
    manifest = json.loads(pathlib.Path(runs["latents"], "manifest.json").read_text())
    moved = tmp_path / "latents"
    moved.mkdir()
    (moved / "manifest.json").write_text(json.dumps(dict(manifest, scale=0.7)))
    with pytest.raises(ValueError, match="scale=0.7 but .* trained on 0.5"):
        ldm_loading.load_pipeline(runs["uncond"], mesh, latents_dir=str(moved))
    # A manifest of another VAE step: the latents no longer match the run or the VAE.
    (moved / "manifest.json").write_text(json.dumps(dict(manifest, vae_step=VAE_STEP + 1)))
    with pytest.raises(ValueError, match="vae_step"):
        ldm_loading.load_pipeline(runs["uncond"], mesh, latents_dir=str(moved))
    with pytest.raises(ValueError, match="sampler='euler'"):
        config = load_config("sample", f"runlocal,ldm_workdir={runs['uncond']},sampler=euler")
        main.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "config.json").exists()  # refused before writing it


def test_sample_config_names_the_ldm_run():
    assert load_config("sample").ldm_workdir == "runs/ldm_uncond"
    assert load_config("sample", "lencond,cpu").ldm_workdir == "runs/ldm_lencond_cpu"
    assert load_config("sample", "seccond,bars,runlocal").ldm_workdir == (
        "runs/ldm_seccond_bars_runlocal")  # fmt: skip
    paper = load_config("sample")
    assert (paper.sampler, paper.steps, paper.tempo, paper.clip) == ("ddpm", 1000, 90.0, -1.0)
    config_lib.validate(paper)
    with pytest.raises(ValueError, match="at most one"):
        load_config("sample", "lencond,seccond")


def test_inference_loaders_read_the_weights_only(runs, monkeypatch):
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    config = config_lib.from_json(pathlib.Path(runs["cond"], "config.json").read_text())
    spec, _, _ = train_ldm.build_state_spec(config, mesh)
    full = checkpointing.Checkpointer(runs["cond"], async_save=False).restore(LDM_STEP, spec)

    def forbidden(*args, **kwargs):
        raise AssertionError("an inference loader built an optimizer or read the train state")

    with monkeypatch.context() as patch:
        patch.setattr(nnx, "Optimizer", forbidden)
        patch.setattr(checkpointing.Checkpointer, "restore", forbidden)
        pipeline = ldm_loading.load_pipeline(runs["cond"], mesh)
    assert pipeline.ldm.used_ema and not pipeline.vae.used_ema  # the runlocal VAE keeps no EMA
    assert pipeline.vae.checkpoint == vae_run.CheckpointRef(VAE_STEP, "latest")
    # The EMA weights, exactly those of the full train state.
    same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # noqa: E731
    ema_params = nnx.state(train_state.unpack(spec, full.state).ema, nnx.Param)
    jax.tree.map(same, nnx.state(pipeline.ldm.model, nnx.Param), ema_params)


def test_inference_imports_no_stage_or_entry_point():
    code = (
        "import sys; import phrase_jax.inference.ldm_loading, phrase_jax.generation.generate, "
        "phrase_jax.evaluation.report, phrase_jax.artifacts.samples; "
        "bad = [m for m in sys.modules if m.startswith(('phrase_jax.stages', 'phrase_jax.main'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
