"""Restore one model's weights from a train checkpoint, without building an optimizer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from flax import nnx
from jax.sharding import Mesh

from phrase_jax.training import checkpointing, sharding


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """A model with a checkpoint's weights, its step, and the checkpoint's JSON items."""

    model: nnx.Module
    step: int
    json: dict[str, dict]


def restore_model(
    create_model: Callable[[], nnx.Module],
    root: str,
    step: int | None,
    mesh: Mesh,
    rules,
    *,
    ema: bool,
) -> RestoredModel:
    """The model `create_model()` builds, with the weights of checkpoint `step` (None: the
    latest) under `root/checkpoints/` (its EMA copy when `ema`), placed on `mesh` with `rules`.
    Only that module's subtree of the saved train state is read."""
    graphdef, abstract, _ = sharding.abstract_state(create_model, mesh, rules)
    checkpointer = checkpointing.Checkpointer(root, async_save=False)
    try:
        if step is None:
            step = checkpointer.latest_step()
            if step is None:
                raise checkpointing.CheckpointError(
                    f"{checkpointer.directory}: no checkpoints there; train this run first"
                )
        state = checkpointer.restore_module(step, abstract, item="ema" if ema else "model")
        json_items = checkpointer.read_json_items(step)
    finally:
        checkpointer.close()
    model = nnx.merge(graphdef, state)
    jax.block_until_ready(nnx.state(model))
    return RestoredModel(model=model, step=int(step), json=json_items)
