"""MIDI <-> Song: known-answer grids (odd meters, tempo changes, drums, beat annotations), bad
files, and exact round trips tokens -> MIDI -> tokens on POP909 and Bach chorales."""

import io

import mido
import numpy as np
import pretty_midi
import pytest

from phrase_jax.music import midi_io, tokenizer
from phrase_jax.music.events import Bar, Note, Song

POP909_PROGRAMS = {"MELODY": 13, "BRIDGE": 25, "PIANO": 0}
# SATB -> a string quartet (violin, viola, cello, contrabass): four distinct programs, so the
# voices stay four tracks instead of merging.
CHORALE_PROGRAMS = {"Soprano": 40, "Alto": 41, "Tenor": 42, "Bass": 43}


def _save(mid: mido.MidiFile, path) -> None:
    mid.save(filename=str(path))


def _track(events, name=None):
    """A mido track from (absolute tick, message) pairs."""
    track = mido.MidiTrack()
    if name:
        track.append(mido.MetaMessage("track_name", name=name, time=0))
    now = 0
    for tick, message in sorted(events, key=lambda e: e[0]):
        track.append(message.copy(time=tick - now))
        now = tick
    return track


def _notes(channel, notes):
    events = []
    for start, length, pitch, velocity in notes:
        events.append(
            (start, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity))
        )
        events.append((start + length, mido.Message("note_off", channel=channel, note=pitch)))
    return events


def _odd_meter_file(path):
    """3/4 x2, 6/8 x2, 7/8 x2 at 480 ticks per quarter (40 ticks per grid step); tempo 120 then
    80 from tick 1200 (inside bar 0); two program-0 tracks, a bass and drums."""
    mid = mido.MidiFile(ticks_per_beat=480)
    mid.tracks.append(
        _track(
            [
                (0, mido.MetaMessage("time_signature", numerator=3, denominator=4)),
                (0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120))),
                (1200, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(80))),
                (2880, mido.MetaMessage("time_signature", numerator=6, denominator=8)),
                (5760, mido.MetaMessage("time_signature", numerator=7, denominator=8)),
            ]
        )
    )
    piano_a = [(0, 480, 60, 100), (1320, 480, 64, 90), (3600, 240, 67, 80), (6960, 480, 72, 70)]
    piano_a.append((7440, 1680, 71, 60))
    mid.tracks.append(_track([(0, mido.Message("program_change", channel=0, program=0))]
                             + _notes(0, piano_a), "Piano A"))  # fmt: skip
    mid.tracks.append(_track(_notes(1, [(480, 480, 48, 50)]), "Piano B"))
    bass = [(0, mido.Message("program_change", channel=2, program=33))]
    mid.tracks.append(
        _track(bass + _notes(2, [(1440, 2880, 40, 64), (4320, 9600, 41, 64)]), "Bass")
    )
    mid.tracks.append(_track(_notes(9, [(0, 120, 36, 110), (6600, 80, 38, 100)]), "Drums"))
    _save(mid, path)


ODD_METER_SONG = Song(
    bars=[
        Bar({0: [Note(0, 60, 12, 100), Note(12, 48, 12, 50), Note(33, 64, 12, 90)],
             128: [Note(0, 36, 3, 110)]}, (3, 4), 120.0),
        Bar({33: [Note(0, 40, 72, 64)]}, (3, 4), 80.0),
        Bar({0: [Note(18, 67, 6, 80)]}, (6, 8), 80.0),
        Bar({33: [Note(0, 41, 127, 64)]}, (6, 8), 80.0),
        Bar({0: [Note(30, 72, 12, 70)], 128: [Note(21, 38, 2, 100)]}, (7, 8), 80.0),
        Bar({0: [Note(0, 71, 42, 60)]}, (7, 8), 80.0),
    ]
)  # fmt: skip


def _write_and_read(pm: pretty_midi.PrettyMIDI, path) -> pretty_midi.PrettyMIDI:
    pm.write(str(path))
    return midi_io.load_midi(path)


def test_odd_meters_tempo_change_drums(tmp_path):
    path = tmp_path / "odd.mid"
    _odd_meter_file(path)
    song = midi_io.midi_to_song(midi_io.load_midi(path))
    assert song == ODD_METER_SONG
    back = midi_io.midi_to_song(_write_and_read(midi_io.song_to_midi(song), tmp_path / "back.mid"))
    assert back == ODD_METER_SONG
    ts = [(t.numerator, t.denominator) for t in midi_io.song_to_midi(song).time_signature_changes]
    assert ts == [(3, 4), (6, 8), (7, 8)]  # one event per change


def test_track_programs_and_same_program_merge(tmp_path):
    path = tmp_path / "odd.mid"
    _odd_meter_file(path)
    song = midi_io.midi_to_song(midi_io.load_midi(path), track_programs={"Piano B": 5, "Drums": 1})
    assert song.bars[0].tracks[5] == [Note(12, 48, 12, 50)]
    assert 128 in song.bars[0].tracks  # is_drum wins over the name map


