"""Melody memorisation (SPEC 7): Levenshtein, WER, T2R and MR on small token lists."""

import random

import numpy as np
import pytest

from phrase_jax.evaluation import memorisation as mem
from phrase_jax.music import vocab
from phrase_jax.music.events import Bar, Note, Song

V = vocab.Vocab()


def _table_distance(a, b) -> int:
    """The textbook O(len(a) * len(b)) dynamic programme."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[:], i
        for j, y in enumerate(b, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (x != y))
    return row[-1]


def test_levenshtein_known_answers():
    assert mem.levenshtein(list("kitten"), list("sitting")) == 3
    assert mem.levenshtein(list("flaw"), list("lawn")) == 2
    assert mem.levenshtein([], [1, 2, 3]) == mem.levenshtein([1, 2, 3], []) == 3
    assert mem.levenshtein([], []) == 0
    assert mem.levenshtein([5, 6, 7], [5, 6, 7]) == 0
    assert mem.levenshtein([1], [2]) == 1


def test_levenshtein_matches_the_table_on_random_lists():
    rng = random.Random(0)
    for _ in range(60):
        # Lengths past 64 exercise columns wider than one machine word.
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 150))]
        b = [rng.randrange(4) for _ in range(rng.randrange(0, 150))]
        expected = _table_distance(a, b)
        assert mem.levenshtein(a, b) == expected == mem.levenshtein(b, a)


def test_word_error_rate_divides_by_the_reference_length():
    assert mem.word_error_rate([1, 2, 3, 4], [1, 9, 3]) == pytest.approx(2 / 4)
    assert mem.word_error_rate([1, 2], [1, 2, 3, 4, 5, 6]) == pytest.approx(2.0)  # WER can pass 1
    with pytest.raises(ValueError, match="reference token list is empty"):
        mem.word_error_rate([], [1])


def test_t2r_and_memorisation_rate():
    training = [
        [1, 2, 3, 4, 5, 6, 7, 8],
        [1, 2, 3, 4, 9, 9, 9, 9],
        [8, 8, 8, 8, 8, 8, 8, 8],
    ]
    copied = [1, 2, 3, 4, 5, 6, 7, 8]  # WERs 0, 4/8, 7/8 -> T2R 0: memorised
    novel = [1, 2, 3, 4, 5, 6, 9, 9]  # WERs 2/8, 2/8, 7/8 -> T2R 1: new
    near = [1, 2, 3, 4, 5, 6, 7, 0]  # WERs 1/8, 4/8, 7/8 -> T2R 1/4: memorised
    result = mem.memorisation([copied, novel, near], training)
    np.testing.assert_allclose(result.wers[0], [0, 4 / 8, 7 / 8])
    np.testing.assert_allclose(result.t2r, [0.0, 1.0, 0.25])
    np.testing.assert_array_equal(result.memorised, [True, False, True])
    np.testing.assert_array_equal(result.nearest, [0, 0, 0])
    np.testing.assert_allclose(result.max_similarity, [1.0, 0.75, 7 / 8])
    assert result.memorisation_rate == pytest.approx(2 / 3)
    summary = result.summary()
    assert summary["mean_t2r"] == pytest.approx(1.25 / 3)
    assert summary["memorisation_rate"] == pytest.approx(2 / 3)
    # The threshold is a parameter: at 0.2 only the exact copy counts.
    assert mem.memorisation([copied, near], training, threshold=0.2).memorisation_rate == 0.5


def test_edge_cases_have_defined_values_or_clear_errors():
    training = [[1, 2, 3], [4, 5, 6]]
    empty = mem.memorisation([[]], training)
    np.testing.assert_allclose(empty.wers, [[1.0, 1.0]])
    assert empty.t2r[0] == 1.0 and not empty.memorised[0]
    # A copy of a melody that is in training twice: both nearest WERs are 0, T2R 0.
    assert mem.memorisation([[1, 2, 3]], [[1, 2, 3], [1, 2, 3]]).t2r[0] == 0.0
    assert mem.memorisation([], training).memorisation_rate == 0.0
    with pytest.raises(ValueError, match="at least 2 training melodies"):
        mem.memorisation([[1]], [[1, 2]])
    with pytest.raises(ValueError, match="training melody 1 is empty"):
        mem.memorisation([[1]], [[1, 2], []])


def test_melody_tokens_keep_bar_structure_and_only_the_melody_track():
    song = Song(
        bars=[
            Bar(tracks={13: [Note(0, 72, 12)], 0: [Note(0, 48, 48)]}),
            Bar(tracks={0: [Note(0, 50, 48)]}),
            Bar(tracks={13: [Note(12, 74, 6), Note(0, 72, 12)]}),
        ]
    )
    expected = "i-13 o-0 p-72 d-12 b-1 b-1 i-13 o-0 p-72 d-12 o-12 p-74 d-6 b-1"
    assert mem.melody_tokens(song) == V.encode(expected.split())
    assert mem.melody_tokens(song, program=0)[:4] == V.encode("i-0 o-0 p-48 d-48".split())
    assert mem.melody_tokens(Song(bars=[Bar(tracks={0: [Note(0, 60, 3)]})])) == []
    assert mem.song_melodies([song, Song(bars=[])]) == [mem.melody_tokens(song), []]
