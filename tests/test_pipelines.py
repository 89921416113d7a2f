"""Grain VAE pipelines: shapes and masks, determinism, checkpoint/restore, sharding, span noise."""

import json

import numpy as np
import pretty_midi
import pytest

from data_pipelines import prepare, sources, transforms, vae_pipeline
from phrase_jax.music import vocab

KEYS = ("encoder_ids", "encoder_mask", "decoder_inputs", "decoder_targets", "decoder_mask")


def _random_song(path, rng, n_bars=12):
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    for program, low in ((0, 48), (25, 60), (13, 72)):
        inst = pretty_midi.Instrument(program=program)
        for step in range(n_bars * 8):  # eighth-note slots at 120 bpm = 0.25 s
            if rng.random() < 0.6:
                start = step * 0.25
                length = 0.25 * int(rng.integers(1, 4))
                inst.notes.append(
                    pretty_midi.Note(80, low + int(rng.integers(0, 12)), start, start + length)
                )
        pm.instruments.append(inst)
    pm.write(str(path))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_data")
    rng = np.random.default_rng(0)
    for i in range(12):
        _random_song(root / f"song{i:02d}.mid", rng)
    out = root / "prepared"
    prepare.prepare("midi", out, input_dir=str(root), workers=1, log=lambda _: None)
    return str(out)


def _loader(data_dir, kind="phrases", **kw):
    args = dict(batch_size=8, seed=3, max_len=64, shard_index=0, shard_count=1) | kw
    return vae_pipeline.make_vae_loader(data_dir, "train", kind, **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in KEYS)


def test_phrase_batch_layout(data_dir):
    batch = next(_loader(data_dir))
    assert set(batch) == set(KEYS)
    for key in KEYS:
        assert batch[key].shape == (8, 64)
        assert batch[key].dtype == (bool if key.endswith("mask") else np.int32)
    enc, dec_in, dec_out = batch["encoder_ids"], batch["decoder_inputs"], batch["decoder_targets"]
    np.testing.assert_array_equal(enc[:, :5], np.tile([13, 14, 15, 16, vocab.BOS], (8, 1)))
    np.testing.assert_array_equal(batch["encoder_mask"], enc != vocab.PAD)
    np.testing.assert_array_equal(batch["decoder_mask"], dec_out != vocab.PAD)
    for row in range(8):
        n_enc, n_dec = batch["encoder_mask"][row].sum(), batch["decoder_mask"][row].sum()
        phrase = enc[row, 5 : n_enc - 1]
        assert enc[row, n_enc - 1] == vocab.EOS and n_dec == len(phrase) + 1
        np.testing.assert_array_equal(dec_out[row, : n_dec - 1], phrase)
        assert dec_out[row, n_dec - 1] == vocab.EOS
        np.testing.assert_array_equal(dec_in[row, :n_dec], [vocab.BOS, *phrase])
        assert np.all(dec_in[row, n_dec:] == vocab.PAD)


def test_same_seed_same_batches_and_restore(data_dir):
    for kind in ("phrases", "bars"):
        first, second = _loader(data_dir, kind), _loader(data_dir, kind)
        assert _same(_take(first, 3), _take(second, 3))
        other = _take(_loader(data_dir, kind, seed=4), 3)
        assert not _same(_take(_loader(data_dir, kind), 3), other)
        # Checkpoint mid-stream (through JSON, as orbax stores it) and restore elsewhere.
        state = json.loads(json.dumps(first.get_state()))
        expected = _take(first, 2)
        restored = _loader(data_dir, kind)
        restored.set_state(state)
        assert _same(_take(restored, 2), expected)


def test_epochs_reshuffle_and_repeat(data_dir):
    n = len(sources.token_source(data_dir, "phrases", "train"))
    batches_per_epoch = n // 8
    batches = _take(_loader(data_dir, shuffle=True), 2 * batches_per_epoch + 1)  # crosses epochs
    epoch0 = np.concatenate([b["encoder_ids"] for b in batches[:batches_per_epoch]])
    epoch1 = np.concatenate([b["encoder_ids"] for b in batches[batches_per_epoch:-1]])
    assert not np.array_equal(epoch0, epoch1)
    order0 = sorted(map(bytes, epoch0))
    assert len(set(order0) & set(map(bytes, epoch1))) > 0.8 * len(set(order0))


