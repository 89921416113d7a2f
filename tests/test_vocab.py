"""The 1000-id vocabulary: every range pinned to the SPEC 1.1 table, JSON save/load/check."""

import json

import pytest

from phrase_jax.music import vocab

PINNED = {
    0: "[EOS]", 1: "[BOS]", 2: "[UNK]", 3: "[CLS]", 4: "[SEP]", 5: "[PAD]", 6: "[MASK]",
    7: "[HIST]", 8: "[PITCH]", 9: "[INST]", 10: "[MELODY]", 11: "[CHORD]", 12: "[COMPRESS]",
    13: "[C0]", 16: "[C3]", 22: "[C9]",
    23: "b-1",
    24: "o-0", 151: "o-127",
    152: "i-0", 280: "i-128",
    281: "p-0", 408: "p-127", 409: "p-128", 536: "p-255",
    537: "d-0", 664: "d-127",
    665: "v-0", 696: "v-31",
    697: "s-0", 950: "s-253",
    951: "t-0", 999: "t-48",
}  # fmt: skip


def test_every_range_is_pinned():
    v = vocab.Vocab()
    assert len(v) == vocab.VOCAB_SIZE == 1000
    for token_id, token in PINNED.items():
        assert v.tokens[token_id] == token, token_id
    assert v.index["b-1"] == vocab.BAR_END
    assert (vocab.EOS, vocab.BOS, vocab.SEP, vocab.PAD, vocab.MASK, vocab.INST) == (
        0,
        1,
        4,
        5,
        6,
        9,
    )
    assert vocab.COMPRESS_QUERIES == (13, 14, 15, 16)


def test_id_helpers_match_token_strings():
    v = vocab.Vocab()
    assert v.tokens[vocab.onset_id(47)] == "o-47"
    assert v.tokens[vocab.program_id(128)] == "i-128"
    assert v.tokens[vocab.pitch_id(60, is_drum=False)] == "p-60"
    assert v.tokens[vocab.pitch_id(36, is_drum=True)] == "p-164"
    assert v.tokens[vocab.duration_id(0)] == "d-1"  # clamped to [1, 127]
    assert v.tokens[vocab.duration_id(500)] == "d-127"
    assert v.tokens[vocab.velocity_id(127)] == "v-31"
    assert vocab.velocity_bin(vocab.velocity_from_bin(17)) == 17


def test_tempo_bins():
    assert vocab.tempo_id(16) == 951 and vocab.tempo_id(256) == 999
    assert vocab.tempo_id(5) == 951 and vocab.tempo_id(1000) == 999  # clamped to [16, 256]
    assert vocab.tempo_id(90) == 981  # 12 * log2(90 / 16) = 29.9
    for b in range(vocab.NUM_TEMPOS):
        assert vocab.tempo_bin(vocab.tempo_from_bin(b)) == b


def test_time_signature_table():
    assert len(vocab.TIME_SIGNATURES) == vocab.NUM_TIME_SIGS == 254
    assert vocab.TIME_SIGNATURES[0] == (1, 1)
    ids = {ts: vocab.time_signature_id(*ts) for ts in [(4, 4), (3, 4), (6, 8), (7, 8)]}
    assert len(set(ids.values())) == 4
    for (num, den), token_id in ids.items():
        assert vocab.TIME_SIGNATURES[token_id - vocab.TIME_SIG_BASE] == (num, den)
    assert vocab.time_signature_id(13, 4) == ids[(4, 4)]  # outside the table: 4/4


def test_encode_decode_strings():
    v = vocab.Vocab()
    tokens = ["i-0", "o-0", "p-60", "d-12", "b-1", "nonsense"]
    ids = v.encode(tokens)
    assert ids == [152, 24, 341, 549, 23, vocab.UNK]
    assert v.decode(ids[:5]) == tokens[:5]
    assert v.decode([1000, -1]) == ["[UNK]", "[UNK]"]


def test_json_round_trip_and_check(tmp_path):
    v = vocab.Vocab()
    path = tmp_path / "vocab.json"
    v.to_json(path)
    assert vocab.Vocab.from_json(path) == v
    data = json.loads(path.read_text())
    data["tokens"][23], data["tokens"][24] = data["tokens"][24], data["tokens"][23]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="vocab.json: vocabulary differs"):
        vocab.Vocab.from_json(path)


def test_wrong_size_is_rejected():
    with pytest.raises(ValueError, match="1000 distinct tokens"):
        vocab.Vocab(tuple(vocab.Vocab().tokens[:999]))
