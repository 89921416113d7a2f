"""MIDI descriptors, their comparison and the stored real statistics, on hand-made songs with
known answers (issue 13.3)."""

import json
import math

import numpy as np
import pytest

from phrase_jax import errors
from phrase_jax.artifacts import real_statistics
from phrase_jax.evaluation import descriptor_comparison as comparison
from phrase_jax.evaluation import midi_descriptors as md
from phrase_jax.music import midi_io
from phrase_jax.music.events import Bar, Note, Song

C_MAJOR = (60, 62, 64, 65, 67, 69, 71, 72)
DRUMS = 128


def scale_bar(pitches=C_MAJOR, step: int = 6) -> Bar:
    """Eighth notes up a scale: one note at a time, 8 onsets in a 4/4 bar."""
    return Bar(tracks={0: [Note(i * step, p, step) for i, p in enumerate(pitches)]})


def test_a_c_major_scale_bar_has_the_expected_descriptors():
    values = md.bar_descriptors(scale_bar())
    assert values["notes"] == 8 and values["onsets"] == 8
    assert values["polyphony"] == 1.0
    # 7 pitch classes, C twice: p = 2/8 and six times 1/8.
    expected = -(2 / 8 * math.log2(2 / 8) + 6 / 8 * math.log2(1 / 8))
    assert values["pitch_class_entropy"] == pytest.approx(expected)
    assert values["pitch_range"] == 12 and values["mean_duration"] == 0.5


def test_chords_drums_and_empty_bars():
    chord = Bar(tracks={0: [Note(0, 60, 48), Note(0, 64, 48), Note(24, 67, 48)],
                        DRUMS: [Note(0, 36, 3), Note(12, 38, 3)]})  # fmt: skip
    values = md.bar_descriptors(chord)
    assert values["notes"] == 5 and values["onsets"] == 3  # drums count here
    # Pitched: 2 sound over 0..23, 3 over 24..47 (the G's tail is cut at the barline).
    assert values["polyphony"] == pytest.approx(2.5)
    assert values["pitch_range"] == 7 and values["mean_duration"] == 4.0
    empty = md.bar_descriptors(Bar())
    assert empty["notes"] == 0 and empty["onsets"] == 0
    assert all(math.isnan(empty[k]) for k in md.BAR_FEATURES[2:])
    drums_only = md.bar_descriptors(Bar(tracks={DRUMS: [Note(0, 36, 3)]}))
    assert drums_only["notes"] == 1 and math.isnan(drums_only["pitch_class_entropy"])


def test_a_repeated_bar_recurs_fully_and_changed_bars_do_not():
    repeated = Song(bars=[scale_bar() for _ in range(4)])
    assert md.bar_recurrence(repeated) == 1.0
    described = md.describe(repeated)
    assert described.as_dict()["bar_recurrence"] == 1.0
    assert described.as_dict()["groove_consistency"] == 1.0
    assert described.as_dict()["scale_consistency"] == 1.0
    assert described.as_dict()["mean_notes"] == 8
    similarity = md.bar_self_similarity(repeated)
    np.testing.assert_allclose(similarity, np.ones((4, 4)))
    # Different pitch classes and different rhythm in each bar: nothing recurs.
    distinct = Song(bars=[scale_bar((60 + k,), step=48) for k in range(0, 12, 3)]
                    + [Bar(tracks={0: [Note(o, 61, 3) for o in range(3, 48, 12)]})])  # fmt: skip
    assert md.bar_recurrence(distinct) == 0.0
    # Two bars repeat, one differs; empty bars are left out.
    mixed = Song(bars=[scale_bar(), Bar(), scale_bar(), scale_bar((61,), step=48)])
    assert md.bar_recurrence(mixed) == pytest.approx(2 / 3)
    assert math.isnan(md.bar_recurrence(Song(bars=[scale_bar(), Bar()])))


