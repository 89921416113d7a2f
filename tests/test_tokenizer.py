"""Serialisation order (SPEC 1.3), meta and velocity tokens, and a decoder that never raises."""

import numpy as np
import pytest

from phrase_jax.music import tokenizer, vocab
from phrase_jax.music.events import Bar, Note, Song

V = vocab.Vocab()


def ids(text: str) -> list[int]:
    return V.encode(text.split())


def strings(token_ids) -> str:
    return " ".join(V.decode(token_ids))


def test_phrase_order_and_onset_tokens():
    notes = [Note(12, 60, 6), Note(0, 64, 12), Note(0, 67, 12), Note(0, 64, 24)]
    assert strings(tokenizer.phrase_tokens(0, notes)) == (
        "i-0 o-0 p-67 d-12 p-64 d-24 p-64 d-12 o-12 p-60 d-6"
    )


def test_drums_and_velocity():
    assert strings(tokenizer.phrase_tokens(128, [Note(3, 36, 3, 127)])) == "i-128 o-3 p-164 d-3"
    assert strings(tokenizer.phrase_tokens(25, [Note(0, 60, 200, 50)], with_velocity=True)) == (
        "i-25 o-0 p-60 d-127 v-12"
    )


BAR = Bar(
    tracks={
        33: [Note(0, 40, 48)],
        128: [Note(0, 36, 3)],
        13: [Note(0, 72, 12), Note(24, 74, 12)],
        0: [Note(0, 60, 24), Note(0, 64, 24)],
    },
    time_signature=(3, 4),
    tempo=120.0,
)


def test_bar_orders_phrases_by_average_pitch_drums_last():
    assert tokenizer.phrase_order(BAR) == [13, 0, 33, 128]
    assert strings(tokenizer.bar_tokens(BAR)) == (
        "i-13 o-0 p-72 d-12 o-24 p-74 d-12 i-0 o-0 p-64 d-24 p-60 d-24 i-33 o-0 p-40 d-48 "
        "i-128 o-0 p-164 d-3 b-1"
    )
    meta = tokenizer.bar_tokens(BAR, with_meta=True)
    assert meta[:2] == [vocab.time_signature_id(3, 4), vocab.tempo_id(120.0)]
    assert meta[2:] == tokenizer.bar_tokens(BAR)
    assert tokenizer.bar_tokens(Bar()) == [vocab.BAR_END]


@pytest.mark.parametrize("with_velocity", [False, True])
@pytest.mark.parametrize("with_meta", [False, True])
def test_decode_inverts_encode(with_velocity, with_meta):
    velocity = 98 if with_velocity else 96  # a bin centre when modelled; the default when not
    signature, tempo = ((5, 4), vocab.tempo_from_bin(30)) if with_meta else ((4, 4), 90.0)
    bar = Bar(
        {0: [Note(0, 60, 12, velocity), Note(40, 55, 30, velocity)],
         128: [Note(6, 38, 3, velocity)]},
        signature, tempo,
    )  # fmt: skip
    song = Song([bar, Bar(time_signature=signature, tempo=tempo), bar])
    tokens = tokenizer.song_tokens(song, with_velocity=with_velocity, with_meta=with_meta)
    decoded, stats = tokenizer.tokens_to_song(np.array(tokens))
    assert stats == tokenizer.DecodeStats(bars=3, notes=6)
    assert decoded == song


def test_signature_token_too_short_for_onsets_is_widened_and_counted():
    tokens = [vocab.time_signature_id(2, 4)] + ids("i-0 o-30 p-60 d-12 b-1")
    song, stats = tokenizer.tokens_to_song(tokens)
    assert song.bars[0].time_signature == (3, 4) and stats.widened_bars == 1


def test_tempo_carries_and_unlisted_bar_widens():
    tokens = [vocab.tempo_id(140)] + ids("i-0 o-60 p-60 d-12 b-1 i-0 o-0 p-60 d-12 b-1")
    song, stats = tokenizer.tokens_to_song(tokens)
    assert [b.time_signature for b in song.bars] == [(6, 4), (4, 4)]
    assert song.bars[1].tempo == song.bars[0].tempo == vocab.tempo_from_bin(vocab.tempo_bin(140))
    assert stats.widened_bars == 0  # no s-* token: widening is the inference, not a repair


