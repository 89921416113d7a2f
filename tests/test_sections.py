"""Section vocabulary and length buckets (music/sections.py): sorted ids, save/load, encoding,
the same ids in every process, floor(n_bars / 10) on numpy and JAX arrays alike."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from phrase_jax.music import sections


def test_length_bucket_is_floor_of_bars_over_ten():
    bars = [1, 9, 10, 64, 69, 128]
    np.testing.assert_array_equal(sections.length_bucket(np.array(bars)), [0, 0, 1, 6, 6, 12])
    np.testing.assert_array_equal(sections.length_bucket(jnp.array(bars)), [0, 0, 1, 6, 6, 12])
    assert sections.length_bucket(59) == 5 and sections.length_bucket(60) == 6


def test_section_vocab_is_sorted_saved_and_loaded(tmp_path):
    songs = [[["i", 4], ["A", 8], ["B", 8]], [["x", 2], ["A", 4], ["b", 4], ["o", 3]]]
    vocab = sections.SectionVocab.build(songs)
    assert vocab.types == ["<pad>", "<unk>", "A", "B", "b", "i", "o", "x"]
    vocab.save(tmp_path / "sections.json")
    assert sections.SectionVocab.load(tmp_path / "sections.json").types == vocab.types
    types, lengths, mask = vocab.encode(songs[1] + [["Z", 500]], max_sections=6, max_length=128)
    np.testing.assert_array_equal(types, [7, 2, 4, 6, 1, 0])
    np.testing.assert_array_equal(lengths, [2, 4, 4, 3, 128, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0])
    vocab.check_capacity(8)
    with pytest.raises(ValueError, match="section_vocab_size"):
        vocab.check_capacity(7)
    (tmp_path / "bad.json").write_text(json.dumps({"types": []}))
    with pytest.raises(ValueError, match="bad.json"):
        sections.SectionVocab.load(tmp_path / "bad.json")


_VOCAB_SCRIPT = """
from phrase_jax.music.sections import SectionVocab
labels = ["i", "A", "B", "C", "D", "E", "X", "b", "o", "x", "c", "verse", "chorus"]
print(SectionVocab.build([[[name, 4] for name in labels]]).types)
"""


def test_section_ids_identical_across_fresh_processes():
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu")
        result = subprocess.run(
            [sys.executable, "-c", _VOCAB_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        outputs.add(result.stdout.strip())
    assert len(outputs) == 1, outputs
