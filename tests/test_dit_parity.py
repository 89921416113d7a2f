"""PhraseLDM vs diffusers StableAudioDiTModel and DDPMScheduler: same weights, same numbers."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
from diffusers.models.embeddings import get_1d_rotary_pos_embed  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import torch_reference  # noqa: E402
from phrase_jax.diffusion import schedules  # noqa: E402
from phrase_jax.interop import ldm_from_diffusers  # noqa: E402
from phrase_jax.models import dit  # noqa: E402

pytestmark = pytest.mark.parity

TINY = dict(
    sample_size=12,
    in_channels=8,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=4,
    num_key_value_attention_heads=2,
    out_channels=8,
    cross_attention_dim=24,
    time_proj_dim=16,
    global_states_input_dim=12,
    cross_attention_input_dim=24,
)
PAPER = torch_reference.DIT_PAPER  # the benchmark's reference DiT is the same model


def _random_reference(config: dict, seed: int):
    torch.manual_seed(seed)
    reference = diffusers.StableAudioDiTModel(**config).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            # Non-trivial norms and Fourier weights, so a mixed-up scale or bias shows.
            if "norm" in name:
                param.copy_(torch.randn_like(param) * 0.2 + (1.0 if "weight" in name else 0.0))
    return reference


def _compare(config: dict, batch: int, memory_len: int, with_mask: bool, seed: int = 0):
    reference = _random_reference(config, seed)
    ours_config = ldm_from_diffusers.config_from_diffusers(reference.config)
    model = ldm_from_diffusers.from_diffusers(reference.state_dict(), ours_config)

    rng = np.random.default_rng(seed)
    n, d = config["sample_size"], config["in_channels"]
    x = rng.standard_normal((batch, n, d)).astype(np.float32)
    steps = rng.integers(0, 1000, batch)  # ref-compatible raw integer steps
    global_in = rng.standard_normal((batch, config["global_states_input_dim"])).astype(np.float32)
    memory = rng.standard_normal((batch, memory_len, config["cross_attention_input_dim"])).astype(
        np.float32
    )
    mask = np.ones((batch, memory_len), bool)
    if with_mask:
        mask[:, memory_len // 2 :] = False
    rotary = get_1d_rotary_pos_embed(
        config["attention_head_dim"] // 2, n + 1, use_real=True, repeat_interleave_real=False
    )
    with torch.no_grad():
        expected = reference(
            torch.from_numpy(x).transpose(1, 2),
            torch.from_numpy(steps),
            encoder_hidden_states=torch.from_numpy(memory),
            global_hidden_states=torch.from_numpy(global_in)[:, None, :],
            rotary_embedding=rotary,
            encoder_attention_mask=torch.from_numpy(mask) if with_mask else None,
            return_dict=False,
        )[0]
    expected = expected.transpose(1, 2).numpy()
    got = model.denoise(
        jnp.asarray(x), jnp.asarray(steps, jnp.float32), global_in, memory, jnp.asarray(mask)
    )
    return float(np.max(np.abs(np.asarray(got) - expected))), float(np.abs(expected).mean())


@pytest.mark.parametrize("with_mask", [False, True])
def test_tiny_dit_matches_diffusers(with_mask):
    err, scale = _compare(TINY, batch=3, memory_len=6, with_mask=with_mask)
    print(f"tiny parity max|diff| = {err:.2e} (mean |y| = {scale:.2f})")
    assert scale > 0.1
    assert err < 1e-4


def test_paper_size_dit_matches_diffusers():
    err, scale = _compare(PAPER, batch=1, memory_len=1, with_mask=False, seed=3)
    print(f"paper-size parity max|diff| = {err:.2e} (mean |y| = {scale:.2f})")
    assert err < 1e-4


def test_converter_rejects_mismatched_state_dict():
    reference = _random_reference(TINY, 0)
    model = dit.PhraseLDM(
        ldm_from_diffusers.config_from_diffusers(reference.config, num_layers=1), rngs=nnx.Rngs(0)
    )
    with pytest.raises(ValueError, match="unexpected"):
        ldm_from_diffusers.load_diffusers_state_dict(model, reference.state_dict())


def test_converted_model_runs_with_a_fresh_condition_encoder():
    reference = _random_reference(TINY, 0)
    config = ldm_from_diffusers.config_from_diffusers(reference.config, conditions=("length",))
    model = ldm_from_diffusers.from_diffusers(reference.state_dict(), config)
    x = jnp.zeros((2, TINY["sample_size"], TINY["in_channels"]))
    y = model(x, jnp.array([3, 900]), {"n_bars": jnp.array([8, 64])})
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(
        model.proj_in.kernel[...], reference.proj_in.weight.detach().numpy().T
    )


def test_cosine_schedule_matches_diffusers_squaredcos():
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    schedule = schedules.cosine_schedule(1000)
    np.testing.assert_allclose(schedule.betas, reference.betas.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        schedule.alpha_bars, reference.alphas_cumprod.numpy(), rtol=1e-4, atol=1e-7
    )