@pytest.mark.parametrize(
    "text, kept, violations",
    [
        ("i-0 o-0 p-60 d-12", 1, 0),
        ("i-0 p-60 d-12", 0, 1),  # no onset yet
        ("i-0 o-0 p-60 p-62 d-12", 1, 1),  # a pitch without duration
        ("i-0 o-0 d-12 p-60 d-12", 1, 1),  # stray duration
        ("i-0 o-0 p-60 d-0", 0, 1),  # zero duration
        ("i-128 o-0 p-60 d-3 v-3", 0, 1),  # pitched id on drums; its velocity goes with it
        ("i-0 o-0 p-200 d-3", 0, 1),  # drum id on a pitched track
        ("i-0 o-0 p-60 d-12 v-10 v-11", 1, 1),  # second velocity is stray
        ("v-3 i-0 o-0 p-60 d-12", 1, 1),  # velocity before any note
        ("i-0 o-0 p-60 [PAD] d-12 [EOS]", 1, 0),  # special tokens are skipped
        ("i-0 i-5 o-0 p-60 d-12", 1, 1),  # second program inside one phrase
        ("o-0 p-60 d-12", 0, 1),  # no program
        ("i-0 o-0 p-60 d-12 p-62", 1, 1),  # dangling pitch at the end
        ("i-0 o-0 p-60 d-12 b-1 s-3 t-9 o-5 p-61 d-3", 2, 0),  # structure tokens skipped
    ],
)
def test_parse_phrase_counts_violations(text, kept, violations):
    program, notes, n_violations = tokenizer.parse_phrase(ids(text))
    assert (len(notes), n_violations) == (kept, violations)
    assert program == (None if "i-" not in text else int(text.split("i-")[1].split()[0]))


def test_parse_phrase_velocity_and_program():
    program, notes, _ = tokenizer.parse_phrase(ids("i-128 o-6 p-166 d-3 v-20 p-164 d-3"), 70)
    assert program == 128
    assert notes == [Note(6, 38, 3, vocab.velocity_from_bin(20)), Note(6, 36, 3, 70)]


def test_garbage_ids_never_raise():
    garbage = [1000, -3, "x", 3.5, None, 2**40, np.int64(24)]
    program, notes, violations = tokenizer.parse_phrase(garbage)
    assert (program, notes) == (None, []) and violations == 6  # np.int64(24) is o-0: fine
    song, stats = tokenizer.tokens_to_song(garbage + ids("i-0 o-0 p-60 d-12"))
    assert len(song.bars) == 1 and stats.notes == 1 and stats.dropped == 6


def test_tail_without_bar_end_and_head_without_program():
    song, stats = tokenizer.tokens_to_song(ids("o-0 p-60 d-12 i-0 o-0 p-62 d-12 b-1 i-5 o-3"))
    assert len(song.bars) == 1 and song.bars[0].tracks == {0: [Note(0, 62, 12)]}
    assert stats.dropped == 1  # the head note without a program; the empty tail is no bar
    song, _ = tokenizer.tokens_to_song(ids("b-1 i-5 o-3 p-60 d-3"))
    assert len(song.bars) == 2 and song.bars[1].tracks == {5: [Note(3, 60, 3)]}


def test_random_sequences_decode_to_valid_songs():
    rng = np.random.default_rng(0)
    families = [(0, 23), (23, 24), (24, 152), (152, 281), (281, 537), (537, 665), (665, 697),
                (697, 1000)]  # fmt: skip
    total = tokenizer.DecodeStats()
    for _ in range(200):
        picks = rng.integers(0, len(families), size=300)
        tokens = [int(rng.integers(*families[f])) for f in picks]
        song, stats = tokenizer.tokens_to_song(tokens)
        total += stats
        for bar in song.bars:
            for program, notes in bar.tracks.items():
                assert 0 <= program <= 128
                for note in notes:
                    assert 0 <= note.onset < bar.length and 0 <= note.pitch < 128
                    assert 1 <= note.duration <= 127
    assert total.notes > 0 and total.dropped > 0 and total.ignored > 0
