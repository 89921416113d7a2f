"""Train state and the jitted pure train / eval steps, for any NNX model and loss.

The modules are a `TrainModules(model, optimizer, ema)` named tuple (ema None when not kept);
`nnx.split` of it gives a static graphdef and one `nnx.State` keyed "model", "optimizer" (step
and Adam moments) and "ema" (when kept): the pytree that the step takes, donates and returns.
A loss function has the signature

    loss_fn(model, batch, rng, train) -> (loss, metrics)   # scalar, dict of scalars

and is used unchanged for the VAE and the diffusion transformer:

    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    create = modules_factory(lambda: Model(config.model, rngs=nnx.Rngs(config.seed)), tx,
                             use_ema=config.ema_decay > 0)
    spec = make_state_spec(create, mesh, rules)
    state = sharding.init_state(create, spec.shardings)      # or checkpointing.restore_or_init
    train_step = make_train_step(spec, loss_fn, mesh, schedule=schedule, ...)
    state, metrics = train_step(state, batch, rng)           # rng folded with the step inside
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from phrase_jax.training import sharding

LossFn = Callable[[nnx.Module, dict[str, jax.Array], jax.Array, bool], tuple[jax.Array, dict]]
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainModules(NamedTuple):
    """What a train state holds, by name; `nnx.state(modules)` keys its arrays the same way."""

    model: nnx.Module
    optimizer: nnx.Optimizer
    ema: nnx.Module | None = None  # the EMA of the model's weights, when the run keeps one


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """Everything static about the train state.

    graphdef: the NNX graph of `TrainModules`.
    abstract: `nnx.State` of `jax.ShapeDtypeStruct` (with sharding) for checkpoint restore.
    shardings: `nnx.State` of `NamedSharding`, the in/out shardings of every step.
    mesh: the device mesh the shardings live on.
    """

    graphdef: nnx.GraphDef
    abstract: nnx.State
    shardings: nnx.State
    mesh: Mesh

    @property
    def has_ema(self) -> bool:
        return "ema" in self.abstract


def modules_factory(
    create_model: Callable[[], nnx.Module], tx: optax.GradientTransformation, *, use_ema: bool
) -> Callable[[], tuple]:
    """A function building `TrainModules` fresh; the EMA starts as a copy of the model."""

    def create() -> TrainModules:
        model = create_model()
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        return TrainModules(model, optimizer, nnx.clone(model) if use_ema else None)

    return create


def make_state_spec(create_modules: Callable[[], TrainModules], mesh: Mesh, rules) -> StateSpec:
    graphdef, abstract, shardings = sharding.abstract_state(create_modules, mesh, rules)
    return StateSpec(graphdef=graphdef, abstract=abstract, shardings=shardings, mesh=mesh)


def unpack(spec: StateSpec, state: nnx.State) -> TrainModules:
    """The live NNX modules (model, optimizer, ema or None) of a train state."""
    return nnx.merge(spec.graphdef, state)


def step_of(state: nnx.State) -> int:
    """The optimizer's update count, i.e. the number of train steps already taken."""
    return int(jax.device_get(state["optimizer"]["step"].get_value()))


def _cast_floats(tree, dtype):
    def cast(x):
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def _loss_and_grads(model, loss_fn, batch, rng, compute_dtype):
    """Loss and fp32 gradients w.r.t. the model's fp32 Params, computing in `compute_dtype`."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def compute(params):
        # Rebuilding the non-Param Variables here gives them this trace level, so the model may
        # advance its rng counters inside the differentiated function.
        fresh_rest = jax.tree.map(lambda x: x, rest)
        # Casting inside the differentiated function makes the gradient of the cast bring the
        # bf16 gradients back to the fp32 master params.
        live = nnx.merge(graphdef, _cast_floats(params, compute_dtype), fresh_rest)
        loss, metrics = loss_fn(live, batch, rng, True)
        return loss.astype(jnp.float32), (metrics, nnx.state(live, nnx.Not(nnx.Param)))

    (loss, (metrics, new_rest)), grads = jax.value_and_grad(compute, has_aux=True)(params)
    nnx.update(model, new_rest)  # dropout rng counters and other non-Param state advance
    return loss, metrics, grads


def make_train_step(
    spec: StateSpec,
    loss_fn: LossFn,
    *,
    schedule: optax.Schedule,
    ema_decay: float = 0.0,
    compute_dtype: str = "float32",
) -> Callable[[nnx.State, dict, jax.Array], tuple[nnx.State, dict]]:
    """One jitted pure step `(state, batch, rng) -> (state, metrics)`, state donated.

    batch: dict of global arrays, leading axis sharded over `data`.
    rng: a base key, replicated; the step folds in the optimizer step count.
    metrics: float32 scalars: loss, the loss_fn's metrics, grad_norm, learning_rate.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"config compute_dtype={compute_dtype!r}: one of {list(COMPUTE_DTYPES)}")
    if spec.has_ema and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"config ema_decay={ema_decay}: must be in (0, 1) when EMA is on")
    dtype = COMPUTE_DTYPES[compute_dtype]

    def step(state, batch, rng):
        model, optimizer, ema = unpack(spec, state)
        step_index = optimizer.step.get_value()
        step_rng = jax.random.fold_in(rng, step_index)
        loss, metrics, grads = _loss_and_grads(model, loss_fn, batch, step_rng, dtype)
        optimizer.update(model, grads)
        if ema is not None:
            new_params = nnx.state(model, nnx.Param)
            old = nnx.state(ema, nnx.Param)
            nnx.update(
                ema, jax.tree.map(lambda e, p: e + (1 - ema_decay) * (p - e), old, new_params)
            )
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        metrics["learning_rate"] = schedule(step_index)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return nnx.state(TrainModules(model, optimizer, ema)), metrics

    replicated = sharding.replicated(spec.mesh)
    return jax.jit(
        step,
        in_shardings=(spec.shardings, sharding.batch_sharding(spec.mesh), replicated),
        out_shardings=(spec.shardings, replicated),
        donate_argnums=0,
    )


def make_eval_step(
    spec: StateSpec, loss_fn: LossFn, *, use_ema: bool = False, compute_dtype: str = "float32"
) -> Callable[[nnx.State, dict, jax.Array], dict]:
    """Jitted `(state, batch, rng) -> metrics` with train=False; the EMA weights if asked."""
    if use_ema and not spec.has_ema:
        raise ValueError("eval with use_ema=True but the train state has no EMA (ema_decay=0)")
    dtype = COMPUTE_DTYPES[compute_dtype]

    def evaluate(state, batch, rng):
        model, _, ema = unpack(spec, state)
        model = ema if use_ema else model
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        live = nnx.merge(graphdef, _cast_floats(params, dtype), rest)
        loss, metrics = loss_fn(live, batch, rng, False)
        metrics = dict(metrics, loss=loss)
        return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    replicated = sharding.replicated(spec.mesh)
    return jax.jit(
        evaluate,
        in_shardings=(spec.shardings, sharding.batch_sharding(spec.mesh), replicated),
        out_shardings=replicated,
    )
