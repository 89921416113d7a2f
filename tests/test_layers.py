"""The models' one set of building blocks: attention options agree with their plain
equivalents, RoPE depends on relative positions only, dropout, and the import rules (no cycle
among models modules; models never import interop, training or stages; music has no JAX)."""

import ast
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phrase_jax.models import attention, layers

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "phrase_jax"


def _inputs(seed=0, batch=2, length=5, memory=7, width=16):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, length, width)), jnp.float32)
    m = jnp.asarray(rng.standard_normal((batch, memory, width)), jnp.float32)
    return x, m


def test_grouped_kv_equals_full_heads_with_shared_kernels():
    x, m = _inputs()
    grouped = attention.Attention(16, 4, 8, num_kv_heads=2, rngs=nnx.Rngs(0))
    full = attention.Attention(16, 4, 8, rngs=nnx.Rngs(1))
    full.query.set_value(grouped.query[...])
    full.out.set_value(grouped.out[...])
    # Query head h reads K/V head h // 2.
    full.key.set_value(jnp.repeat(grouped.key[...], 2, axis=1))
    full.value.set_value(jnp.repeat(grouped.value[...], 2, axis=1))
    np.testing.assert_allclose(grouped(x, m), full(x, m), atol=1e-5)
    assert grouped.key.get_metadata()["out_sharding"] == ("embed", "kv_heads", "head_dim")
    assert full.key.get_metadata()["out_sharding"] == ("embed", "heads", "head_dim")


def test_heads_first_cache_layout_gives_the_same_output():
    x, m = _inputs(1)
    layer = attention.Attention(16, 4, 8, num_kv_heads=2, use_bias=True, rngs=nnx.Rngs(0))
    q = layer.project_query(x)
    k, v = layer.project_key_value(m)
    bshk = layer.attend(q, k, v)
    bhsk = layer.attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), kv_layout="bhsk")
    np.testing.assert_allclose(bhsk, bshk, atol=1e-6)
    with pytest.raises(ValueError, match="kv_layout"):
        layer.attend(q, k, v, kv_layout="bsk")


def test_masked_keys_do_not_matter_and_bias_shifts_scores():
    x, m = _inputs(2)
    layer = attention.Attention(16, 2, 8, rngs=nnx.Rngs(0))
    mask_bs = jnp.arange(7)[None, :] < jnp.array([[3], [5]])
    mask = mask_bs[:, None, None, :]
    junk = jnp.where(mask_bs[..., None], m, 100.0)
    np.testing.assert_allclose(layer(x, junk, mask=mask), layer(x, m, mask=mask), atol=1e-6)
    assert not np.allclose(layer(x, junk), layer(x, m), atol=1e-3)
    # An additive bias that is -inf-like off the mask is the same as the mask.
    bias = jnp.where(mask, 0.0, -1e9)
    np.testing.assert_allclose(layer(x, m, bias=bias), layer(x, m, mask=mask), atol=1e-6)


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = layers.rotary_table(12, 8, 10000.0)
    rng = np.random.default_rng(0)
    q = jnp.asarray(np.broadcast_to(rng.standard_normal((1, 1, 1, 10)), (1, 12, 1, 10)))
    k = jnp.asarray(np.broadcast_to(rng.standard_normal((1, 1, 1, 10)), (1, 12, 1, 10)))
    q_rot, k_rot = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    scores = np.einsum("tk,sk->ts", q_rot[0, :, 0], k_rot[0, :, 0])
    np.testing.assert_allclose(scores[2, 5], scores[6, 9], rtol=1e-5)  # both: key 3 ahead
    assert abs(scores[2, 5] - scores[2, 6]) > 1e-3
    np.testing.assert_array_equal(q_rot[0, 0], q[0, 0])  # position 0 is not rotated
    np.testing.assert_array_equal(q_rot[..., 8:], q[..., 8:])  # dims past rope_dims pass through
    np.testing.assert_allclose(jnp.linalg.norm(q_rot, axis=-1), jnp.linalg.norm(q, axis=-1), 1e-5)


def test_rotary_self_attention_only():
    x, m = _inputs()
    layer = attention.Attention(16, 2, 8, rngs=nnx.Rngs(0))
    rotary = layers.rotary_table(5, 4)
    assert not np.allclose(layer(x, rotary=rotary), layer(x), atol=1e-4)
    with pytest.raises(ValueError, match="self-attention"):
        layer(x, m, rotary=rotary)


def test_dropout_identity_in_evaluation_and_inverted_in_training():
    x = jnp.ones((64, 64))
    assert layers.dropout(x, 0.5, None) is x
    assert layers.dropout(x, 0.0, nnx.Rngs(dropout=0)) is x
    y = layers.dropout(x, 0.25, nnx.Rngs(dropout=0))
    assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, float(np.float32(1.0 / 0.75))}
    assert 0.2 < float(jnp.mean(y == 0)) < 0.3
    attended = attention.Attention(16, 2, 8, dropout_rate=0.5, rngs=nnx.Rngs(0))
    x16, _ = _inputs()
    assert not np.allclose(attended(x16, rngs=nnx.Rngs(dropout=1)), attended(x16), atol=1e-4)


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_models_import_no_cycle_and_no_interop_training_or_stages():
    modules = {p.stem: _imports(p) for p in (PACKAGE / "models").glob("*.py")}
    for name, imported in modules.items():
        for forbidden in ("phrase_jax.interop", "phrase_jax.training", "phrase_jax.stages"):
            assert not any(i.startswith(forbidden) for i in imported), (name, forbidden)
    edges = {
        name: {m for m in modules if f"phrase_jax.models.{m}" in imported and m != "__init__"}
        for name, imported in modules.items()
    }

    def reachable(start):
        seen, todo = set(), list(edges[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(edges[module])
        return seen

    cycles = [name for name in edges if name in reachable(name)]
    assert not cycles, cycles


def test_music_code_has_no_jax():
    for path in (PACKAGE / "music").glob("*.py"):
        imported = _imports(path)
        assert not any(i.split(".")[0] in ("jax", "flax") for i in imported), path.name
