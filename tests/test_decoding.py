"""KV-cached greedy decoding: equals argmax over full forward passes; reconstructs after overfit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_vae import TINY, phrase_batch

from phrase_jax.models import decoding, vae
from phrase_jax.music.vocab import BOS, EOS, PAD

MAX_LEN = 24


@functools.partial(jax.jit, static_argnums=0)
def _full_forward_logits(graphdef, state, tokens_bt, memory_bsd, memory_mask_bs):
    model = nnx.merge(graphdef, state)
    return model.decode(tokens_bt, memory_bsd, memory_mask_bs)


def argmax_by_full_forward(model, memory_bsd, memory_mask_bs, max_len):
    """Reference decoder without a cache: one full teacher-forced pass per new token.

    The input buffer has a fixed length (one compilation); causality (test_vae) makes the logits
    at position t depend on tokens 0..t only.
    """
    graphdef, state = nnx.split(model)
    batch = memory_bsd.shape[0]
    inputs = np.full((batch, max_len), PAD, np.int32)
    inputs[:, 0] = BOS
    outputs = np.zeros((batch, max_len), np.int32)
    for position in range(max_len):
        logits = _full_forward_logits(graphdef, state, inputs, memory_bsd, memory_mask_bs)
        outputs[:, position] = np.argmax(np.asarray(logits[:, position]), axis=-1)
        if position + 1 < max_len:
            inputs[:, position + 1] = outputs[:, position]
    for row in outputs:  # stop at the first [EOS], pad after
        stops = np.flatnonzero(row == EOS)
        if stops.size:
            row[stops[0] + 1 :] = PAD
    return outputs


@pytest.fixture(scope="module")
def trained_vae():
    """A tiny VAE overfitted (plain optax loop) on 16 random phrases of 3..23 tokens + [EOS]."""
    config = vae.VAEConfig(
        mode="vae",
        d_model=64,
        num_heads=4,
        head_dim=16,
        d_ff=128,
        num_encoder_layers=2,
        num_decoder_layers=2,
        latent_dim=16,
        dropout_rate=0.0,
    )
    batch = phrase_batch(16, MAX_LEN, seed=0, min_len=4)
    graphdef, params = nnx.split(vae.PhraseVAE(config, rngs=nnx.Rngs(0)))
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, rng):
        def loss_fn(p):
            return vae.compute_loss(nnx.merge(graphdef, p), batch, rng, train=True)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    for step in range(200):
        params, opt_state, metrics = train_step(params, opt_state, jax.random.key(step))
    assert float(metrics["accuracy"]) > 0.999
    return nnx.merge(graphdef, params), batch


def test_tiny_vae_overfits_16_phrases_to_exact_greedy_reconstruction(trained_vae):
    model, batch = trained_vae
    decoded = decoding.decode_latents(model, decoding.encode_latents(model, batch), max_len=MAX_LEN)
    expected = np.where(batch["decoder_mask"], batch["decoder_targets"], PAD)
    assert decoded.dtype == np.int32 and decoded.shape == (16, MAX_LEN)
    np.testing.assert_array_equal(decoded, expected)


def test_cached_decoding_equals_full_forward_argmax_on_trained_model(trained_vae):
    model, batch = trained_vae
    latents = decoding.encode_latents(model, batch)
    # Move the latents off the training points so that rows also run past their phrase.
    latents = latents + 0.5 * jax.random.normal(jax.random.key(0), latents.shape)
    memory, memory_mask = model.latents_to_memory(latents)
    cached = np.asarray(decoding.greedy_decode(model, latents, max_len=MAX_LEN))
    np.testing.assert_array_equal(cached, argmax_by_full_forward(model, memory, memory_mask, 24))
    assert (cached == EOS).any()


def _random_span_infill_model():
    model = vae.PhraseVAE(
        vae.VAEConfig(mode="span_infill", vocab_size=12, **TINY), rngs=nnx.Rngs(0)
    )
    # Larger matrices make the untrained decoder's outputs depend on more than the last token.
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: 3.0 * x if x.ndim >= 2 else x, state))
    memory = 3.0 * jax.random.normal(jax.random.key(0), (7, 5, TINY["d_model"]))
    memory_mask = jnp.arange(5)[None] < jnp.array([5, 4, 3, 2, 1, 5, 5])[:, None]
    return model, memory, memory_mask


def test_cached_decoding_with_memory_mask_matches_reference_and_chunking():
    model, memory, memory_mask = _random_span_infill_model()
    cached = np.asarray(decoding.greedy_decode(model, memory, memory_mask=memory_mask, max_len=16))
    reference = argmax_by_full_forward(model, memory, memory_mask, 16)
    np.testing.assert_array_equal(cached, reference)
    assert len({tuple(row) for row in cached}) > 3  # rows really differ
    chunked = decoding.greedy_decode(
        model, memory, memory_mask=memory_mask, max_len=16, chunk_size=3
    )
    np.testing.assert_array_equal(np.asarray(chunked), cached)


def test_decoding_rejects_bad_inputs():
    model, memory, _ = _random_span_infill_model()
    with pytest.raises(ValueError, match="mode 'vae'"):
        decoding.greedy_decode(model, jnp.zeros((2, TINY["latent_dim"])))
    with pytest.raises(ValueError, match="mode 'vae'"):
        decoding.encode_latents(model, phrase_batch(2, 8))
    vae_model = vae.PhraseVAE(vae.VAEConfig(**TINY), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="latent_dim"):
        decoding.decode_latents(vae_model, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="got shape"):
        decoding.decode_latents(vae_model, np.zeros((2, 1, 5)))
