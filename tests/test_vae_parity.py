"""PyTorch parity: a random reference PhraseVAE (transformers T5 + bottleneck) converted to NNX.

Encoder states, decoder logits and losses must agree within 1e-4 in float32 on CPU, in the
span-infill mode (full encoder memory) and the vae mode (bottleneck memory).
"""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import torch_reference  # noqa: E402
from phrase_jax.interop import vae_from_torch  # noqa: E402
from phrase_jax.models import vae  # noqa: E402

pytestmark = pytest.mark.parity
TOLERANCE = 1e-4


class ReferencePhraseVAE(torch.nn.Module):
    """The reference layout: `t5`, `layer_norm`, `proj`, `post_proj` (see vae_from_torch.py)."""

    def __init__(self):
        super().__init__()
        config = transformers.T5Config(
            vocab_size=1000,
            d_model=512,
            d_kv=64,
            d_ff=1024,
            num_layers=3,
            num_decoder_layers=3,
            num_heads=6,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            dropout_rate=0.1,
            layer_norm_epsilon=1e-6,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
            is_encoder_decoder=True,
            decoder_start_token_id=1,
            pad_token_id=5,
            eos_token_id=0,
        )
        self.t5 = transformers.T5ForConditionalGeneration(config)
        self.layer_norm = torch.nn.LayerNorm(2048)
        self.proj = torch.nn.Linear(2048, 128)
        self.post_proj = torch.nn.Linear(64, 2048)

    def vae_memory(self, encoder_states):
        joined = encoder_states[:, :4].reshape(encoder_states.shape[0], -1)
        moments = self.proj(self.layer_norm(joined))
        mean, logvar = moments[:, :64], moments[:, 64:]
        return self.post_proj(mean).reshape(-1, 4, 512), mean, logvar


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = ReferencePhraseVAE().eval()
    torch_reference.perturb_(model, seed=0)  # every tensor, so no wrong mapping can hide
    return model


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    lengths_e, lengths_d = [128, 77, 9], [96, 40, 3]
    encoder_ids = np.full((3, 128), 5, np.int32)
    decoder_inputs = np.full((3, 96), 5, np.int32)
    decoder_targets = np.full((3, 96), 5, np.int32)
    for row, (le, ld) in enumerate(zip(lengths_e, lengths_d, strict=True)):
        encoder_ids[row, :4] = [13, 14, 15, 16]
        encoder_ids[row, 4:le] = rng.integers(23, 1000, le - 4)
        phrase = rng.integers(23, 1000, ld - 1)
        decoder_inputs[row, :ld] = np.concatenate([[1], phrase])
        decoder_targets[row, :ld] = np.concatenate([phrase, [0]])
    return {
        "encoder_ids": encoder_ids,
        "encoder_mask": encoder_ids != 5,
        "decoder_inputs": decoder_inputs,
        "decoder_targets": decoder_targets,
        "decoder_mask": np.arange(96)[None] < np.array(lengths_d)[:, None],
    }


def _converted(reference, mode):
    model = vae.PhraseVAE(vae.VAEConfig(mode=mode, dropout_rate=0.0), rngs=nnx.Rngs(0))
    state = reference.state_dict()
    if mode != "vae":
        state = {k: v for k, v in state.items() if k.startswith("t5.")}
    assert vae_from_torch.load_torch_state_dict(model, state) == ()
    return model


@functools.partial(jax.jit, static_argnums=0)
def _our_outputs(graphdef, state, batch):
    """Encoder states, logits, (mean, logvar) or None, loss metrics; one compiled call."""
    model = nnx.merge(graphdef, state)
    states = model.encode(batch["encoder_ids"], batch["encoder_mask"])
    logits, moments = model(batch)
    return states, logits, moments, vae.compute_loss(model, batch, None, train=False)


def _torch_decode(reference, batch, memory, memory_mask):
    labels = torch.tensor(np.where(batch["decoder_mask"], batch["decoder_targets"], -100))
    out = reference.t5(
        encoder_outputs=(memory,),
        attention_mask=memory_mask,
        decoder_input_ids=torch.tensor(batch["decoder_inputs"], dtype=torch.long),
        labels=labels.long(),
    )
    return out.logits.numpy(), float(out.loss)


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    from phrase_jax.models.relative_position import relative_position_buckets

    for bidirectional in (True, False):
        ours = relative_position_buckets(
            300, 300, bidirectional=bidirectional, num_buckets=32, max_distance=128
        )
        relative = torch.arange(300)[None, :] - torch.arange(300)[:, None]
        theirs = T5Attention._relative_position_bucket(relative, bidirectional, 32, 128)
        np.testing.assert_array_equal(ours, theirs.numpy())


