"""Mesh, rules table, sharded creation and mesh-independence of loss and gradients."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from test_train_state import build, make_toy, mesh_of, toy_batch, toy_loss

from phrase_jax.training import sharding, train_state


def test_make_mesh_fills_data_axis_and_rejects_bad_shapes():
    mesh = sharding.make_mesh({"shape": (-1, 2)})
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match=r"mesh.shape=\(3, 1\) needs 3 devices"):
        sharding.make_mesh({"shape": (3, 1)})
    with pytest.raises(ValueError, match="do not divide by 3"):
        sharding.make_mesh({"shape": (-1, 3)})


def test_rules_presets_overrides_and_errors():
    assert sharding.logical_rules({"preset": "data_parallel"}) == ()
    rules = dict(sharding.logical_rules({"preset": "fsdp", "rules": (("mlp", "model"),)}))
    assert rules == {"embed": "data", "joined": "data", "cond": "data", "mlp": "model"}
    with pytest.raises(ValueError, match="preset='zero3' is unknown"):
        sharding.logical_rules({"preset": "zero3"})
    with pytest.raises(ValueError, match="'width'"):
        sharding.logical_rules({"preset": "fsdp", "rules": (("width", "data"),)})
    with pytest.raises(ValueError, match="mesh axes are"):
        sharding.logical_rules({"preset": "fsdp", "rules": (("mlp", "tensor"),)})


def test_logical_to_spec_skips_reused_and_indivisible_axes():
    mesh = mesh_of((2, 4))
    rules = sharding.RULE_PRESETS["fsdp_tensor_parallel"]
    assert sharding.logical_to_spec(("embed", "mlp"), (8, 16), rules, mesh) == P("data", "model")
    # Both dims map to `data`: only the first is sharded.
    assert sharding.logical_to_spec(("embed", "joined"), (8, 16), rules, mesh) == P("data", None)
    # 6 heads do not split 4 ways (the VAE's case): replicated, not an error.
    assert sharding.logical_to_spec(("embed", "heads"), (8, 6), rules, mesh) == P("data", None)
    with pytest.raises(ValueError, match="'width' is not one of"):
        sharding.logical_to_spec(("width",), (8,), rules, mesh)


@pytest.mark.parametrize(
    "shape, preset, expected",
    [
        ((8, 1), "fsdp", {"embedding": P(None, "data"), "qkv": P(None, "data", None, None),
                          "up/kernel": P("data", None), "opt_mu_up": P("data", None)}),
        ((2, 4), "tensor_parallel", {"embedding": P("model", None),
                                     "qkv": P(None, None, "model", None),
                                     "up/kernel": P(None, "model"),
                                     "opt_mu_up": P(None, "model")}),
    ],
)  # fmt: skip
def test_params_and_optimizer_state_are_created_sharded(shape, preset, expected):
    spec, create, _ = build(mesh_of(shape), preset)
    model, optimizer, ema = nnx.merge(spec.graphdef, sharding.init_state(create, spec.shardings))
    got = {
        "embedding": model.embedding[...].sharding.spec,
        "qkv": model.qkv[...].sharding.spec,
        "up/kernel": model.up.kernel[...].sharding.spec,
        "opt_mu_up": optimizer.opt_state[1][0].mu["up"]["kernel"][...].sharding.spec,
    }
    assert got == expected
    assert ema.up.kernel[...].sharding.spec == expected["up/kernel"]
    assert model.norm[...].sharding.is_fully_replicated
    # Every leaf lives where the spec says, on all devices of the mesh.
    for array, want in zip(
        jax.tree.leaves(nnx.state(train_state.TrainModules(model, optimizer, ema))),
        jax.tree.leaves(spec.shardings),
        strict=True,
    ):
        assert array.sharding == want
        assert len(array.sharding.device_set) == shape[0] * shape[1]


def test_create_sharded_never_materialises_unsharded():
    mesh = mesh_of((8, 1))
    rules = sharding.logical_rules({"preset": "fsdp"})
    model = sharding.create_sharded(make_toy, mesh, rules)
    shard_shapes = {s.data.shape for s in model.up.kernel[...].addressable_shards}
    assert shard_shapes == {(1, 16)}  # the 8x16 kernel as eight 1x16 shards


def test_global_batch_is_split_over_data_axis():
    mesh = mesh_of((4, 2))
    batch = sharding.make_global_batch(toy_batch(0), mesh)
    tokens = batch["tokens"]
    assert tokens.shape == (8, 6) and tokens.sharding.spec == P("data")
    assert {s.data.shape for s in tokens.addressable_shards} == {(2, 6)}
    np.testing.assert_array_equal(np.asarray(tokens), toy_batch(0)["tokens"])
    with pytest.raises(ValueError, match="does not divide by the 4-way data axis"):
        sharding.make_global_batch({"tokens": np.zeros((6, 2))}, mesh)


def _loss_and_grads(shape, preset):
    spec, create, _ = build(mesh_of(shape), preset, use_ema=False)
    state = sharding.init_state(create, spec.shardings)
    batch = sharding.make_global_batch(toy_batch(5), spec.mesh)

    @jax.jit
    def loss_and_grads(state, batch):
        model, _, _ = train_state.unpack(spec, state)
        loss_fn = lambda m: toy_loss(m, batch, jax.random.key(1), True)[0]  # noqa: E731
        return nnx.value_and_grad(loss_fn)(model)

    loss, grads = loss_and_grads(state, batch)
    return float(loss), jax.device_get(nnx.to_pure_dict(grads))


def test_loss_and_gradients_match_across_meshes():
    reference_loss, reference_grads = _loss_and_grads((1, 1), "data_parallel")
    for shape, preset in [
        ((8, 1), "fsdp"),
        ((4, 2), "fsdp_tensor_parallel"),
        ((2, 4), "tensor_parallel"),
    ]:
        loss, grads = _loss_and_grads(shape, preset)
        assert loss == pytest.approx(reference_loss, rel=1e-5), (shape, preset)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            grads, reference_grads,
        )  # fmt: skip
