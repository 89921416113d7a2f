"""Device mesh, logical-axis rules and sharded creation of NNX state.

Parameters carry logical axis names (`nnx.with_partitioning(init, ("embed", "mlp"))`, names from
docs/design.md). One rules table, chosen in the config, maps each logical name to a mesh axis
(`data` or `model`) or to None (replicated). Everything that places arrays goes through here:

    mesh = make_mesh(config.mesh)
    rules = logical_rules(config.sharding)
    model = create_sharded(lambda: Model(config.model, rngs=nnx.Rngs(0)), mesh, rules)
    batch = make_global_batch(numpy_batch, mesh)

`create_sharded` is shape-first: `nnx.eval_shape` gives the abstract state, the rules give its
shardings, and a jitted initialiser with those `out_shardings` creates every array directly in
place, so no parameter ever lives whole on one device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from phrase_jax.training import distributed

MESH_AXES = ("data", "model")
LOGICAL_AXES = (
    "vocab", "embed", "heads", "head_dim", "kv_heads", "mlp", "latent", "relpos", "norm",
    "joined", "cond",
)  # fmt: skip

# A rule maps one logical name to a mesh axis, a tuple of mesh axes, or None (replicated).
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_TENSOR_PARALLEL = (("heads", "model"), ("kv_heads", "model"), ("mlp", "model"), ("vocab", "model"))
# FSDP shards the model width and the wide bottleneck over `data`; a parameter whose dims both
# map to `data` keeps only the first (see `logical_to_spec`).
_FSDP = (("embed", "data"), ("joined", "data"), ("cond", "data"))

RULE_PRESETS: dict[str, Rules] = {
    "data_parallel": (),
    "fsdp": _FSDP,
    "tensor_parallel": _TENSOR_PARALLEL,
    "fsdp_tensor_parallel": _FSDP + _TENSOR_PARALLEL,
}

T = TypeVar("T")


def make_mesh(mesh_config: Mapping[str, Any] | Any) -> Mesh:
    """Builds the (data, model) mesh; `mesh_config.shape` like (-1, 1): -1 takes the rest.

    Args:
      mesh_config: has `shape`, a 2-tuple of ints, at most one -1.
    Returns:
      a `Mesh` over all devices with Auto axes named `data`, `model`.
    """
    shape = tuple(int(s) for s in _get(mesh_config, "shape"))
    n_devices = jax.device_count()
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"config mesh.shape={shape}: give one size per axis {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"config mesh.shape={shape}: sizes must be positive, at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n_devices % known:
            raise ValueError(
                f"config mesh.shape={shape}: {n_devices} devices do not divide by {known}"
            )
        shape = tuple(n_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != n_devices:
        raise ValueError(
            f"config mesh.shape={shape} needs {math.prod(shape)} devices but {n_devices} exist; "
            "use -1 for the data axis"
        )
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_rules(sharding_config: Mapping[str, Any] | Any) -> Rules:
    """The rules table: `sharding_config.preset` from `RULE_PRESETS`, then `.rules` overrides.

    Each override is a (logical_name, mesh_axis_or_None) pair; it replaces the preset's entry.
    """
    preset = _get(sharding_config, "preset")
    if preset not in RULE_PRESETS:
        raise ValueError(
            f"config sharding.preset={preset!r} is unknown; choose one of {sorted(RULE_PRESETS)}"
        )
    table = dict(RULE_PRESETS[preset])
    for pair in _get(sharding_config, "rules", ()) or ():
        if len(pair) != 2:
            raise ValueError(
                f"config sharding.rules entry {pair!r}: give (logical_name, mesh_axis)"
            )
        name, axis = pair
        table[name] = tuple(axis) if isinstance(axis, list) else axis
    for name, axis in table.items():
        if name not in LOGICAL_AXES:
            raise ValueError(f"sharding rule for {name!r}: not a logical axis of {LOGICAL_AXES}")
        for mesh_axis in axis if isinstance(axis, tuple) else (axis,):
            if mesh_axis is not None and mesh_axis not in MESH_AXES:
                raise ValueError(f"sharding rule {name!r}->{axis!r}: mesh axes are {MESH_AXES}")
    return tuple(table.items())


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], rules: Rules, mesh: Mesh
) -> P:
    """PartitionSpec for one array from its logical axis names.

    A dimension stays replicated when no rule names it, when its mesh axis is already used by an
    earlier dimension of the same array, or when its size does not divide by the mesh axis size
    (e.g. 6 heads on a 4-way `model` axis): the run still works, just with less sharding.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape, strict=True):
        if name is not None and name not in LOGICAL_AXES:
            raise ValueError(f"parameter axis name {name!r} is not one of {LOGICAL_AXES}")
        axis = table.get(name) if name is not None else None
        axes = () if axis is None else (axis if isinstance(axis, tuple) else (axis,))
        ways = math.prod(mesh.shape[a] for a in axes)
        if not axes or used.intersection(axes) or size % ways:
            if axes and size % ways:
                logging.log_first_n(
                    logging.INFO, "logical axis %r (size %d) left replicated on %s", 8, name, size,
                    axes,
                )  # fmt: skip
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axis)
    return P(*spec)


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedSharding for every leaf of an (abstract) NNX state, same tree structure.

    A Variable with `out_sharding` metadata (logical names) is sharded by the rules; everything
    else (optimizer counters, rng keys, EMA-free scalars) is replicated.
    """

    def one(variable):
        value = variable.get_value()
        names = variable.get_metadata().get("out_sharding")
        shape = getattr(value, "shape", ())
        if names and len(names) != len(shape):
            raise ValueError(f"axis names {names} do not match parameter shape {shape}")
        spec = logical_to_spec(names, shape, rules, mesh) if names else P()
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_state(create_fn: Callable[[], T], mesh: Mesh, rules: Rules):
    """Shapes and shardings of `create_fn()` without allocating anything.

    Returns:
      (graphdef, abstract_state with ShapeDtypeStruct leaves carrying their sharding, shardings).
    """
    # Eager sharding would place each Variable at creation using the logical names as mesh axes;
    # we place the whole state once instead, through the rules table.
    with nnx.use_eager_sharding(False):
        graphdef, abstract = nnx.split(nnx.eval_shape(create_fn))
    shardings = state_shardings(abstract, mesh, rules)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return graphdef, abstract, shardings


def make_initializer(create_fn: Callable[[], Any], shardings: nnx.State) -> Callable[[], nnx.State]:
    """A jitted `() -> state of create_fn()` whose outputs land directly on `shardings`.

    Keep the returned function to initialise again without recompiling.
    """

    def init():
        with nnx.use_eager_sharding(False):
            return nnx.state(create_fn())

    return jax.jit(init, out_shardings=shardings)


def init_state(create_fn: Callable[[], Any], shardings: nnx.State) -> nnx.State:
    """The state of `create_fn()`, computed by one jit whose outputs land on `shardings`."""
    return make_initializer(create_fn, shardings)()


def create_sharded(create_fn: Callable[[], T], mesh: Mesh, rules: Rules) -> T:
    """Runs `create_fn` (returning an NNX graph node, e.g. a model or (model, optimizer)) so
    that every array is created directly with its rules-table sharding."""
    graphdef, _, shardings = abstract_state(create_fn, mesh, rules)
    return nnx.merge(graphdef, init_state(create_fn, shardings))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest replicated."""
    return NamedSharding(mesh, P("data"))


