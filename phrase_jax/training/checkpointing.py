"""Orbax checkpoints of the whole run: train state, data iterator, config and vocabulary.

A run's identity is its workdir: checkpoints live in `<workdir>/checkpoints/<step>/` with items

    state/          model + optimizer (+ EMA) arrays, restored straight onto their shardings
    data_iterator/  Grain iterator state, one JSON per process (multi-host safe)
    config/ vocab/ extra/   JSON dicts (config, vocabulary table, anything small)

Orbax writes each step into a temporary folder and renames it when complete, so a killed run
never leaves a half-written step that looks finished. `restore_or_init` resumes from the latest
step when there is one and initialises otherwise, so every launch of a run continues it.

With several processes every process calls `save`/`restore` with the same step (orbax then
writes each array shard once, from the process that holds it, and process 0 commits the step
after all have finished); the workdir must be on a filesystem every process sees.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from phrase_jax import errors
from phrase_jax.training import sharding
from phrase_jax.training.train_state import StateSpec

JSON_ITEMS = ("config", "vocab", "extra")


class CheckpointError(errors.UserError, RuntimeError):
    """A checkpoint is missing or unreadable; the message names the path and the fix."""


@dataclasses.dataclass
class Restored:
    """What `restore` returns: the step, the train state and the JSON items found."""

    step: int
    state: nnx.State
    json: dict[str, dict]


def _flat_key(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", p)) for p in path)


def _to_tree(state: nnx.State) -> dict:
    """Nested dict with string keys and plain-array leaves (typed rng keys as raw key data)."""
    tree: dict = {}
    for path, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        node = tree
        for part in _flat_key(path)[:-1]:
            node = node.setdefault(part, {})
        node[_flat_key(path)[-1]] = value
    return tree


def _abstract_tree(abstract: nnx.State) -> dict:
    """`_to_tree` of an abstract state: ShapeDtypeStructs carrying the target shardings."""
    tree: dict = {}
    for path, variable in nnx.to_flat_state(abstract):
        value = variable.get_value()
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            data = jax.eval_shape(jax.random.key_data, value)
            value = jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=value.sharding)
        node = tree
        for part in _flat_key(path)[:-1]:
            node = node.setdefault(part, {})
        node[_flat_key(path)[-1]] = value
    return tree


def _from_tree(tree: Mapping, abstract: nnx.State) -> nnx.State:
    """Inverse of `_to_tree`, shaped like `abstract` (whose Variables carry the metadata)."""
    flat = []
    for path, variable in nnx.to_flat_state(abstract):
        node = tree
        for part in _flat_key(path):
            node = node[part]
        target = variable.get_value()
        if jax.dtypes.issubdtype(target.dtype, jax.dtypes.prng_key):
            # JAX has no public accessor from a key dtype to its implementation; the dtype
            # carries it, and the restored raw data must be wrapped with the same one.
            node = jax.random.wrap_key_data(node, impl=target.dtype._impl)
        flat.append((path, variable.replace(node)))
    return nnx.from_flat_state(flat)


def _check_iterator_process_count(iterator_dir: str) -> None:
    """Grain saves one `process_<i>-of-<n>.json` per process; resuming the data position with
    another process count would silently change which records each process reads."""
    counts = {
        int(name.rsplit("-of-", 1)[1].split(".")[0])
        for name in os.listdir(iterator_dir)
        if name.startswith("process_") and "-of-" in name
    }
    if counts and counts != {jax.process_count()}:
        raise CheckpointError(
            f"{iterator_dir}: the data position was saved by {sorted(counts)[0]} processes, "
            f"this run has {jax.process_count()}; resume with the same number of processes, or "
            "restore without the data iterator (a new data order)"
        )


class Checkpointer:
    """Saves and restores a run's checkpoints under `<workdir>/checkpoints` (absolute path)."""

    def __init__(
        self, workdir: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
    ):
        if max_to_keep < 1:
            raise ValueError(f"checkpoint max_to_keep={max_to_keep}: keep at least 1")
        self.directory = os.path.join(os.path.abspath(os.fspath(workdir)), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: nnx.State,
        *,
        data_iterator: Any = None,
        json_items: Mapping[str, Mapping] | None = None,
    ) -> bool:
        """Saves everything for `step`; returns False when that step is already saved.

        data_iterator: a Grain `DatasetIterator` / `DataLoaderIterator` (its position is saved).
        json_items: subset of {"config", "vocab", "extra"} -> JSON-serialisable dict.
        """
        if step in self.manager.all_steps():
            return False
        items: dict[str, Any] = {"state": ocp.args.StandardSave(_to_tree(state))}
        if data_iterator is not None:
            items["data_iterator"] = grain.checkpoint.CheckpointSave(data_iterator)
        for name, value in (json_items or {}).items():
            if name not in JSON_ITEMS:
                raise ValueError(f"checkpoint json item {name!r}: use one of {JSON_ITEMS}")
            items[name] = ocp.args.JsonSave(dict(value))
        return self.manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, step: int | None, spec: StateSpec, *, data_iterator: Any = None) -> Restored:
        """Restores `step` (latest when None) onto `spec`'s shardings; advances `data_iterator`
        to the saved position when given."""
        self.wait()
        if step is None:
            step = self.manager.latest_step()
        step_dir = os.path.join(self.directory, str(step))
        if step is None or not os.path.isdir(step_dir):
            raise CheckpointError(
                f"{step_dir if step is not None else self.directory}: no checkpoint there; "
                "check the workdir, or start without --restore to initialise"
            )
        present = set(os.listdir(step_dir))
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(_abstract_tree(spec.abstract))}
        if data_iterator is not None:
            if "data_iterator" not in present:
                raise CheckpointError(
                    f"{step_dir}: has no data_iterator item; it was saved without the iterator"
                )
            _check_iterator_process_count(os.path.join(step_dir, "data_iterator"))
            items["data_iterator"] = grain.checkpoint.CheckpointRestore(data_iterator)
        items.update({n: ocp.args.JsonRestore() for n in JSON_ITEMS if n in present})
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            state = _from_tree(restored["state"], spec.abstract)
        except Exception as error:  # noqa: BLE001 - any read failure becomes one clear line
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise CheckpointError(
                f"{step_dir}: cannot restore checkpoint ({type(error).__name__}: {reason}); "
                "use a fresh workdir, or move this step folder aside to resume from the previous "
                "checkpoint (the steps trained since then are lost)"
            ) from error
        return Restored(
            step=int(step),
            state=state,
            json={n: dict(restored[n]) for n in JSON_ITEMS if n in items},
        )

    def restore_module(self, step: int, abstract: nnx.State, *, item: str) -> nnx.State:
        """One module of a saved train state (`item`: "model" or "ema"), params and the
        module's other variables, onto `abstract`'s shardings (the `nnx.State` of the module
        alone, with ShapeDtypeStruct leaves). Only that subtree is read: the optimizer's step
        and moments never leave the disk."""
        self.wait()
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(step_dir):
            raise CheckpointError(f"{step_dir}: no checkpoint there; check the workdir and step")
        target = {item: _abstract_tree(abstract)}
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=args))
            return _from_tree(restored["state"][item], abstract)
        except (KeyError, ValueError) as error:
            raise CheckpointError(
                f"{step_dir}: holds no {item!r} weights of this model ({type(error).__name__}); "
                "it is another model's checkpoint: check the workdir"
            ) from error

    def read_json_items(self, step: int) -> dict[str, dict]:
        """The small JSON items (config, vocab, extra) saved with `step`, no arrays."""
        step_dir = os.path.join(self.directory, str(step))
        present = set(os.listdir(step_dir)) if os.path.isdir(step_dir) else set()
        items = {n: ocp.args.JsonRestore() for n in JSON_ITEMS if n in present}
        if not items:
            return {}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {n: dict(restored[n]) for n in items}

    def restore_or_init(
        self,
        spec: StateSpec,
        create_modules: Callable[[], Any],
        *,
        data_iterator: Any = None,
    ) -> Restored:
        """Latest checkpoint of this workdir if any, else a fresh sharded state at step 0."""
        if self.manager.latest_step() is not None:
            return self.restore(None, spec, data_iterator=data_iterator)
        state = sharding.init_state(create_modules, spec.shardings)
        return Restored(step=0, state=state, json={})

    def wait(self) -> None:
        """Blocks until any asynchronous save has been committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