def test_a_song_read_back_from_midi_has_the_same_descriptors(tmp_path):
    song = Song(bars=[scale_bar(), Bar(tracks={0: [Note(0, 60, 24), Note(0, 67, 24)]})])
    path = tmp_path / "two_bars.mid"
    midi_io.song_to_midi(song).write(str(path))
    assert md.midi_files(str(tmp_path)) == [str(path)]
    read = md.read_song(path)
    assert read.name == "two_bars"
    np.testing.assert_allclose(md.describe(read).vector, md.describe(song).vector)


def _random_songs(seed: int, count: int, pitch_shift: int = 0, notes: int = 6) -> list:
    rng = np.random.default_rng(seed)
    songs = []
    for _ in range(count):
        bars = []
        for _ in range(8):
            onsets = np.sort(rng.choice(48, size=rng.integers(1, notes + 1), replace=False))
            pitches = rng.integers(55, 75, size=len(onsets)) + pitch_shift
            durations = rng.integers(3, 24, size=len(onsets))
            chosen = [Note(*map(int, n)) for n in zip(onsets, pitches, durations, strict=True)]
            bars.append(Bar(tracks={0: chosen}))
        songs.append(md.describe(Song(bars=bars)))
    return songs


def test_overlap_and_frechet_of_a_set_with_itself_and_with_a_disjoint_set():
    real = _random_songs(0, 30)
    stats = real_statistics.build(real, {"data_dir": "synthetic"})
    itself = comparison.compare(real, stats)
    for name in comparison.FEATURES:
        assert itself[f"overlap_{name}"] == pytest.approx(1.0), name
    assert itself["mean_overlap"] == pytest.approx(1.0)
    assert itself["descriptor_fd"] == pytest.approx(0.0, abs=1e-6)
    assert itself["songs"] == 30 and itself["bars"] == 240 and itself["fd_songs"] == 30
    # Silent-bar songs: none of the pitched features can be defined, the counts are disjoint.
    silent = [md.describe(Song(bars=[Bar(tracks={DRUMS: [Note(0, 36, 3)] * 0}) for _ in range(8)]))
              for _ in range(5)]  # fmt: skip
    row = comparison.compare(silent, stats)
    assert row["overlap_notes"] == 0.0 and row["overlap_onsets"] == 0.0
    assert math.isnan(row["overlap_pitch_range"]) and math.isnan(row["descriptor_fd"])
    dense = _random_songs(1, 30, pitch_shift=30, notes=40)
    row = comparison.compare(dense, stats)
    assert row["overlap_notes"] < 0.3 and row["mean_overlap"] < 0.6
    assert row["descriptor_fd"] > 5.0
    # Another draw of the same process sits in between.
    other = comparison.compare(_random_songs(2, 30), stats)
    assert row["mean_overlap"] < other["mean_overlap"] < 1.0


def test_histogram_bins_and_overlap_by_hand():
    edges = comparison.histogram_edges([1, 1, 2, 2, 3, 3, float("nan")], bins=3)
    np.testing.assert_allclose(edges, [1, 5 / 3, 7 / 3, 3])  # the tertiles, NaN left out
    # Below the first edge, [1, 5/3), [5/3, 7/3), [7/3, 3), from 3 on.
    np.testing.assert_array_equal(comparison.histogram([0, 1, 2, 3, 9], edges), [1, 1, 1, 0, 2])
    assert len(comparison.histogram_edges([4, 4, 4], bins=5)) == 1  # duplicates merged
    assert comparison.overlap([1, 1, 0], [0, 1, 1]) == 0.5
    assert math.isnan(comparison.overlap([0, 0], [1, 0]))


