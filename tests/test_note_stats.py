"""Note statistics (SPEC 7) on hand-made songs with known answers."""

import math

import numpy as np
import pytest

from phrase_jax.evaluation import note_stats
from phrase_jax.music.events import Bar, Note, Song

DRUMS = 128


def _two_bar_song() -> Song:
    return Song(
        bars=[
            Bar(
                tracks={
                    0: [Note(0, 60, 24), Note(0, 64, 24), Note(24, 67, 24)],
                    DRUMS: [Note(0, 36, 3)],
                }
            ),
            Bar(tracks={0: [Note(0, 72, 12)]}),
        ],
        name="two_bars",
    )


def test_known_statistics_of_a_two_bar_song():
    stats = note_stats.note_statistics(_two_bar_song())
    assert set(stats) == set(note_stats.STATISTICS)
    assert stats["notes_per_bar"] == pytest.approx(5 / 2)  # drums count here
    # Pitched notes: 2 sound over 0..23, 1 over 24..47, 1 over 48..59 (drums left out).
    assert stats["polyphony"] == pytest.approx((24 * 2 + 24 + 12) / 60)
    # Pitch classes C, E, G, C: p = 1/2, 1/4, 1/4 -> 1.5 bits.
    assert stats["pitch_class_entropy"] == pytest.approx(1.5)
    assert stats["scale_consistency"] == pytest.approx(1.0)
    # Onsets {0, 24} vs {0}: one position differs out of 48.
    assert stats["groove_consistency"] == pytest.approx(1 - 1 / 48)
    # Bar 0 sounds throughout; bar 1 only in its first beat: 3 of 8 beats are empty.
    assert stats["empty_beat_rate"] == pytest.approx(3 / 8)


def test_uniform_pitch_classes_and_scale_consistency():
    chromatic = Song(bars=[Bar(tracks={0: [Note(i * 4, 60 + i, 4) for i in range(12)]})])
    stats = note_stats.note_statistics(chromatic)
    assert stats["pitch_class_entropy"] == pytest.approx(math.log2(12))
    assert stats["scale_consistency"] == pytest.approx(7 / 12)
    assert stats["polyphony"] == pytest.approx(1.0)
    assert math.isnan(stats["groove_consistency"])  # one bar: no consecutive pair
    # A minor and C major share their notes; A harmonic-minor's G# is outside both.
    a_minor = Song(bars=[Bar(tracks={0: [Note(0, p, 12) for p in (57, 60, 64, 68)]})])
    assert note_stats.note_statistics(a_minor)["scale_consistency"] == pytest.approx(3 / 4)


def test_notes_across_barlines_and_odd_meters():
    # A note from beat 4 of bar 0 into beat 1 of bar 1 fills both beats.
    tied = Song(bars=[Bar(tracks={0: [Note(36, 60, 24)]}), Bar()])
    stats = note_stats.note_statistics(tied)
    assert stats["empty_beat_rate"] == pytest.approx(6 / 8)
    assert stats["notes_per_bar"] == pytest.approx(0.5)
    # 6/8 is 36 positions = 3 quarter beats; the note sounds only in the second.
    six_eight = Song(bars=[Bar(tracks={0: [Note(12, 60, 12)]}, time_signature=(6, 8))])
    assert note_stats.note_statistics(six_eight)["empty_beat_rate"] == pytest.approx(2 / 3)
    # A note past the song's end is cut there.
    long_note = Song(bars=[Bar(tracks={0: [Note(0, 60, 127)]})])
    assert note_stats.note_statistics(long_note)["empty_beat_rate"] == 0.0


def test_drum_only_songs_have_no_pitch_statistics_and_means_skip_them():
    drums = Song(bars=[Bar(tracks={DRUMS: [Note(0, 36, 3), Note(24, 38, 3)]})] * 2)
    stats = note_stats.note_statistics(drums)
    assert math.isnan(stats["polyphony"]) and math.isnan(stats["pitch_class_entropy"])
    assert math.isnan(stats["scale_consistency"])
    assert stats["groove_consistency"] == 1.0 and stats["notes_per_bar"] == 2.0
    means = note_stats.mean_note_statistics([drums, _two_bar_song()])
    assert means["pitch_class_entropy"] == pytest.approx(1.5)  # only the pitched song
    assert means["notes_per_bar"] == pytest.approx((2.0 + 2.5) / 2)
    with pytest.raises(ValueError, match="no bars"):
        note_stats.note_statistics(Song(bars=[], name="empty"))


def test_comparison_and_markdown_table():
    real = note_stats.mean_note_statistics([_two_bar_song()])
    chromatic = Song(bars=[Bar(tracks={0: [Note(i * 4, 60 + i, 4) for i in range(12)]})] * 2)
    comparison = note_stats.compare_note_statistics([chromatic], real)
    row = comparison["pitch_class_entropy"]
    assert row["real"] == pytest.approx(1.5) and row["generated"] == pytest.approx(math.log2(12))
    assert row["abs_diff"] == pytest.approx(math.log2(12) - 1.5)
    assert comparison["notes_per_bar"]["abs_diff"] == pytest.approx(12 - 2.5)
    table = note_stats.note_statistics_table(comparison)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(note_stats.STATISTICS)
    assert lines[0].startswith("| statistic | generated | real")
    assert "| notes_per_bar | 12.0000 | 2.5000 | 9.5000 |" in lines
    assert np.isfinite(comparison["groove_consistency"]["abs_diff"])