def _beat_grid():
    intervals = np.array([0.5, 0.5, 0.6, 0.6, 0.4, 0.5, 0.7, 0.5] * 3)[:23]
    return 1.0 + np.concatenate([[0.0], np.cumsum(intervals)])  # 24 beats, irregular tempo


def _time_of_beat(beats, beat):
    if beat > len(beats) - 1:
        return beats[-1] + (beat - len(beats) + 1) * (beats[-1] - beats[-2])
    return float(np.interp(beat, np.arange(len(beats)), beats))


def _beat_song(note_beats, step=3):
    """Notes at beat positions (beat, length in beats, pitch); downbeats at beats 1, 5, 8, 20."""
    beats = _beat_grid()
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0, name="PIANO")
    for beat, length, pitch in note_beats:
        start, end = _time_of_beat(beats, beat), _time_of_beat(beats, beat + length)
        piano.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=start, end=end))
    pm.instruments.append(piano)
    downbeats = beats[[1, 5, 8, 20]]
    return midi_io.midi_to_song(
        pm, beat_times=beats, downbeat_times=downbeats, quantize_step=step,
        track_programs={"PIANO": 7},
    )  # fmt: skip


def test_beat_annotations_pickup_odd_bars_and_split():
    song = _beat_song([(0, 1, 60), (1.5, 1, 62), (6.3, 0.5, 64), (14.5, 1, 65), (24.5, 1, 67)])
    # pickup [-3, 1) of the first bar's length; 4 beats; 3 beats; 12 beats -> 6/4 + 6/4; the
    # last downbeat's bar repeats 12 beats -> 6/4 + ...; the note past the last beat extrapolates.
    assert [bar.time_signature for bar in song.bars] == [
        (4, 4),
        (4, 4),
        (3, 4),
        (6, 4),
        (6, 4),
        (6, 4),
    ]
    notes = [(i, n.onset, n.pitch, n.duration) for i, bar in enumerate(song.bars)
             for n in bar.tracks.get(7, [])]  # fmt: skip
    assert notes == [
        (0, 36, 60, 12),
        (1, 6, 62, 12),
        (2, 15, 64, 6),
        (4, 6, 65, 12),
        (5, 54, 67, 12),
    ]
    beats = _beat_grid()
    assert song.bars[1].tempo == pytest.approx(60 * 4 / (beats[5] - beats[1]))


def test_beat_annotations_no_pickup_for_a_hair_early_note():
    song = _beat_song([(0.995, 1, 60)], step=1)
    assert len(song.bars) == 1 and song.bars[0].tracks[7] == [Note(0, 60, 12, 80)]


def test_quantize_step_snaps_onsets_and_durations():
    song = _beat_song([(1.1, 0.01, 60), (1.8, 0.3, 62)], step=3)
    assert song.bars[0].tracks[7] == [Note(0, 60, 3, 80), Note(9, 62, 3, 80)]


def test_zero_length_and_overlapping_notes_are_handled():
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(program=0)
    piano.notes += [
        pretty_midi.Note(velocity=90, pitch=60, start=0.0, end=0.0),  # zero length -> 1 step
        pretty_midi.Note(velocity=90, pitch=62, start=0.5, end=1.5),  # cut at the next 62
        pretty_midi.Note(velocity=90, pitch=62, start=1.0, end=1.25),
        pretty_midi.Note(velocity=70, pitch=64, start=1.0, end=1.5),  # same cell: longest kept
        pretty_midi.Note(velocity=90, pitch=64, start=1.0, end=2.0),
    ]
    pm.instruments.append(piano)
    song = midi_io.midi_to_song(pm)
    assert song.bars[0].tracks[0] == [
        Note(0, 60, 1, 90),
        Note(12, 62, 12, 90),
        Note(24, 64, 24, 90),
        Note(24, 62, 6, 90),
    ]


def test_empty_midi_gives_empty_song_and_writes(tmp_path):
    assert midi_io.midi_to_song(pretty_midi.PrettyMIDI()).bars == []
    back = _write_and_read(midi_io.song_to_midi(Song(bars=[])), tmp_path / "empty.mid")
    assert midi_io.midi_to_song(back).bars == []


