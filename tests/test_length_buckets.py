"""Length-bucketed VAE batches: each phrase once per epoch, the one-token phrase rate, shapes,
padding, process slices and resume (data_pipelines/length_buckets.py)."""

import json

import numpy as np
import pytest

from data_pipelines import length_buckets, sources, vae_pipeline
from experiments import vae_common
from phrase_jax.music import vocab

BUCKETS = (16, 24, 32, 48, 64)


def _bucketing(special_rate=1.0, lengths=BUCKETS, tokens=512, multiple=8):
    return length_buckets.Bucketing(lengths, tokens, multiple, special_rate)


def _loader(data_dir, kind="phrases", bucketing=None, **kw):
    bucketing = bucketing or _bucketing()
    args = dict(batch_size=8, seed=3, max_len=bucketing.lengths[-1], shard_index=0, shard_count=1)
    return vae_pipeline.make_vae_loader(data_dir, "train", kind, bucketing=bucketing, **(args | kw))


def _records(data_dir, kind="phrases") -> list[np.ndarray]:
    source = sources.token_source(data_dir, kind, "train")
    return [sources.decode_tokens(source[i]) for i in range(len(source))]


def _plan(data_dir, bucketing, kind="phrases", num_epochs=None):
    source = sources.token_source(data_dir, kind, "train")
    return vae_pipeline.bucket_plan(
        source, kind, bucketing, bucketing.lengths[-1], 3, 1, num_epochs
    )


def _real_phrases(batch) -> list[bytes]:
    """The phrases of a batch's real rows, read back from the decoder targets."""
    out = []
    for targets, mask in zip(batch["decoder_targets"], batch["decoder_mask"], strict=True):
        if mask.any():
            out.append(targets[: mask.sum() - 1].astype(np.int32).tobytes())
    return out


def test_each_phrase_once_per_epoch_in_the_allowed_shapes(chorales_data):
    records = _records(chorales_data)
    plan = _plan(chorales_data, _bucketing())
    allowed = dict(zip(BUCKETS, length_buckets.bucket_batch_sizes(BUCKETS, 512, 8), strict=True))
    assert set(plan.shapes()) <= {(allowed[n], n) for n in BUCKETS}
    it = _loader(chorales_data)
    for _ in range(2):  # two epochs, each holding every phrase exactly once
        seen = []
        for _ in range(plan.batches_per_epoch):
            batch = next(it)
            rows, length = batch["encoder_ids"].shape
            assert allowed[length] == rows and rows % 8 == 0
            for key, value in batch.items():  # the decoder has no room for the 5 prefix tokens
                assert value.shape == (rows, length - 5 * key.startswith("decoder")), key
            seen += _real_phrases(batch)
        expected = sorted(r[: BUCKETS[-1] - 6].tobytes() for r in records)
        assert sorted(seen) == expected


def test_special_phrase_rate_and_rotation(chorales_data):
    records = _records(chorales_data)
    special = [i for i, r in enumerate(records) if len(r) == 1]
    regular = len(records) - len(special)
    assert special, "the chorales corpus has one-token phrases"
    rate = 0.1
    plan = _plan(chorales_data, _bucketing(rate))
    per_epoch = min(len(special), round(rate / (1 - rate) * regular))
    assert 0 < per_epoch < len(special)
    seen_specials = []
    for epoch in range(2):
        batches = plan.epoch_batches(epoch)
        real = np.concatenate([b["indices"][b["real"]] for b in batches])
        assert len(real) == len(set(real.tolist())) == regular + per_epoch
        epoch_specials = sorted(set(real.tolist()) & set(special))
        assert len(epoch_specials) == per_epoch
        seen_specials.append(epoch_specials)
    assert seen_specials[0] != seen_specials[1]  # a rotating subset, not the same each epoch
    assert _plan(chorales_data, _bucketing(0.0)).layout.specials_per_epoch == 0


def test_padding_is_under_a_quarter(prepared):
    """The shipped bucket lengths on the prepared sample (3 train songs: small batches, as the
    last batch of each bucket is filled up), measured from the batches themselves."""
    source = sources.token_source(prepared.dir, "phrases", "train")
    lengths = length_buckets.record_lengths(source)
    bucketing = _bucketing(0.05, vae_common.PHRASE_BUCKETS, tokens=64, multiple=1)
    plan = _plan(prepared.dir, bucketing)
    fixed = length_buckets.padding_fraction(None, lengths, "phrases", 128)
    bucketed = length_buckets.padding_fraction(plan, lengths, "phrases", 128)
    assert bucketed < 0.25 < fixed
    real = computed = 0
    it = _loader(prepared.dir, bucketing=bucketing)
    for _ in range(plan.batches_per_epoch):
        batch = next(it)
        trained = batch["decoder_mask"].any(1)  # fill rows hold an encoder but train nothing
        real += batch["encoder_mask"][trained].sum() + batch["decoder_mask"].sum()
        computed += batch["encoder_mask"].size + batch["decoder_mask"].size
    assert 1 - real / computed == pytest.approx(bucketed, abs=1e-9)


@pytest.mark.parametrize("kind", ["phrases", "bars"])
def test_global_batch_does_not_depend_on_process_count(chorales_data, kind):
    one = _loader(chorales_data, kind)
    halves = [_loader(chorales_data, kind, shard_index=i, shard_count=2) for i in (0, 1)]
    for _ in range(4):
        expected = next(one)
        parts = [next(h) for h in halves]
        for key, value in expected.items():
            np.testing.assert_array_equal(value, np.concatenate([p[key] for p in parts]))


def test_span_infill_bars_fit_their_bucket(chorales_data):
    bucketing = _bucketing(lengths=(32, 48, 64, 96, 128), tokens=1024)
    it = _loader(chorales_data, "bars", bucketing=bucketing)
    for _ in range(6):
        batch = next(it)
        rows, length = batch["encoder_ids"].shape
        assert length in bucketing.lengths and rows % 8 == 0
        n_enc = batch["encoder_mask"].sum(1)
        assert np.all(batch["encoder_ids"][np.arange(rows), n_enc - 1] == vocab.EOS)
        assert np.any(batch["encoder_ids"] == vocab.MASK)


def test_resume_mid_stream_and_across_epochs(chorales_data):
    first = _loader(chorales_data)
    plan = _plan(chorales_data, _bucketing())
    for _ in range(plan.batches_per_epoch - 1):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # as orbax stores it
    expected = [next(first) for _ in range(3)]  # the last batch of epoch 0, two of epoch 1
    restored = _loader(chorales_data)
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_bad_buckets_fail_clearly(chorales_data):
    with pytest.raises(ValueError, match="last length bucket must be max_len=64"):
        _loader(chorales_data, bucketing=_bucketing(lengths=(16, 32)), max_len=64)
    with pytest.raises(ValueError, match="strictly increasing"):
        _plan(chorales_data, _bucketing(lengths=(32, 16, 64)))
    with pytest.raises(ValueError, match="one-token phrase"):
        _plan(chorales_data, _bucketing(lengths=(4, 64)))
