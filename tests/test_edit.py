"""The edit stage (issue 14): plans of kept and written slots, the merge (kept notes exact, the
key shift undone, no doubled tracks), each task end to end on tiny untrained runlocal-size runs
(stage_fixtures; sampling and decoding are real, so written notes are whatever an untrained
model writes), written regions filled where a decoder writes a known phrase, bad requests."""

import json

import numpy as np
import pytest
import stage_fixtures as fixtures
from stage_fixtures import BASS, MELODY, N_BARS, PIANO, build_tiny_runs, load_config, write_song

from data_pipelines import datasets
from phrase_jax import errors, main
from phrase_jax.evaluation import encoded_songs
from phrase_jax.generation import edit_input, edit_sampling, editing
from phrase_jax.inference import ldm_loading
from phrase_jax.models import decoding
from phrase_jax.music import layout, tokenizer, vocab
from phrase_jax.music.events import Bar, Note, Song
from phrase_jax.training import sharding

STEPS = 2
SETTINGS = datasets.DatasetSettings()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    return build_tiny_runs(tmp_path_factory.mktemp("edit_runs"))


@pytest.fixture(scope="module")
def song_file(tmp_path_factory) -> str:
    return write_song(tmp_path_factory.mktemp("edit_input") / "song.mid")


@pytest.fixture(scope="module")
def song(song_file) -> edit_input.EditInput:
    return edit_input.read_input(song_file, SETTINGS)


def plan(song, task, model_bars=128, **request):
    return editing.plan_edit(
        editing.EditRequest(task=task, **request), song, slots_per_bar=4,
        model_bars=model_bars, track_choice="keep_drums",
    )  # fmt: skip


def notes_of(bar, programs=None):
    return {
        p: sorted(notes) for p, notes in bar.tracks.items() if programs is None or p in programs
    }


def test_input_is_read_as_training_data_with_its_key_shift(song):
    assert song.n_bars == N_BARS and song.key_shift == -2
    assert song.track_programs == {"melody": MELODY, "piano": PIANO, "bass": BASS}
    assert song.original.bars[0].tempo == pytest.approx(fixtures.TEMPO)
    assert song.normalized.bars[0].tracks[BASS][0].pitch == 36  # D2 -> C2
    assert edit_input.resolve_track(song, "MELODY", "tracks") == MELODY
    assert edit_input.resolve_track(song, "33", "tracks") == BASS


def test_plans_keep_and_write_the_right_slots(song):
    infill = plan(song, "infill", bars="3-4").write_slots.reshape(-1, 4)
    assert infill[2:4, :3].all() and infill.sum() == 6 and not infill[:, 3].any()
    cont = plan(song, "continue", keep_bars=8, total_bars=20)
    assert cont.n_bars == 20 and cont.write_slots.reshape(-1, 4)[8:20, :3].all()
    assert cont.write_slots.sum() == 12 * 3 and cont.kept_programs[9] == frozenset()
    # Slots follow the serialisation order: melody (highest), piano, bass.
    accompany = plan(song, "accompany", tracks="Melody").write_slots.reshape(-1, 4)[:N_BARS]
    assert (accompany[:, :3] == [False, True, True]).all()
    retrack = plan(song, "retrack", track="Piano")
    assert (retrack.write_slots.reshape(-1, 4)[:N_BARS, :3] == [False, True, False]).all()
    assert retrack.only_program == PIANO and PIANO not in retrack.kept_programs[0]
    assert plan(song, "infill", bars="3-4").written_bars == [2, 3]


@pytest.mark.parametrize(
    "task, request_args, message",
    [
        ("infill", dict(bars="11-13"), "the song has 12 bars"),
        ("infill", dict(bars="4-2"), "want a-b"),
        ("accompany", dict(tracks="Violin"), "no such track"),
        ("retrack", dict(track="40"), "no such track"),
        ("continue", dict(total_bars=200), "more bars than the model's 128"),
        ("continue", dict(keep_bars=13, total_bars=20), "keep at most the song's 12 bars"),
        ("infill", dict(section="B"), "no section labels"),
        ("infill", dict(), "give bars=a-b or section"),
    ],
)
def test_bad_requests_fail_with_one_line(song, task, request_args, message):
    with pytest.raises(errors.UserError, match=message) as raised:
        plan(song, task, **request_args)
    assert "\n" not in str(raised.value)


def test_a_song_longer_than_the_model_is_refused(song):
    with pytest.raises(errors.UserError, match="12 bars, more than the model's 8"):
        plan(song, "infill", model_bars=8, bars="1-2")


def test_merge_keeps_notes_exactly_undoes_the_shift_and_never_doubles(song):
    accompany = plan(song, "accompany", tracks="Melody")
    # Written in C: a piano phrase, and a melody phrase that the kept melody must win over.
    written = Song(
        bars=[
            Bar(tracks={PIANO: [Note(0, 60, 12)], MELODY: [Note(6, 72, 6)]}) for _ in range(N_BARS)
        ]
    )
    edited, stats = editing.merge(song, accompany, written)
    assert stats.doubling_kept == N_BARS and stats.written_notes == N_BARS
    for original, out in zip(song.original.bars, edited.bars, strict=True):
        assert notes_of(out, {MELODY}) == notes_of(original, {MELODY})
        assert out.tracks[PIANO] == [Note(0, 62, 12)]  # C4 in C major is E4 in D: shift undone
        assert BASS not in out.tracks and out.tempo == original.tempo


@pytest.fixture(scope="module")
def pipeline(runs):
    return ldm_loading.load_pipeline(runs["uncond"], sharding.make_mesh({"shape": (-1, 1)}))