def test_process_shards_are_disjoint(data_dir):
    def rows(index):
        it = _loader(
            data_dir, batch_size=1, shard_index=index, shard_count=2, shuffle=False, num_epochs=1
        )
        return [b["encoder_ids"][0].tobytes() for b in it]

    n = len(sources.token_source(data_dir, "phrases", "train"))
    shard0, shard1 = rows(0), rows(1)
    # Every process runs the same number of batches (a global remainder is dropped).
    assert len(shard0) == len(shard1) == n // 2
    assert shard0 != shard1


@pytest.mark.parametrize("kind", ["phrases", "bars"])
def test_global_batch_does_not_depend_on_process_count(data_dir, kind):
    """Two processes' local batches, stacked, are the one-process batch (span corruption too)."""
    one = _loader(data_dir, kind, batch_size=8, shard_index=0, shard_count=1)
    halves = [_loader(data_dir, kind, batch_size=4, shard_index=i, shard_count=2) for i in (0, 1)]
    for _ in range(3):
        expected = next(one)
        parts = [next(h) for h in halves]
        for key, value in expected.items():
            np.testing.assert_array_equal(value, np.concatenate([p[key] for p in parts]))


def test_span_infill_batch(data_dir):
    batch = next(_loader(data_dir, "bars", max_len=128))
    bars = sources.token_source(data_dir, "bars", "train")
    clean = {sources.decode_tokens(bars[i]).tobytes() for i in range(len(bars))}
    assert np.any(batch["encoder_ids"] == vocab.MASK)
    for row in range(8):
        n_enc, n_dec = batch["encoder_mask"][row].sum(), batch["decoder_mask"][row].sum()
        assert batch["encoder_ids"][row, 0] == vocab.BOS
        assert batch["encoder_ids"][row, n_enc - 1] == vocab.EOS
        target = batch["decoder_targets"][row, : n_dec - 1]
        assert target[-1] == vocab.BAR_END and target.tobytes() in clean
        assert batch["decoder_targets"][row, n_dec - 1] == vocab.EOS


def test_span_corruption_ratio_is_about_30_percent():
    rng = np.random.default_rng(0)
    removed = total = 0
    for _ in range(2000):
        n = int(rng.integers(20, 120))
        bar = rng.integers(24, 600, size=n)
        noisy = transforms.span_corrupt(bar, rng)
        kept = noisy[noisy != vocab.MASK]
        # What survives is the original in order, minus the removed spans.
        remaining = iter(bar.tolist())
        assert all(any(tok == orig for orig in remaining) for tok in kept.tolist())
        removed += n - len(kept)
        total += n
    assert 0.29 < removed / total < 0.36
    assert transforms.span_corrupt(np.array([], np.int32), rng).size == 0


def test_truncation_keeps_eos_and_is_counted(data_dir):
    batch = next(_loader(data_dir, max_len=12))
    assert np.all(batch["encoder_mask"].sum(1) <= 12)
    full = batch["encoder_mask"].all(1)
    assert np.all(batch["encoder_ids"][full, -1] == vocab.EOS)
    hist = sources.read_manifest(data_dir)["length_histograms"]["train"]["phrases"]
    expected = sum(n for length, n in hist.items() if int(length) > 12 - 6)
    assert sources.truncation_count(data_dir, "phrases", "train", 12) == expected > 0


def test_worker_processes_give_the_same_batches(data_dir):
    expected = _take(_loader(data_dir, "bars"), 3)
    it = _loader(data_dir, "bars", num_workers=1)
    try:
        assert _same(_take(it, 3), expected)
    finally:
        it.close()


def test_bad_arguments_fail_clearly(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare the data first"):
        _loader(str(tmp_path))
    with pytest.raises(ValueError, match="shard_index"):
        _loader(data_dir, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="fewer than the global batch"):
        _loader(data_dir, batch_size=10**6)
