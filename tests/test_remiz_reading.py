"""The remiz reading (phrase_jax/music/remiz_reading.py): token for token what the reference
tokenizer REMI-z reads (issue 11, point 2)."""

import collections

import mido
import pytest

from data_pipelines import datasets
from phrase_jax.music import midi_io, midi_limits, remiz_reading, tokenizer, vocab


def _overlapping_notes_file(path):
    """Two overlapping B3s (pitch 59): on at 0 and at quarter 0.5, offs at 1 and at 2.5."""
    track = mido.MidiTrack(
        [
            mido.Message("note_on", note=59, velocity=90, time=0),
            mido.Message("note_on", note=59, velocity=90, time=240),
            mido.Message("note_off", note=59, time=240),
            mido.Message("note_on", note=72, velocity=90, time=0),  # never ended
            mido.Message("note_off", note=59, time=720),
            mido.Message("note_on", note=36, velocity=90, channel=9, time=0),  # drums
            mido.Message("note_off", note=36, channel=9, time=120),
        ]
    )
    mido.MidiFile(tracks=[track], ticks_per_beat=480).save(str(path))


def _tokens(song):
    return vocab.Vocab().decode(tokenizer.song_tokens(song))


def test_first_in_first_out_pairing_and_no_drums(tmp_path):
    path = tmp_path / "overlap.mid"
    _overlapping_notes_file(path)
    dropped = collections.Counter()
    song = remiz_reading.midi_to_song_remiz(mido.MidiFile(str(path)), dropped=dropped)
    # FIFO: the first note-off ends the first B3 (12 steps), the second ends the second (24).
    assert _tokens(song) == ["i-0", "o-0", "p-59", "d-12", "o-6", "p-59", "d-24", "b-1"]
    assert dropped == {"notes: drums (the REMI-z reading leaves them out)": 1}
    # The default reading: pretty_midi's note-off ends both B3s, then the first is cut at the
    # second's onset; drums stay.
    default = _tokens(midi_io.midi_to_song(midi_io.load_midi(path)))
    assert default[:7] == ["i-0", "o-0", "p-59", "d-6", "o-6", "p-59", "d-6"]
    assert "i-128" in default


def _meters_file(path):
    conductor = mido.MidiTrack(
        [
            mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0),
            mido.MetaMessage("time_signature", numerator=2, denominator=4, time=480 * 4),
            mido.MetaMessage("time_signature", numerator=12, denominator=4, time=480 * 6),
        ]
    )
    notes = mido.MidiTrack()
    for _ in range(24):
        notes.append(mido.Message("note_on", note=60, velocity=80, time=0))
        notes.append(mido.Message("note_off", note=60, time=480))
    mido.MidiFile(tracks=[conductor, notes], ticks_per_beat=480).save(str(path))


def test_meter_changes_take_effect_at_the_next_barline(tmp_path):
    path = tmp_path / "meters.mid"
    _meters_file(path)
    song = remiz_reading.midi_to_song_remiz(mido.MidiFile(str(path)))
    # 2/4 arrives inside bar 2 (quarter 4): it applies from quarter 6; 12/4 is reduced to 6/4.
    meters = [bar.time_signature for bar in song.bars]
    assert meters[:5] == [(3, 4), (3, 4), (2, 4), (2, 4), (6, 4)]


def test_load_song_remiz_reads_a_file_path(tmp_path):
    """The path entry (editing, official weights) gives the parsed-file reading, names the song
    after the file, counts what it leaves out, and reports unreadable files in one line."""
    path = tmp_path / "overlap.mid"
    _overlapping_notes_file(path)
    dropped = collections.Counter()
    song = remiz_reading.load_song_remiz(path, dropped=dropped)
    assert song.name == "overlap"
    assert _tokens(song) == _tokens(remiz_reading.midi_to_song_remiz(mido.MidiFile(str(path))))
    assert dropped["notes: drums (the REMI-z reading leaves them out)"] == 1
    with_drums = remiz_reading.load_song_remiz(path, include_drums=True, name="x")
    assert "i-128" in _tokens(with_drums) and with_drums.name == "x"
    broken = tmp_path / "broken.mid"
    broken.write_bytes(path.read_bytes()[:20])
    with pytest.raises(midi_limits.MidiReadError, match="broken.mid"):
        remiz_reading.load_song_remiz(broken)
    with pytest.raises(midi_limits.MidiReadError, match="max_notes"):
        remiz_reading.load_song_remiz(path, limits=midi_limits.ReadLimits(max_notes=1))


def test_prepare_reads_through_the_path_entry(tmp_path):
    """`settings.reading=remiz` in prepare is the same reading, with the dataset's song name."""
    path = tmp_path / "overlap.mid"
    _overlapping_notes_file(path)
    settings = datasets.DatasetSettings(reading="remiz")
    song, dropped, info = datasets.read_song(str(path), settings, "song-7")
    assert song.name == "song-7" and info == {"reading": "remiz"}
    assert _tokens(song) == _tokens(remiz_reading.load_song_remiz(path))
    assert dropped["notes: drums (the REMI-z reading leaves them out)"] == 1


@pytest.mark.parity
def test_tokens_equal_the_reference_on_written_files(tmp_path):
    reference = pytest.importorskip("remiz_reference")
    pytest.importorskip("remi_z")
    for write in (_overlapping_notes_file, _meters_file):
        path = tmp_path / f"{write.__name__}.mid"
        write(path)
        assert reference.our_tokens(path) == reference.reference_tokens(path), write.__name__


@pytest.mark.parity
@pytest.mark.pop909
def test_tokens_equal_the_reference_on_pop909(pop909_dir, tmp_path):
    """POP909 songs as they are, and the same songs written back by REMI-z itself."""
    reference = pytest.importorskip("remiz_reference")
    pytest.importorskip("remi_z")
    for name in ("001", "002", "003", "004", "005"):
        path = pop909_dir / name / f"{name}.mid"
        theirs = reference.reference_tokens(path)
        assert reference.our_tokens(path) == theirs, name
        written = tmp_path / f"{name}_remiz.mid"
        reference.write_with_reference(theirs, written)
        assert reference.our_tokens(written) == reference.reference_tokens(written), name
