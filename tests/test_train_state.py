"""Train/eval steps on a tiny attention + MLP toy whose params carry logical axis names.

The toy (and its loss) is imported by test_sharding.py and test_checkpointing.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType

from phrase_jax.training import metrics, optim, sharding, train_state

VOCAB, EMBED, HEADS, HEAD_DIM, MLP, BATCH, LENGTH = 16, 8, 4, 4, 16, 8, 6
OPTIM = dict(
    name="adamw", learning_rate=1e-2, schedule="cosine", warmup_steps=2, weight_decay=1e-3,
    grad_clip_norm=1.0,
)  # fmt: skip


class ToyModel(nnx.Module):
    """Embedding -> one attention layer -> ReLU MLP -> tied logits. tokens [B, T] -> [B, T, V]."""

    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.3)
        part = nnx.with_partitioning
        self.embedding = nnx.Param(
            init(rngs.params(), (VOCAB, EMBED)), out_sharding=("vocab", "embed")
        )
        self.qkv = nnx.Param(
            init(rngs.params(), (3, EMBED, HEADS, HEAD_DIM)),
            out_sharding=(None, "embed", "heads", "head_dim"),
        )
        self.out = nnx.Param(
            init(rngs.params(), (HEADS, HEAD_DIM, EMBED)),
            out_sharding=("heads", "head_dim", "embed"),
        )
        self.norm = nnx.Param(jnp.ones((EMBED,)), out_sharding=("norm",))
        self.up = nnx.Linear(
            EMBED, MLP, rngs=rngs, kernel_init=part(init, ("embed", "mlp")),
            bias_init=part(nnx.initializers.zeros, ("mlp",)),
        )  # fmt: skip
        self.down = nnx.Linear(MLP, EMBED, rngs=rngs, kernel_init=part(init, ("mlp", "embed")))
        self.dropout = nnx.Dropout(0.2, rngs=rngs)  # keeps its own rng state: checkpointed too

    def __call__(self, tokens_bt, noise_rng=None, *, train: bool):
        x_btd = self.embedding[...][tokens_bt]
        if noise_rng is not None:  # uses the step rng, so fold_in(rng, step) matters
            x_btd = x_btd + 0.1 * jax.random.normal(noise_rng, x_btd.shape, x_btd.dtype)
        q_bthk, k_bthk, v_bthk = jnp.einsum("btd,sdhk->sbthk", x_btd, self.qkv[...])
        logits_bhts = jnp.einsum("bthk,bshk->bhts", q_bthk, k_bthk)
        attended = jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(logits_bhts, -1), v_bthk)
        x_btd = x_btd + jnp.einsum("bthk,hkd->btd", attended, self.out[...])
        x_btd = x_btd * self.norm[...]
        hidden = self.dropout(jax.nn.relu(self.up(x_btd)), deterministic=not train)
        x_btd = x_btd + self.down(hidden)
        return x_btd @ self.embedding[...].T


def make_toy(seed: int = 0) -> ToyModel:
    return ToyModel(nnx.Rngs(seed, dropout=seed + 1))


def toy_loss(model, batch, rng, train):
    logits = model(batch["tokens"], rng if train else None, train=train)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["targets"]
    ).mean()
    return loss, {"accuracy": (logits.argmax(-1) == batch["targets"]).mean()}


def toy_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    return {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1)}


def mesh_of(shape):
    devices = jax.devices()[: shape[0] * shape[1]]
    return jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices)


def build(mesh, preset="data_parallel", *, use_ema=True, total_steps=10):
    tx, schedule = optim.make_optimizer(OPTIM, total_steps)
    create = train_state.modules_factory(make_toy, tx, use_ema=use_ema)
    spec = train_state.make_state_spec(create, mesh, sharding.logical_rules({"preset": preset}))
    return spec, create, schedule


@functools.cache
def cached_setup(shape=(2, 4), preset="tensor_parallel", compute_dtype="float32"):
    """(spec, initializer, train_step) reused across tests: each new jit costs a compile."""
    spec, create, schedule = build(mesh_of(shape), preset)
    step = train_state.make_train_step(
        spec, toy_loss, schedule=schedule, ema_decay=0.5, compute_dtype=compute_dtype
    )
    return spec, sharding.make_initializer(create, spec.shardings), step


def test_train_step_learns_and_reports_metrics():
    spec, initialize, step = cached_setup()
    _, schedule = optim.make_optimizer(OPTIM, 10)
    state = initialize()
    batch = sharding.make_global_batch(toy_batch(0), spec.mesh)
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.1
    assert set(metrics) == {"loss", "accuracy", "grad_norm", "learning_rate"}
    assert float(metrics["grad_norm"]) > 0
    # warmup 2 then cosine over 8: step index 5 -> schedule(5).
    assert float(metrics["learning_rate"]) == pytest.approx(float(schedule(5)))
    assert train_state.step_of(state) == 6
    model, _, ema = train_state.unpack(spec, state)
    # The EMA trails the trained weights: different, but between init and now in norm terms.
    assert not np.allclose(ema.up.kernel[...], model.up.kernel[...])


def test_step_rng_is_folded_with_step():
    spec, initialize, step = cached_setup()
    batch = sharding.make_global_batch(toy_batch(0), spec.mesh)
    state = initialize()
    _, first = step(state, batch, jax.random.key(3))
    state = initialize()
    _, other_key = step(state, batch, jax.random.key(4))
    assert float(first["loss"]) != float(other_key["loss"])


def test_bfloat16_compute_keeps_fp32_master_weights():
    spec, initialize, step_fp32 = cached_setup()
    _, _, step_bf16 = cached_setup(compute_dtype="bfloat16")
    state = initialize()
    batch = sharding.make_global_batch(toy_batch(1), spec.mesh)
    reference = initialize()
    state, metrics16 = step_bf16(state, batch, jax.random.key(0))
    _, metrics32 = step_fp32(reference, batch, jax.random.key(0))
    model, optimizer, _ = train_state.unpack(spec, state)
    assert model.qkv[...].dtype == jnp.float32
    moments = [x for x in jax.tree.leaves(nnx.state(optimizer.opt_state)) if x.ndim]
    assert moments and all(x.dtype == jnp.float32 for x in moments)
    assert float(metrics16["loss"]) == pytest.approx(float(metrics32["loss"]), rel=2e-2)
    assert float(metrics16["loss"]) != float(metrics32["loss"])


def test_eval_step_uses_ema_when_asked():
    spec, initialize, step = cached_setup()
    state = initialize()
    batch = sharding.make_global_batch(toy_batch(2), spec.mesh)
    for _ in range(2):
        state, _ = step(state, batch, jax.random.key(0))
    live = train_state.make_eval_step(spec, toy_loss)(state, batch, jax.random.key(0))
    ema = train_state.make_eval_step(spec, toy_loss, use_ema=True)(state, batch, jax.random.key(0))
    assert float(live["loss"]) != float(ema["loss"])
    no_ema, _, _ = build(mesh_of((1, 1)), use_ema=False)
    with pytest.raises(ValueError, match="no EMA"):
        train_state.make_eval_step(no_ema, toy_loss, use_ema=True)


def test_nan_guard_names_step_and_last_checkpoint():
    metrics.check_finite(3, {"loss": 1.0, "grad_norm": 2.0}, last_checkpoint=None)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite grad_norm, loss at step 7 \(last good checkpoint: step 5\)",
    ):
        metrics.check_finite(7, {"loss": float("nan"), "grad_norm": np.inf, "lr": 1.0}, 5)
    with pytest.raises(FloatingPointError, match="no checkpoint saved yet"):
        metrics.check_finite(1, {"loss": jnp.array(jnp.inf)}, None)


def test_jsonl_writer_and_progress_line(tmp_path):
    writer = metrics.MetricWriter(tmp_path / "run", use_tensorboard=False)
    writer.write(10, {"loss": jnp.float32(2.5), "learning_rate": 1e-4})
    writer.write(10, {"loss": 2.0}, split="valid")
    writer.close()
    records = metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert records == [
        {"step": 10, "split": "train", "loss": 2.5, "learning_rate": 1e-4},
        {"step": 10, "split": "valid", "loss": 2.0},
    ]
    times = iter([0.0, 50.0])
    progress = metrics.Progress(1000, start_step=0, clock=lambda: next(times))
    line = progress.report(200, {"loss": 2.3104}, tokens=1_000_000)
    assert line == "step 200/1000 (20.0%) | loss 2.31 | 4.00 steps/s | 20.0k tok/s | ETA 3m20s"
