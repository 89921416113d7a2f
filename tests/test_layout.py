"""Slot layout (SPEC 1.7): slot counts, padding, dropped tracks, assembly by position."""

import pytest

from phrase_jax.music import layout, tokenizer, vocab
from phrase_jax.music.events import Bar, Note, Song

MELODY = [Note(0, 72, 12)]
PIANO = [Note(0, 60, 24)]
BASS = [Note(0, 40, 48)]
DRUMS = [Note(0, 36, 3)]
SONG = Song(
    [
        Bar({13: MELODY, 0: PIANO}),
        Bar(),
        Bar({13: MELODY, 0: PIANO, 33: BASS, 128: DRUMS}),
    ]
)


def test_constants_are_the_design_lists():
    assert layout.INST_PHRASE == [vocab.INST] and layout.BAR_PHRASE == [vocab.BAR_END]
    assert layout.SEP_PHRASE == [vocab.SEP]


def test_song_slots_pads_with_inst_and_drops_lowest_tracks():
    result = layout.song_slots(SONG)
    assert result.n_bars == 3 and len(result.slots) == 12
    melody, piano = tokenizer.phrase_tokens(13, MELODY), tokenizer.phrase_tokens(0, PIANO)
    bass = tokenizer.phrase_tokens(33, BASS)
    inst, bar = layout.INST_PHRASE, layout.BAR_PHRASE
    assert result.slots == [
        melody,
        piano,
        inst,
        bar,
        inst,
        inst,
        inst,
        bar,
        melody,
        piano,
        bass,
        bar,
    ]
    assert result.dropped_tracks == 1  # the fourth track of bar 3 (drums, serialised last)
    result.slots[2].append(5)
    assert layout.INST_PHRASE == [vocab.INST]  # slots never alias the constants


def test_wider_bars_keep_more_tracks():
    result = layout.song_slots(SONG, slots_per_bar=6, with_velocity=True)
    assert len(result.slots) == 18 and result.dropped_tracks == 0
    assert result.slots[0] == tokenizer.phrase_tokens(13, MELODY, with_velocity=True)
    assert result.slots[15] == tokenizer.phrase_tokens(128, DRUMS, with_velocity=True)
    assert result.slots[16] == layout.INST_PHRASE and result.slots[17] == layout.BAR_PHRASE
    with pytest.raises(ValueError, match="slots_per_bar must be >= 2"):
        layout.song_slots(SONG, slots_per_bar=1)


def test_pad_slots():
    slots = layout.song_slots(SONG).slots
    padded = layout.pad_slots(slots)
    assert len(padded) == 512 and padded[:12] == slots
    assert all(slot == layout.SEP_PHRASE for slot in padded[12:])
    assert len(layout.pad_slots(slots, max_slots=12)) == 12
    with pytest.raises(ValueError, match="13 slots, more than max_slots=12"):
        layout.pad_slots(slots + [layout.SEP_PHRASE], max_slots=12)


def test_assemble_inverts_layout_and_stops_at_sep():
    slots = layout.pad_slots(layout.song_slots(SONG).slots, max_slots=20)
    decoded = [[vocab.BOS] + slot + [vocab.EOS, vocab.PAD] for slot in slots]  # decoder framing
    song, stats = layout.assemble_song(decoded)
    assert stats.n_bars == 3 and stats.n_slots == 12 and stats.position_disagreements == 0
    expected = Song([SONG.bars[0], SONG.bars[1], Bar({13: MELODY, 0: PIANO, 33: BASS})])
    assert song == expected


def test_assemble_counts_slots_that_disagree_with_their_position():
    melody = tokenizer.phrase_tokens(13, MELODY)
    inst, bar = layout.INST_PHRASE, layout.BAR_PHRASE
    slots = [
        melody, bar, inst, inst,  # b-1 in a track slot; [INST] where b-1 belongs
        melody, inst, inst, melody,  # a track phrase where b-1 belongs
        melody, inst,  # a partial last bar still becomes a bar
        layout.SEP_PHRASE, melody, inst, inst, bar,  # everything after [SEP] is ignored
    ]  # fmt: skip
    song, stats = layout.assemble_song(slots)
    assert len(song.bars) == 3 and all(b.tracks == {13: MELODY} for b in song.bars)
    assert stats.misplaced_bar_ends == 1
    assert stats.bar_slot_mismatches == 2 and stats.misplaced_inst == 1
    assert stats.position_disagreements == 3 and stats.n_slots == 10


def test_assemble_tolerates_garbage_slots():
    slots = [[vocab.PITCH_BASE + 60, 2000], [], [vocab.PROGRAM_BASE, vocab.ONSET_BASE], [23]]
    song, stats = layout.assemble_song(slots)
    assert len(song.bars) == 1 and song.bars[0].tracks == {}
    assert stats.decode.dropped == 2 and stats.position_disagreements == 0


def test_track_choice_keeps_drums_or_busiest_tracks():
    bar = SONG.bars[2]  # melody, piano, bass, drums: one more than 3 track slots
    assert layout.chosen_programs(bar, 3) == [13, 0, 33]  # ref: drums lost first
    assert layout.chosen_programs(bar, 3, "keep_drums") == [13, 0, 128]
    busy = Bar({13: MELODY, 0: PIANO * 3, 33: BASS * 2, 128: DRUMS * 4})
    assert layout.chosen_programs(busy, 2, "most_notes") == [0, 128]
    kept = layout.song_slots(SONG, track_choice="keep_drums")
    assert kept.dropped_tracks == 1 and kept.slots[10] == tokenizer.phrase_tokens(128, DRUMS)
    with pytest.raises(ValueError, match="track_choice"):
        layout.chosen_programs(bar, 3, "loudest")
