"""PhraseVAE model: size, KL, causality, padding invariance, parameter names, stage carry-over.

The overfitting test (exact greedy reconstruction) lives in test_decoding.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phrase_jax.models import vae
from phrase_jax.music.vocab import BOS, COMPRESS_QUERIES, EOS, PAD

TINY = dict(
    d_model=32,
    num_heads=2,
    head_dim=16,
    d_ff=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    relative_buckets=8,
    relative_max_distance=16,
    latent_dim=8,
    dropout_rate=0.0,
)
LOGICAL_AXES = {
    "vocab",
    "embed",
    "heads",
    "head_dim",
    "kv_heads",
    "mlp",
    "latent",
    "relpos",
    "norm",
    "joined",
    "cond",
}


def phrase_batch(n_rows, length, *, seed=0, min_len=3):
    """A VAE phrase batch (docs/design.md) of random phrases; decoder length `length`."""
    rng = np.random.default_rng(seed)
    encoder_ids = np.full((n_rows, length + 5), PAD, np.int32)
    decoder_inputs = np.full((n_rows, length), PAD, np.int32)
    decoder_targets = np.full((n_rows, length), PAD, np.int32)
    lengths = rng.integers(min_len, length + 1, n_rows)  # phrase + [EOS]
    for row, n in enumerate(lengths):
        phrase = rng.integers(23, 1000, n - 1)
        encoder_ids[row, : n + 5] = [*COMPRESS_QUERIES, BOS, *phrase, EOS]
        decoder_inputs[row, :n] = [BOS, *phrase]
        decoder_targets[row, :n] = [*phrase, EOS]
    return {
        "encoder_ids": encoder_ids,
        "encoder_mask": encoder_ids != PAD,
        "decoder_inputs": decoder_inputs,
        "decoder_targets": decoder_targets,
        "decoder_mask": np.arange(length)[None] < lengths[:, None],
    }


def pad_batch(batch, extra_length, extra_rows):
    """The same batch with `extra_length` more [PAD] columns and `extra_rows` empty rows."""
    out = {}
    for key, value in batch.items():
        fill = False if value.dtype == bool else PAD
        wider = np.pad(value, ((0, 0), (0, extra_length)), constant_values=fill)
        out[key] = np.pad(wider, ((0, extra_rows), (0, 0)), constant_values=fill)
    return out


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(graphdef, state, batch):
    # One compiled call per model structure and batch shape: much faster than eager op-by-op.
    model = nnx.merge(graphdef, state)
    loss, metrics = vae.compute_loss(model, batch, None, train=False)
    return loss, metrics, model(batch)[0]


def evaluate(model, batch):
    """(loss, metrics, logits) of `model` on `batch` in evaluation mode."""
    return _evaluate(*nnx.split(model), batch)


def test_paper_config_parameter_count():
    model = nnx.eval_shape(lambda: vae.PhraseVAE(vae.VAEConfig(), rngs=nnx.Rngs(0)))
    count = vae.count_params(model)
    print(f"PhraseVAE paper config: {count} parameters ({count / 1e6:.3f} M)")
    assert abs(count - 14.29e6) / 14.29e6 < 1e-3
    # The bottleneck (LayerNorm 4096 + Dense 262272 + Dense 133120) is the only mode difference.
    without = nnx.eval_shape(
        lambda: vae.PhraseVAE(vae.VAEConfig(mode="autoencoder"), rngs=nnx.Rngs(0))
    )
    assert count - vae.count_params(without) == 4096 + 262_272 + 133_120


def test_every_parameter_has_logical_axis_names():
    model = vae.PhraseVAE(vae.VAEConfig(**TINY), rngs=nnx.Rngs(0))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(flat) > 0
    for path, variable in flat:
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == variable.ndim, path
        assert set(names) <= LOGICAL_AXES, (path, names)
    query = model.encoder.layers[0].self_attention.query.get_metadata()["out_sharding"]
    assert query == ("embed", "heads", "head_dim")
    assert model.decoder.layers[0].feed_forward.wi.kernel.get_metadata()["out_sharding"] == (
        "embed",
        "mlp",
    )


def test_kl_formula_on_known_inputs():
    zeros = jnp.zeros((3, 64))
    assert float(vae.kl_divergence(zeros, zeros)) == 0.0
    # mean 1, logvar 0: 0.5 per dim, summed over 64 dims = 32, divided by 64 = 0.5.
    np.testing.assert_allclose(vae.kl_divergence(jnp.ones((3, 64)), zeros), 0.5, rtol=1e-6)
    # logvar = log 2, mean 0: 0.5 * (2 - 1 - log 2) per dim.
    logvar = jnp.full((2, 64), np.log(2.0))
    expected = 0.5 * (1.0 - np.log(2.0))
    np.testing.assert_allclose(vae.kl_divergence(zeros[:2], logvar), expected, rtol=1e-6)
    # Batch mean over real rows only: a padding row with a huge mean does not count.
    mean = jnp.concatenate([jnp.ones((1, 64)), 100.0 * jnp.ones((1, 64))])
    row_mask = jnp.array([True, False])
    np.testing.assert_allclose(vae.kl_divergence(mean, zeros[:2], row_mask), 0.5, rtol=1e-6)


@pytest.mark.parametrize("mode", ["span_infill", "vae"])
def test_decoder_is_causal(mode):
    model = vae.PhraseVAE(vae.VAEConfig(mode=mode, **TINY), rngs=nnx.Rngs(1))
    batch = phrase_batch(2, 12, min_len=12)
    logits = evaluate(model, batch)[2]
    changed = dict(batch, decoder_inputs=batch["decoder_inputs"].copy())
    changed["decoder_inputs"][:, 7] = 500
    changed_logits = evaluate(model, changed)[2]
    np.testing.assert_allclose(changed_logits[:, :7], logits[:, :7], atol=1e-6)
    assert np.max(np.abs(changed_logits[:, 7:] - logits[:, 7:])) > 1e-3


@pytest.mark.parametrize("mode", ["span_infill", "autoencoder", "vae"])
def test_padding_does_not_change_the_loss(mode):
    model = vae.PhraseVAE(vae.VAEConfig(mode=mode, **TINY), rngs=nnx.Rngs(2))
    batch = phrase_batch(4, 10, seed=3)
    loss, metrics = vae.compute_loss(model, batch, None, train=False)
    padded_loss, padded_metrics = vae.compute_loss(model, pad_batch(batch, 7, 3), None, train=False)
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)
    for key in ("ce", "kl", "accuracy", "n_tokens"):
        np.testing.assert_allclose(padded_metrics[key], metrics[key], rtol=1e-5, atol=1e-7)
    assert float(metrics["n_tokens"]) == batch["decoder_mask"].sum()
    assert (float(metrics["kl"]) > 0.0) == (mode == "vae")


def test_training_loss_is_jittable_and_uses_its_rng():
    model = vae.PhraseVAE(vae.VAEConfig(**{**TINY, "dropout_rate": 0.1}), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    batch = phrase_batch(4, 10)

    @jax.jit
    def loss_fn(state, rng):
        return vae.compute_loss(nnx.merge(graphdef, state), batch, rng, train=True)[0]

    first, again = loss_fn(state, jax.random.key(0)), loss_fn(state, jax.random.key(0))
    assert float(first) == float(again)
    assert float(first) != float(loss_fn(state, jax.random.key(1)))
    eval_loss = evaluate(model, batch)[0]
    assert float(eval_loss) != float(first)
    with pytest.raises(ValueError, match="needs an rng"):
        vae.compute_loss(model, batch, None, train=True)


def test_bfloat16_compute_keeps_float32_params():
    config = vae.VAEConfig(**TINY, dtype="bfloat16")
    model = vae.PhraseVAE(config, rngs=nnx.Rngs(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    reference = vae.PhraseVAE(vae.VAEConfig(**TINY), rngs=nnx.Rngs(0))
    batch = phrase_batch(4, 10)
    assert model.encode(batch["encoder_ids"], batch["encoder_mask"]).dtype == jnp.bfloat16
    loss, loss32 = evaluate(model, batch)[0], evaluate(reference, batch)[0]
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, loss32, rtol=2e-2)


def test_load_matching_params_carries_stages_and_names_new_parameters():
    stage2 = vae.PhraseVAE(vae.VAEConfig(mode="autoencoder", **TINY), rngs=nnx.Rngs(5))
    stage3 = vae.PhraseVAE(vae.VAEConfig(mode="vae", **TINY), rngs=nnx.Rngs(6))
    new = vae.load_matching_params(stage3, nnx.state(stage2, nnx.Param))
    assert set(new) == {
        "bottleneck/norm/scale",
        "bottleneck/norm/bias",
        "bottleneck/to_moments/kernel",
        "bottleneck/to_moments/bias",
        "bottleneck/from_latent/kernel",
        "bottleneck/from_latent/bias",
    }
    np.testing.assert_array_equal(stage3.shared[...], stage2.shared[...])
    np.testing.assert_array_equal(
        stage3.decoder.layers[1].cross_attention.key[...],
        stage2.decoder.layers[1].cross_attention.key[...],
    )
    # A pure nested dict works as the source too (what an orbax restore hands back).
    pure = nnx.to_pure_dict(nnx.state(stage3, nnx.Param))
    assert vae.load_matching_params(stage2, pure) == ()
    wider = vae.PhraseVAE(
        vae.VAEConfig(mode="autoencoder", **{**TINY, "d_ff": 96}), rngs=nnx.Rngs(0)
    )
    with pytest.raises(ValueError, match="feed_forward/wi/kernel"):
        vae.load_matching_params(wider, pure)


def test_config_rejects_unknown_keys_and_modes():
    with pytest.raises(ValueError, match="unknown model config keys"):
        vae.VAEConfig.from_mapping({"d_model": 32, "d_modle": 16})
    with pytest.raises(ValueError, match="'mode'"):
        vae.VAEConfig(mode="vqvae")
    assert vae.VAEConfig.from_mapping({"mode": "autoencoder"}).mode == "autoencoder"
