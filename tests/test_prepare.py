"""Dataset preparation: a 6-song subset (Bach chorales, and POP909 when present), chorales, bad
MIDI input, splits, resumability."""

import json
import pathlib

import mido
import numpy as np
import pretty_midi
import pytest
from array_record.python import array_record_module
from stage_fixtures import DATASET_PARAMS

from data_pipelines import datasets, prepare
from phrase_jax.music import events, vocab


def _records(path: pathlib.Path) -> list[bytes]:
    reader = array_record_module.ArrayRecordReader(str(path))
    out = [reader.read() for _ in range(reader.num_records())]
    reader.close()
    return out


def _all_records(out: pathlib.Path, manifest: dict, kind: str, split: str) -> list[bytes]:
    return [r for name in manifest["shards"][kind][split] for r in _records(out / name)]


def _quiet(_message) -> None:
    """Drops prepare's progress lines (the tests read the manifest instead)."""


# The tracks each dataset's songs keep (POP909: MELODY, BRIDGE, PIANO; chorales: SATB).
TRACK_PROGRAMS = {"pop909": (13, 25, 0), "chorales": datasets.CHORALE_PROGRAMS}


@pytest.fixture(scope="module", params=DATASET_PARAMS)
def small(request, tmp_path_factory):
    """(dataset, input_dir, out, manifest) of the first 6 songs, prepared in their own folder
    (the resumability test re-prepares it)."""
    dataset = request.param
    input_dir = str(request.getfixturevalue("pop909_dir")) if dataset == "pop909" else None
    out = tmp_path_factory.mktemp(f"{dataset}_small")
    manifest = prepare.prepare(dataset, out, input_dir=input_dir, workers=1, limit=6, log=_quiet)
    return dataset, input_dir, out, manifest


def test_parse_and_fit_section_labels():
    assert datasets.parse_section_label("i4A4B8o3\n") == [("i", 4), ("A", 4), ("B", 8), ("o", 3)]
    for bad in ("", "A4B", "4A", "A0", "A4 B4"):
        with pytest.raises(ValueError, match="section label"):
            datasets.parse_section_label(bad)
    song = events.Song([events.Bar({0: [events.Note(0, 60, 12)]}) for _ in range(10)])
    sections = [("A", 4), ("B", 4)]
    exact = datasets.DatasetSettings(section_rule="exact")
    fitted, reject, cut = datasets.fit_sections(song, sections, exact)
    assert fitted.sections is None and "8 bars != 10 bars" in reject and cut == 0
    fitted, reject, cut = datasets.fit_sections(song, sections, datasets.DatasetSettings())
    assert reject is None and cut == 2 and len(fitted.bars) == 8 and fitted.sections == sections
    far = datasets.DatasetSettings(section_slack=1)
    assert datasets.fit_sections(song, sections, far)[1] is not None


def test_splits_are_deterministic_by_song():
    names = [f"{i:03d}" for i in range(1, 910)]
    first = prepare.split_songs(names, prepare.OutputSettings())
    assert first == prepare.split_songs(list(reversed(names)), prepare.OutputSettings())
    assert [len(first[s]) for s in ("train", "valid", "test")] == [819, 45, 45]
    assert sorted(sum(first.values(), [])) == names
    other = prepare.split_songs(names, prepare.OutputSettings(seed=7))
    assert other["valid"] != first["valid"]


def test_subset_manifest_and_records(small):
    dataset, input_dir, out, manifest = small
    assert manifest["vocab_sha256"] == vocab.Vocab().sha256
    assert vocab.Vocab.from_json(out / "vocab.json") == vocab.Vocab()
    counts = manifest["counts"]
    assert counts["songs_listed"] == 6 and counts["songs_loaded"] == 6
    names = [s.name for s in datasets.get_dataset(dataset).list_sources(input_dir, str(out))][:6]
    assert dataset != "pop909" or names == ["001", "002", "003", "004", "005", "006"]
    assert manifest["splits"] == prepare.split_songs(names, prepare.OutputSettings())
    assert manifest["settings"]["quantize_step"] == 3 and manifest["settings"]["seed"] == 42
    for kind in ("phrases", "bars", "songs"):
        for split in ("train", "valid", "test"):
            assert len(_all_records(out, manifest, kind, split)) == manifest["records"][kind][split]
    phrases = [np.frombuffer(r, np.int16) for r in _all_records(out, manifest, "phrases", "train")]
    bars = [np.frombuffer(r, np.int16) for r in _all_records(out, manifest, "bars", "train")]
    n_songs = len(manifest["splits"]["train"])
    # Phrase corpus: track phrases + one [INST] and one b-1 per bar + one [SEP] per song.
    assert sum(p.tolist() == [vocab.INST] for p in phrases) == len(bars)
    assert sum(p.tolist() == [vocab.BAR_END] for p in phrases) == len(bars)
    assert sum(p.tolist() == [vocab.SEP] for p in phrases) == n_songs
    track = [p for p in phrases if len(p) > 1]
    assert {int(p[0]) for p in track} <= {vocab.program_id(q) for q in TRACK_PROGRAMS[dataset]}
    assert all(b[-1] == vocab.BAR_END for b in bars)
    # 16th-note quantisation: every onset position is a multiple of 3.
    onsets = np.concatenate([b[(b >= vocab.ONSET_BASE) & (b < vocab.PROGRAM_BASE)] for b in bars])
    assert onsets.size and np.all((onsets - vocab.ONSET_BASE) % 3 == 0)
    songs = [
        json.loads(r)
        for s in ("train", "valid", "test")
        for r in _all_records(out, manifest, "songs", s)
    ]
    assert len(songs) == counts["ldm_songs"] >= 1
    spb = manifest["settings"]["slots_per_bar"]
    assert spb == {"pop909": 4, "chorales": 5}[dataset]
    for song in songs:
        assert len(song["slots"]) == spb * song["n_bars"] <= spb * 128
        assert all(slot == [vocab.BAR_END] for slot in song["slots"][spb - 1 :: spb])
        if dataset == "pop909":  # the chorales carry no section labels
            assert sum(n for _, n in song["sections"]) == song["n_bars"]
        else:
            assert song["sections"] is None
    stats = manifest["token_stats"]
    assert 10 < stats["phrase_tokens"]["p50"] < 60 and 20 < stats["bar_tokens"]["p50"] < 120


