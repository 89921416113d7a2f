"""PhraseLDM model and conditions: sizes, axis names, conditioning, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phrase_jax.models import dit

# docs/design.md's logical axis names (None = replicated).
LOGICAL_AXES = set("vocab embed heads head_dim kv_heads mlp latent relpos norm joined cond".split())
LOGICAL_AXES.add(None)
TINY = dict(
    n_slots=12,
    latent_dim=8,
    width=32,
    num_layers=2,
    num_heads=4,
    head_dim=8,
    num_kv_heads=2,
    ff_dim=48,
    rope_dim=4,
    time_features=16,
    cond_dim=16,
    memory_dim=16,
    section_embed_dim=8,
    section_layers=2,
    section_heads=2,
    section_ff_dim=24,
    section_vocab_size=16,
    max_sections=6,
)


def tiny_model(conditions=(), seed=0, **overrides):
    config = dit.PhraseLDMConfig(**{**TINY, "conditions": conditions, **overrides})
    return dit.PhraseLDM(config, rngs=nnx.Rngs(seed))


def tiny_inputs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, TINY["n_slots"], TINY["latent_dim"])), jnp.float32)
    t = jnp.asarray(rng.integers(0, 1000, batch), jnp.int32)
    conditions = {
        "n_bars": jnp.asarray([3, 100][:batch] + [64] * (batch - 2), jnp.int32),
        "section_types": jnp.asarray(rng.integers(2, 9, (batch, 6)), jnp.int32),
        "section_lengths": jnp.asarray(rng.integers(1, 9, (batch, 6)), jnp.int32),
        "section_mask": jnp.asarray(np.arange(6)[None, :] < np.array([[2], [4]][:batch]), bool),
    }
    return x, t, conditions


@pytest.mark.parametrize(
    "conditions, reference_millions",
    [((), 29.51), (("length",), 29.53), (("sections",), 32.40)],
)
def test_paper_parameter_counts(conditions, reference_millions):
    counts = dit.count_parameters(dit.paper_config(conditions))
    print(f"PhraseLDM {conditions or 'unconditional'}: {counts['total'] / 1e6:.4f} M params")
    assert abs(counts["total"] / 1e6 - reference_millions) / reference_millions < 0.005


def test_every_parameter_has_logical_axis_names():
    model = tiny_model(("length", "bars", "sections"))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(params) > 50
    for path, variable in params:
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == variable.ndim, path
        assert set(names) <= LOGICAL_AXES, (path, names)
        assert any(name is not None for name in names), path
    # The Fourier frequencies are stored with the model but are not trainable parameters.
    assert ("time_proj", "W") not in dict(params)
    assert ("time_proj", "W") in dict(nnx.to_flat_state(nnx.state(model)))


def test_forward_shapes_and_training_mode():
    model = tiny_model(("length", "bars", "sections"))
    x, t, conditions = tiny_inputs()
    y = model(x, t, conditions)
    assert y.shape == x.shape and y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(y, model(x, t, conditions))  # no randomness without rng
    y_train = model(x, t, conditions, rng=jax.random.key(0))
    assert bool(jnp.all(jnp.isfinite(y_train))) and not np.allclose(y_train, y)


def test_call_is_denoise_with_scaled_time_and_zero_memory_when_unconditional():
    model = tiny_model(())
    x, t, _ = tiny_inputs()
    zero_global, zero_memory = jnp.zeros((2, 16)), jnp.zeros((2, 1, 16))
    expected = model.denoise(x, t * 1e-3, zero_global, zero_memory, jnp.ones((2, 1), bool))
    np.testing.assert_allclose(model(x, t), expected, atol=1e-6)
    # Raw steps (the ref-compatible time_scale = 1) are a different input...
    raw = model.denoise(x, t * 1.0, zero_global, zero_memory, jnp.ones((2, 1), bool))
    assert not np.allclose(raw, expected, atol=1e-3)
    # ...and a non-zero memory would change the output: the zero memory really is "no memory".
    memory = jax.random.normal(jax.random.key(0), (2, 1, 16))
    with_memory = model.denoise(x, t * 1e-3, zero_global, memory, jnp.ones((2, 1), bool))
    assert not np.allclose(with_memory, expected, atol=1e-4)


def test_padding_sections_do_not_change_the_output():
    model = tiny_model(("sections",))
    x, t, conditions = tiny_inputs()
    y = model(x, t, conditions)
    junk = dict(conditions)
    pad = ~conditions["section_mask"]
    junk["section_types"] = jnp.where(pad, 7, conditions["section_types"])
    junk["section_lengths"] = jnp.where(pad, 99, conditions["section_lengths"])
    np.testing.assert_allclose(model(x, t, junk), y, atol=1e-6)
    longer = {
        "section_types": jnp.pad(conditions["section_types"], ((0, 0), (0, 5)), constant_values=3),
        "section_lengths": jnp.pad(conditions["section_lengths"], ((0, 0), (0, 5))),
        "section_mask": jnp.pad(conditions["section_mask"], ((0, 0), (0, 5))),
    }
    np.testing.assert_allclose(model(x, t, longer), y, atol=1e-5)
    # ...while a real section does change it.
    changed = dict(conditions, section_types=conditions["section_types"].at[:, 0].add(1))
    assert not np.allclose(model(x, t, changed), y, atol=1e-4)


@pytest.mark.parametrize("name", ["length", "bars", "sections"])
def test_condition_drop_uses_learned_null(name):
    model = tiny_model((name,), condition_dropout=1.0)
    x, t, conditions = tiny_inputs()
    conditional = model(x, t, conditions)
    dropped = model(x, t, conditions, force_drop_b=jnp.array([True, False]))
    np.testing.assert_allclose(dropped[1], conditional[1], atol=1e-6)
    assert not np.allclose(dropped[0], conditional[0], atol=1e-4)
    # p = 1 in training drops everything: equals the forced null (sections: up to dropout).
    if name != "sections":
        trained = model(x, t, conditions, rng=jax.random.key(3))
        forced = model(x, t, conditions, force_drop_b=jnp.array([True, True]))
        np.testing.assert_allclose(trained, forced, atol=1e-6)


def test_length_condition_buckets_by_ten_bars():
    # The bucket rule itself is tested in test_sections.py; here the model must use it.
    model = tiny_model(("length",))
    x, t, conditions = tiny_inputs()
    same_bucket = dict(conditions, n_bars=conditions["n_bars"] + jnp.array([1, 2]))
    np.testing.assert_allclose(model(x, t, same_bucket), model(x, t, conditions), atol=1e-6)


def test_remat_changes_memory_not_values():
    x, t, conditions = tiny_inputs()

    def loss_and_grads(model):
        def loss(m):
            return jnp.mean(m(x, t, conditions) ** 2)

        # nnx.grad differentiates through nnx.remat's lifted checkpoint, as the train step does.
        return jax.jit(nnx.value_and_grad(loss))(model)

    plain_loss, plain = loss_and_grads(tiny_model(("length",)))
    remat_model = tiny_model(("length",), remat=True)
    remat_loss, remat = loss_and_grads(remat_model)
    graphdef, state = nnx.split(remat_model)
    traced = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(x, t, conditions))(state))
    assert "checkpoint" in traced or "remat" in traced  # the blocks really are rematerialised
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat, plain)
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(remat))) > 0


def test_bf16_compute_keeps_fp32_parameters():
    model = tiny_model(("length",), dtype="bfloat16")
    x, t, conditions = tiny_inputs()
    y = model(x, t, conditions)
    assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
    dtypes = {v.dtype for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}


def test_bad_config_and_missing_conditions_are_clear_errors():
    with pytest.raises(ValueError, match="unknown keys"):
        dit.PhraseLDMConfig.from_mapping({"widht": 3})
    with pytest.raises(ValueError, match="unknown"):
        tiny_model(("tempo",))
    model = tiny_model(("sections",))
    x, t, _ = tiny_inputs()
    with pytest.raises(KeyError, match="section_types"):
        model(x, t, {"n_bars": jnp.array([1, 2])})
