"""Bars where the music has them (issue 11, point 3): pickups, repeated and off-grid meters,
bar counts through the round trip."""

from fractions import Fraction

import mido
import pytest

from data_pipelines import chorale_export
from phrase_jax.music import bar_grid, midi_io
from phrase_jax.music.events import Bar, Note, Song


def _bar_starts(song: Song) -> list[Fraction]:
    starts, position = [], Fraction(0)
    for bar in song.bars:
        starts.append(position)
        position += bar_grid.quarters(bar.time_signature)
    return starts


def _file(path, meta_events, n_quarters=16):
    conductor = mido.MidiTrack(meta_events)
    notes = mido.MidiTrack()
    for _ in range(n_quarters):
        notes.append(mido.Message("note_on", note=60, velocity=80, time=0))
        notes.append(mido.Message("note_off", note=60, time=480))
    mido.MidiFile(tracks=[conductor, notes], ticks_per_beat=480).save(str(path))


def test_repeated_and_off_grid_meters_open_no_bars(tmp_path):
    def signature(n, d, time):
        return mido.MetaMessage("time_signature", numerator=n, denominator=d, time=time)

    _file(
        tmp_path / "odd.mid",
        [
            signature(4, 4, 0),
            signature(4, 4, 720),  # repeats the meter in force, mid-bar
            signature(1, 64, 480),  # a 1/64 sliver: 3/4 of a grid position per bar
            signature(27, 64, 1),  # 27/64: 20.25 positions
            signature(4, 4, 1),  # back to the meter in force
        ],
    )
    song = midi_io.midi_to_song(midi_io.load_midi(tmp_path / "odd.mid"))
    assert [bar.time_signature for bar in song.bars] == [(4, 4)] * 4
    assert _bar_starts(song) == [0, 4, 8, 12]
    # A real change inside a bar still ends that bar there (2/4 at quarter 6).
    _file(tmp_path / "change.mid", [signature(4, 4, 0), signature(2, 4, 480 * 6)])
    song = midi_io.midi_to_song(midi_io.load_midi(tmp_path / "change.mid"))
    assert [bar.time_signature for bar in song.bars][:3] == [(4, 4), (2, 4), (2, 4)]


def test_changing_meters_round_trip_keeps_bars(tmp_path):
    meters = [(3, 4), (1, 4), (4, 4), (7, 8), (5, 16), (6, 4), (12, 8), (3, 2), (2, 2)]
    song = Song(
        [Bar({0: [Note(0, 60 + i, 6)]}, meter, 100.0) for i, meter in enumerate(meters)],
        name="meters",
    )
    path = tmp_path / "meters.mid"
    midi_io.song_to_midi(song).write(str(path))
    back = midi_io.midi_to_song(midi_io.load_midi(path))
    assert [bar.time_signature for bar in back.bars] == meters
    assert _bar_starts(back) == _bar_starts(song)


@pytest.mark.parametrize("chorale", ["bwv1.6", "bwv10.7", "bwv11.6", "bwv101.7", "bwv123.6"])
def test_chorale_barlines_are_the_scores(tmp_path, chorale):
    """music21's chorales start with a pickup: it becomes a short first bar and every later
    barline falls on the score's (bwv10.7, bwv11.6 and bwv123.6, in 3/2, have none)."""
    music21 = pytest.importorskip("music21")
    path = music21.corpus.getWork(f"bach/{chorale}")
    path = path[0] if isinstance(path, list) else path
    out = tmp_path / f"{chorale}.mid"
    pickup = chorale_export.export_chorale_midi(str(path), str(out))
    soprano = chorale_export._satb_parts(music21.converter.parse(path))[0]
    # A measure split by a repeat sign (bwv11.6's 16: 2 + 1 beats) is one bar.
    first_of_number = {}
    for measure in soprano.getElementsByClass("Measure"):
        first_of_number.setdefault(measure.number, Fraction(measure.offset))
    score_starts = sorted(first_of_number.values())
    song = midi_io.midi_to_song(midi_io.load_midi(out))
    starts = _bar_starts(song)
    assert (pickup > 0) == (chorale not in ("bwv10.7", "bwv11.6", "bwv123.6"))
    if pickup:
        assert bar_grid.quarters(song.bars[0].time_signature) == pickup
    # Every score barline is one of ours (a long bar may be split for the token grid).
    assert set(score_starts[: len(starts)]) <= set(starts)
    assert len(song.bars) >= len(score_starts) - 1  # a trailing rest-only bar may be cut
    back = tmp_path / "back.mid"
    midi_io.song_to_midi(song).write(str(back))
    assert len(midi_io.midi_to_song(midi_io.load_midi(back)).bars) == len(song.bars)


def test_count_bars_bounds_the_bars_made_without_making_them():
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(50):
        changes = [
            (Fraction(rng.randrange(0, 400), 4), (rng.randrange(1, 13), rng.choice([2, 4, 8, 16])))
            for _ in range(rng.randrange(0, 6))
        ]
        quarters = rng.randrange(1, 300)
        made = list(
            itertools.takewhile(
                lambda span, q=quarters: span.start <= q,
                bar_grid.bars_from_time_signatures(changes),
            )
        )
        counted = bar_grid.count_bars(changes, quarters, stop_after=10**6)
        segments = len(bar_grid.meter_changes(changes))
        assert len(made) <= counted <= len(made) + 2 * segments, (changes, quarters)