def test_rerun_skips_finished_work(small):
    dataset, input_dir, out, manifest = small
    lines = []
    again = prepare.prepare(dataset, out, input_dir=input_dir, workers=1, limit=6, log=lines.append)
    assert again == manifest and "up to date" in lines[0] and len(lines) == 1
    # Another split seed re-writes shards from the per-song cache without re-processing.
    lines.clear()
    reseeded = prepare.prepare(
        dataset,
        out,
        input_dir=input_dir,
        workers=1,
        limit=6,
        output=prepare.OutputSettings(seed=1),
        log=lines.append,
    )
    assert "6 cached, 0 to process" in lines[0]
    assert reseeded["token_stats"] == manifest["token_stats"]
    prepare.prepare(dataset, out, input_dir=input_dir, workers=1, limit=6, log=_quiet)


def test_chorales_four_voices(tmp_path):
    manifest = prepare.prepare("chorales", tmp_path, workers=1, limit=3, log=_quiet)
    assert manifest["counts"]["songs_loaded"] == 3 and manifest["settings"]["slots_per_bar"] == 5
    assert len(list((tmp_path / "chorale_midi").glob("*.mid"))) == 3  # export cached
    programs = set()
    for split in ("train", "valid", "test"):
        for record in _all_records(tmp_path, manifest, "bars", split):
            ids = np.frombuffer(record, np.int16)
            programs |= set((ids[(ids >= 152) & (ids < 281)] - vocab.PROGRAM_BASE).tolist())
    assert programs == set(datasets.CHORALE_PROGRAMS)


def _good_midi(path, n_bars=4, zero_length=False):
    pm = pretty_midi.PrettyMIDI(initial_tempo=100)
    piano = pretty_midi.Instrument(program=0)
    beat = 60 / 100
    for i in range(4 * n_bars):
        piano.notes.append(pretty_midi.Note(90, 60 + i % 12, i * beat, (i + 1) * beat))
    if zero_length:
        piano.notes.append(pretty_midi.Note(90, 72, beat, beat))
    pm.instruments.append(piano)
    pm.write(str(path))


def _over_tick_limit_midi(path):
    track = mido.MidiTrack()
    track.append(mido.Message("note_on", note=60, velocity=90, time=0))
    track.append(mido.Message("note_off", note=60, velocity=0, time=int(2e7)))
    mido.MidiFile(tracks=[track], ticks_per_beat=480).save(str(path))


def test_bad_midi_files_are_recorded_not_fatal(tmp_path):
    folder = tmp_path / "midi"
    (folder / "sub").mkdir(parents=True)
    _good_midi(folder / "good.mid")
    _good_midi(folder / "sub" / "zero_length.mid", zero_length=True)
    _good_midi(tmp_path / "whole.mid")
    (folder / "truncated.mid").write_bytes((tmp_path / "whole.mid").read_bytes()[:40])
    (folder / "empty.mid").write_bytes(b"")
    (folder / "text.midi").write_text("this is not a MIDI file\n")
    _over_tick_limit_midi(folder / "huge.mid")
    messages = []
    manifest = prepare.prepare(
        "midi", tmp_path / "out", input_dir=str(folder), workers=2, log=messages.append
    )
    skipped = {s["name"]: s for s in manifest["skipped"]}
    assert set(skipped) == {"truncated.mid", "empty.mid", "text.midi", "huge.mid"}
    assert all(s["path"].startswith(str(folder)) and s["reason"] for s in skipped.values())
    assert "empty" in skipped["empty.mid"]["reason"]
    assert manifest["counts"]["songs_loaded"] == 2 and manifest["counts"]["songs_skipped"] == 4
    assert sum(m.startswith("warning: skipped") for m in messages) == 4
    assert all("\n" not in m for m in messages)


def test_cli_reports_missing_input(tmp_path):
    with pytest.raises(SystemExit, match="--midi_dir"):
        prepare.main(["--dataset", "midi", "--out_dir", str(tmp_path)])