def test_statistics_round_trip_and_refusals(tmp_path):
    real = _random_songs(0, 12)
    stats = real_statistics.build(real, {"data_dir": "synthetic", "splits": ["valid"]})
    stats = real_statistics.with_ceiling(stats, [_random_songs(3, 5), _random_songs(4, 5)], "c")
    assert stats.ceiling["draws"] == 2 and 0 < stats.ceiling["mean_overlap"] < 1
    path = real_statistics.save(stats, str(tmp_path / real_statistics.FILE_NAME))
    loaded = real_statistics.load(str(tmp_path))  # a folder holding the file works too
    probe = _random_songs(5, 7)
    assert comparison.compare(probe, loaded) == pytest.approx(comparison.compare(probe, stats))
    assert loaded.ceiling == pytest.approx(stats.ceiling)
    assert loaded.source["songs"] == 12 and loaded.source["splits"] == ["valid"]

    content = json.loads(open(path).read())
    content["settings"]["recurrence_threshold"] = 0.5
    (tmp_path / "other.json").write_text(json.dumps(content))
    with pytest.raises(errors.UserError, match="rebuild"):
        real_statistics.load(str(tmp_path / "other.json"))
    with pytest.raises(errors.UserError, match="not found"):
        real_statistics.load(str(tmp_path / "missing.json"))
    with pytest.raises(errors.UserError, match="at least 2"):
        real_statistics.build(real[:1], {})


def _write_songs(songs, folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, song in enumerate(songs):
        midi_io.song_to_midi(song).write(str(folder / f"song_{i}.mid"))
    return str(folder)


def test_evaluate_midi_stage_on_the_chorales(chorales_data, tmp_path):
    """Folders of MIDI, no model: the held-out chorales written as MIDI match their own
    statistics exactly; the stored statistics give the same table where the data are absent."""
    from stage_fixtures import load_config

    from phrase_jax import main
    from phrase_jax.evaluation import descriptor_rows
    from phrase_jax.stages import evaluate_midi

    held_out = [s for split in ("valid", "test")
                for s in descriptor_rows.prepared_songs(chorales_data, split)]  # fmt: skip
    same = _write_songs(held_out, tmp_path / "held_out")
    scales = _write_songs([Song(bars=[scale_bar()] * 4)] * 2, tmp_path / "scales")
    arg = f"midi_dirs={same}:{scales},data_dir={chorales_data}"
    main.run(load_config("evaluate_midi", arg), str(tmp_path / "out"))
    result = json.loads((tmp_path / "out" / evaluate_midi.METRICS_JSON).read_text())
    rows = result["midi_rows"]
    assert [r["kind"] for r in rows] == ["midi folder", "midi folder", "ceiling"]
    assert rows[0]["metrics"]["mean_overlap"] == pytest.approx(1.0)
    assert rows[0]["metrics"]["descriptor_fd"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["metrics"]["mean_overlap"] < 0.5 and rows[1]["metrics"]["songs"] == 2
    assert 0 < rows[2]["metrics"]["mean_overlap"] <= 1 and rows[2]["metrics"]["draws"] == 1
    assert result["real_statistics"]["songs"] == 2
    assert "mean overlap" in (tmp_path / "out" / evaluate_midi.MARKDOWN).read_text()

    stored = tmp_path / "out" / real_statistics.FILE_NAME
    again = f"midi_dirs={scales},real_statistics={stored},data_dir=nowhere"
    main.run(load_config("evaluate_midi", again), str(tmp_path / "again"))
    rows_again = json.loads((tmp_path / "again" / evaluate_midi.METRICS_JSON).read_text())
    assert rows_again["midi_rows"][0]["metrics"] == pytest.approx(rows[1]["metrics"])

    (tmp_path / "empty").mkdir()
    for bad, match in (
        ("midi_dirs=", "give the MIDI folders"),
        (f"midi_dirs={tmp_path / 'empty'}", "holds no .mid"),
        (f"midi_dirs={scales},data_dir=nowhere", "make data"),
        (f"midi_dirs={scales},real_statistics=nowhere.json", "not found"),
    ):
        with pytest.raises(errors.UserError, match=match):
            main.run(load_config("evaluate_midi", bad), str(tmp_path / "bad"))