def test_song_to_midi_options(tmp_path):
    song = Song([Bar({13: [Note(0, 72, 12, 0)], 128: [Note(6, 42, 3, 100)]}, (4, 4), 100.0)])
    pm = midi_io.song_to_midi(song, tempo=60.0, programs={13: 73}, default_velocity=64)
    assert pm.get_tempo_changes()[1].tolist() == [60.0]
    melody, drums = pm.instruments
    assert (melody.program, melody.is_drum, drums.is_drum) == (73, False, True)
    assert melody.notes[0].velocity == 64 and melody.notes[0].end == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multiple of 12"):
        midi_io.song_to_midi(song, resolution=100)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty file"),
        (b"not a midi file\n" * 8, "not a MIDI file"),
        (b"MThd\x00\x00\x00\x06garbage" * 4, "not a readable MIDI file"),
        ("truncated", "file ends early"),
        ("over_tick_limit", "over the max_quarters limit"),
    ],
)
def test_bad_files_raise_midi_read_error(tmp_path, payload, reason):
    path = tmp_path / "bad.mid"
    if payload == "truncated":
        _odd_meter_file(path)
        path.write_bytes(path.read_bytes()[:-40])
    elif payload == "over_tick_limit":
        mid = mido.MidiFile(ticks_per_beat=480)
        mid.tracks.append(_track(_notes(0, [(0, 20_000_000, 60, 90)])))
        _save(mid, path)
    else:
        path.write_bytes(payload)
    with pytest.raises(midi_io.MidiReadError, match=reason) as info:
        midi_io.load_midi(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_missing_file_and_zero_length_note_file(tmp_path):
    with pytest.raises(midi_io.MidiReadError, match="cannot open file"):
        midi_io.load_midi(tmp_path / "missing.mid")
    mid = mido.MidiFile(ticks_per_beat=480)
    mid.tracks.append(_track(_notes(0, [(0, 0, 60, 90), (480, 480, 62, 90)])))
    _save(mid, tmp_path / "zero.mid")
    # pretty_midi itself drops a note whose on and off share a tick; the rest reads normally.
    song = midi_io.midi_to_song(midi_io.load_midi(tmp_path / "zero.mid"))
    assert song.bars[0].tracks == {0: [Note(12, 62, 12, 90)]}


def _round_trip(song: Song, tmp_path, with_velocity: bool, with_meta: bool) -> bool:
    """tokens -> Song -> MIDI file -> Song (no annotations) -> tokens; True when identical."""
    tokens = tokenizer.song_tokens(song, with_velocity=with_velocity, with_meta=with_meta)
    decoded, stats = tokenizer.tokens_to_song(tokens)
    assert stats.dropped == 0 and stats.widened_bars == 0
    buffer = io.BytesIO()
    midi_io.song_to_midi(decoded).write(buffer)
    path = tmp_path / "round_trip.mid"
    path.write_bytes(buffer.getvalue())
    back = midi_io.midi_to_song(midi_io.load_midi(path))
    return tokenizer.song_tokens(back, with_velocity=with_velocity, with_meta=with_meta) == tokens


def load_pop909_song(pop909_dir, name: str) -> Song:
    beats = np.loadtxt(pop909_dir / name / "beat_midi.txt", ndmin=2)
    return midi_io.midi_to_song(
        midi_io.load_midi(pop909_dir / name / f"{name}.mid"),
        name=name, beat_times=beats[:, 0], downbeat_times=beats[beats[:, 2] == 1, 0],
        quantize_step=3, track_programs=POP909_PROGRAMS,
    )  # fmt: skip


@pytest.mark.pop909
def test_pop909_round_trip(pop909_dir, tmp_path):
    names = [f"{i:03d}" for i in range(1, 910, 43)]  # 22 songs spread over the set
    exact = {"meta": 0, "meta+velocity": 0, "plain, all 4/4": 0}
    all_four_four = 0
    for name in names:
        song = load_pop909_song(pop909_dir, name)
        notes = [n for bar in song.bars for track in bar.tracks.values() for n in track]
        assert notes and {p for bar in song.bars for p in bar.tracks} <= {0, 13, 25}
        assert all(n.duration % 3 == 0 for n in notes)
        assert all(n.onset % 3 == 0 for n in notes)
        exact["meta"] += _round_trip(song, tmp_path, with_velocity=False, with_meta=True)
        exact["meta+velocity"] += _round_trip(song, tmp_path, with_velocity=True, with_meta=True)
        if all(bar.time_signature == (4, 4) for bar in song.bars):
            all_four_four += 1
            exact["plain, all 4/4"] += _round_trip(song, tmp_path, False, False)
    print(f"POP909 exact round trips of {len(names)} songs: {exact} ({all_four_four} all 4/4)")
    assert exact["meta"] == exact["meta+velocity"] == len(names)
    assert exact["plain, all 4/4"] == all_four_four >= 5


def test_bach_chorales_round_trip(tmp_path, monkeypatch):
    """Four SATB chorales exported by music21 at 480 ticks per quarter."""
    music21 = pytest.importorskip("music21")
    monkeypatch.setattr(music21.defaults, "ticksPerQuarter", 480)
    for chorale in (
        "bach/bwv66.6",
        "bach/bwv10.7",
        "bach/bwv11.6",
        "bach/bwv123.6",
    ):  # 4/4, 3/4, 3/2
        score = music21.corpus.parse(chorale)
        path = tmp_path / "chorale.mid"
        path.write_bytes(music21.midi.translate.streamToMidiFile(score).writestr())
        pm = midi_io.load_midi(path)
        assert pm.resolution == 480
        song = midi_io.midi_to_song(pm, name=chorale, track_programs=CHORALE_PROGRAMS)
        assert {p for bar in song.bars for p in bar.tracks} == {40, 41, 42, 43}, chorale
        assert _round_trip(song, tmp_path, with_velocity=True, with_meta=True), chorale
        if all(bar.length <= 48 for bar in song.bars):
            # Plain tokens carry no bar length; bars decode as 4/4, never shorter than these.
            assert _round_trip(song, tmp_path, with_velocity=True, with_meta=False), chorale