def test_written_slots_decode_into_the_written_region(pipeline, song, monkeypatch):
    """A decoder that writes one piano phrase wherever it is asked: every written bar holds
    it (moved back to the input's key), no other bar does, and only written slots decode."""
    piano = tokenizer.phrase_tokens(PIANO, [Note(0, 60, 12), Note(12, 64, 12)])
    rows = []

    def fixed_phrase(model, z_bd, *, max_len, chunk_size=None):
        rows.append(len(z_bd))
        ids = np.full((len(z_bd), max_len), vocab.PAD, np.int32)
        ids[:, : len(piano) + 1] = piano + [vocab.EOS]
        return ids

    monkeypatch.setattr(decoding, "decode_latents", fixed_phrase)
    infill = plan(song, "infill", bars="5-6")
    settings = edit_sampling.EditSettings(sampler="ddim", steps=STEPS)
    result = edit_sampling.edit_song(pipeline, song, infill, settings, track_choice="keep_drums")
    assert rows == [6]
    for k, (original, out) in enumerate(zip(song.original.bars, result.song.bars, strict=True)):
        if k in (4, 5):
            assert notes_of(out) == {PIANO: [Note(0, 62, 12), Note(12, 66, 12)]}
        else:
            assert notes_of(out) == notes_of(original)
    known = edit_sampling.known_latents(pipeline, song, infill, "keep_drums")
    kept = infill.keep_slots
    np.testing.assert_allclose(result.latents_nd[kept], known[kept], rtol=1e-6, atol=1e-6)
    # The short encoder length gives latent extraction's means (the VAE's max_len).
    slots = layout.song_slots(song.normalized, 4, track_choice="keep_drums").slots
    assert edit_sampling.encode_length(slots, 128) < 128
    full = encoded_songs.encode_slots(
        pipeline.vae.model, [{"slots": slots, "n_bars": N_BARS}], max_len=128, slots_per_bar=4
    )[0]
    np.testing.assert_allclose(known[: len(full)], full, atol=1e-5)


TASK_ARGS = {
    "continue": "task=continue,keep_bars=8,bars=16",
    "infill": "task=infill,bars=5-8",
    "accompany": "task=accompany,tracks=Melody",
    "retrack": "task=retrack,track=0",
}


@pytest.mark.parametrize("task", list(TASK_ARGS))
def test_each_task_keeps_notes_and_writes_only_its_region(runs, song_file, song, tmp_path, task):
    config = load_config(
        "edit",
        f"runlocal,ldm_workdir={runs['uncond']},input={song_file},steps={STEPS},{TASK_ARGS[task]}",
    )
    main.run(config, str(tmp_path))
    edit = json.loads((tmp_path / "edit.json").read_text())
    assert edit["request"]["task"] == task and edit["key_shift"] == -2
    assert {"midi", "png"} <= set(edit["files"]) and edit["timings"]["diffusion_s"] > 0
    assert (tmp_path / "edited.png").stat().st_size > 0
    out, _, _ = datasets.read_song(str(tmp_path / "edited.mid"), SETTINGS, "out")
    written_plan = plan(
        song, task, **dict(
            continue_=dict(keep_bars=8, total_bars=16), infill=dict(bars="5-8"),
            accompany=dict(tracks="Melody"), retrack=dict(track="0"),
        )[task.replace("continue", "continue_")],
    )  # fmt: skip
    written_bars = set(written_plan.written_bars)
    for k, out_bar in enumerate(out.bars):
        kept = written_plan.kept_programs[k]
        if k < song.n_bars:
            original = song.original.bars[k]
            assert notes_of(out_bar, kept) == notes_of(original, kept), f"bar {k + 1}"
            assert out_bar.time_signature == original.time_signature
            assert out_bar.tempo == pytest.approx(original.tempo, rel=1e-3)
        written = {p: n for p, n in out_bar.tracks.items() if p not in kept}
        assert not written or k in written_bars
        if task == "retrack":
            assert set(written) <= {PIANO}
        for notes in written.values():
            assert all(0 <= n.onset < out_bar.length and 0 <= n.pitch <= 127 for n in notes)
    assert len(out.bars) <= written_plan.n_bars


def test_model_refusals(runs, song_file, tmp_path):
    base = f"runlocal,input={song_file},steps={STEPS}"
    config = load_config("edit", f"{base},ldm_workdir={runs['uncond']},task=infill,section=B")
    with pytest.raises(errors.UserError, match="not conditioned on sections"):
        main.run(config, str(tmp_path / "a"))
    config = load_config("edit", f"{base},ldm_workdir={runs['cond']},task=infill,bars=1-2")
    config.sections = "A4B4"
    with pytest.raises(errors.UserError, match="total 8 bars; the result has 12"):
        main.run(config, str(tmp_path / "b"))
    config = load_config("edit", f"{base},ldm_workdir={runs['cond']},task=infill,section=Q")
    config.sections = "i2A4B4o2"
    with pytest.raises(errors.UserError, match="no such section"):
        main.run(config, str(tmp_path / "c"))
    assert not (tmp_path / "a" / "edit.json").exists()


def test_section_infill_on_a_sections_model(runs, song_file, song, tmp_path):
    config = load_config(
        "edit",
        f"runlocal,input={song_file},steps={STEPS},ldm_workdir={runs['cond']},task=infill,"
        "section=B,sections=i2A4B4o2",
    )
    main.run(config, str(tmp_path))
    edit = json.loads((tmp_path / "edit.json").read_text())
    assert edit["request"]["written_bars"] == [7, 10] and edit["sections"][2] == ["B", 4]
    out, _, _ = datasets.read_song(str(tmp_path / "edited.mid"), SETTINGS, "out")
    for k in [*range(6), *range(10, len(out.bars))]:
        assert notes_of(out.bars[k]) == notes_of(song.original.bars[k])