def data_rows_per_process(mesh: Mesh) -> dict[int, list[int]]:
    """Process index -> the `data` rows of `mesh` whose devices it owns.

    Raises ValueError unless every data row lies inside one process and each process owns the
    same number of rows: then each process's pipeline shard is a distinct, equal slice of the
    global batch (a `model` axis spanning processes would need identical data on them instead).
    """
    rows = np.moveaxis(mesh.devices, mesh.axis_names.index("data"), 0).reshape(
        mesh.shape["data"], -1
    )
    owners: dict[int, list[int]] = {}
    for row, devices in enumerate(rows):
        processes = {d.process_index for d in devices}
        if len(processes) != 1:
            raise ValueError(
                f"mesh {dict(mesh.shape)}: data row {row} spans processes {sorted(processes)}; "
                "with several processes keep each `model` group inside one host (mesh.shape "
                "(-1, k) with k <= devices per host)"
            )
        owners.setdefault(processes.pop(), []).append(row)
    if len({len(r) for r in owners.values()}) != 1 or len(owners) != jax.process_count():
        raise ValueError(
            f"mesh {dict(mesh.shape)}: the data axis is split unevenly over "
            f"{jax.process_count()} processes ({ {p: len(r) for p, r in owners.items()} }); "
            "use the same number of devices on every host"
        )
    return owners


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-process numpy batch {key: [B_local, ...]} -> global jax.Arrays [B_global, ...].

    Each process passes its own shard (from its own Grain pipeline); on one host the local batch
    is the global batch. B_global = B_local * process_count must divide by the `data` axis size.
    The global array stacks the processes' batches in the order their devices appear along
    `data` (process 0 first for meshes from `make_mesh`).
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() > 1:
        _check_data_rows(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        if global_shape[0] % mesh.shape["data"]:
            raise ValueError(
                f"batch key {key!r}: global batch {global_shape[0]} does not divide by the "
                f"{mesh.shape['data']}-way data axis; change batch_size or mesh.shape"
            )
        # An explicit global shape: JAX then rejects a local batch of the wrong size instead of
        # inferring a smaller global array from it.
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    distributed.note_progress()  # a global batch per step: the stall watchdog's heartbeat
    return out


@functools.lru_cache(maxsize=8)
def _check_data_rows(mesh: Mesh) -> None:
    data_rows_per_process(mesh)


def _get(config: Mapping[str, Any] | Any, key: str, default: Any = KeyError) -> Any:
    try:
        return config[key]
    except KeyError:
        if default is KeyError:
            raise ValueError(f"config is missing key {key!r}") from None
        return default