@torch.no_grad()
def test_span_infill_encoder_states_logits_and_loss(reference, batch):
    model = _converted(reference, "span_infill")
    mask_t = torch.tensor(batch["encoder_mask"]).long()
    states_t = reference.t5.encoder(
        input_ids=torch.tensor(batch["encoder_ids"]).long(), attention_mask=mask_t
    ).last_hidden_state
    states, logits, _, (loss, metrics) = _our_outputs(*nnx.split(model), batch)
    error_states = np.max(np.abs(np.asarray(states) - states_t.numpy()))
    logits_t, loss_t = _torch_decode(reference, batch, states_t, mask_t)
    valid = batch["decoder_mask"]
    error_logits = np.max(np.abs(np.asarray(logits)[valid] - logits_t[valid]))
    print(
        f"span_infill parity: states {error_states:.2e} logits {error_logits:.2e} "
        f"loss {abs(float(loss) - loss_t):.2e}"
    )
    assert error_states < TOLERANCE
    assert error_logits < TOLERANCE
    assert abs(float(metrics["ce"]) - loss_t) < TOLERANCE
    assert float(metrics["kl"]) == 0.0


@torch.no_grad()
def test_vae_latents_logits_and_loss(reference, batch):
    model = _converted(reference, "vae")
    states_t = reference.t5.encoder(
        input_ids=torch.tensor(batch["encoder_ids"]).long(),
        attention_mask=torch.tensor(batch["encoder_mask"]).long(),
    ).last_hidden_state
    memory_t, mean_t, logvar_t = reference.vae_memory(states_t)
    logits_t, ce_t = _torch_decode(reference, batch, memory_t, torch.ones(3, 4, dtype=torch.long))
    kl_t = float((-0.5 * torch.sum(1 + logvar_t - mean_t**2 - logvar_t.exp(), -1)).mean() / 64)

    _, logits, (mean, logvar), (loss, metrics) = _our_outputs(*nnx.split(model), batch)
    error_mean = np.max(np.abs(np.asarray(mean) - mean_t.numpy()))
    error_logvar = np.max(np.abs(np.asarray(logvar) - logvar_t.numpy()))
    valid = batch["decoder_mask"]
    error_logits = np.max(np.abs(np.asarray(logits)[valid] - logits_t[valid]))
    error_loss = abs(float(loss) - (ce_t + 0.01 * kl_t))
    print(
        f"vae parity: mean {error_mean:.2e} logvar {error_logvar:.2e} logits "
        f"{error_logits:.2e} loss {error_loss:.2e}"
    )
    assert max(error_mean, error_logvar, error_logits) < TOLERANCE
    assert abs(float(metrics["ce"]) - ce_t) < TOLERANCE
    assert abs(float(metrics["kl"]) - kl_t) < TOLERANCE * max(1.0, kl_t)
    assert error_loss < TOLERANCE


def test_converter_rejects_bad_state_dicts(reference):
    state = reference.state_dict()
    config = vae.VAEConfig(mode="vae")
    with pytest.raises(ValueError, match="unexpected state dict keys"):
        vae_from_torch.convert_state_dict({**state, "t5.extra.weight": torch.zeros(1)}, config)
    missing = {k: v for k, v in state.items() if "block.2.layer.1.EncDecAttention.q" not in k}
    with pytest.raises(ValueError, match="EncDecAttention.q.weight"):
        vae_from_torch.convert_state_dict(missing, config)
    with pytest.raises(ValueError, match="mode is 'autoencoder'"):
        vae_from_torch.convert_state_dict(state, vae.VAEConfig(mode="autoencoder"))
    stage2 = {k: v for k, v in state.items() if k.startswith("t5.")}
    model = vae.PhraseVAE(config, rngs=nnx.Rngs(1))
    new = vae_from_torch.load_torch_state_dict(model, stage2)
    assert set(new) == {
        f"bottleneck/{p}"
        for p in (
            "norm/scale",
            "norm/bias",
            "to_moments/kernel",
            "to_moments/bias",
            "from_latent/kernel",
            "from_latent/bias",
        )
    }
