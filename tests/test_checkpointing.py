"""Orbax round trip (state, EMA, optimizer, rng keys, Grain iterator, JSON) and kill-and-resume."""

import functools
import os
import shutil

import grain
import jax
import numpy as np
import pytest
from test_train_state import build, mesh_of, toy_batch, toy_loss

from phrase_jax.training import checkpointing, sharding, train_state


def batches():
    """A Grain iterator of toy batches: its position must survive a restart."""
    return iter(grain.MapDataset.range(100).map(toy_batch).to_iter_dataset())


def assert_same_state(a, b):
    for x, y in zip(
        jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True
    ):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(x, y)


def test_round_trip_onto_other_shardings(tmp_path):
    spec, create, schedule = build(mesh_of((4, 2)), "fsdp_tensor_parallel")
    step = train_state.make_train_step(spec, toy_loss, schedule=schedule, ema_decay=0.5)
    state = sharding.init_state(create, spec.shardings)
    data = batches()
    for _ in range(2):
        state, _ = step(state, sharding.make_global_batch(next(data), spec.mesh), jax.random.key(0))
    saved = jax.device_get(state)
    checkpointer = checkpointing.Checkpointer(tmp_path)
    config = {"stage": "train_vae", "optim": {"learning_rate": 0.01}}
    checkpointer.save(
        2, state, data_iterator=data,
        json_items={"config": config, "vocab": {"tokens": ["[EOS]"]}, "extra": {"best": 0.5}},
    )  # fmt: skip
    assert not checkpointer.save(2, state)  # a step is written once
    checkpointer.close()

    # Restore onto a different mesh and rules: arrays land on the new shardings.
    other, _, _ = build(mesh_of((2, 4)), "tensor_parallel")
    fresh_data = batches()
    restored = checkpointing.Checkpointer(tmp_path).restore(None, other, data_iterator=fresh_data)
    assert restored.step == 2 and train_state.step_of(restored.state) == 2
    assert_same_state(restored.state, saved)
    for array, want in zip(
        jax.tree.leaves(restored.state), jax.tree.leaves(other.shardings), strict=True
    ):
        assert array.sharding == want
    assert restored.json == {
        "config": config,
        "vocab": {"tokens": ["[EOS]"]},
        "extra": {"best": 0.5},
    }
    np.testing.assert_array_equal(next(fresh_data)["tokens"], toy_batch(2)["tokens"])


def test_keeps_the_most_recent_checkpoints(tmp_path):
    spec, create, _ = build(mesh_of((1, 1)), use_ema=False)
    state = sharding.init_state(create, spec.shardings)
    checkpointer = checkpointing.Checkpointer(tmp_path, max_to_keep=2, async_save=False)
    for step in (1, 2, 3):
        checkpointer.save(step, state)
    checkpointer.wait()
    assert checkpointer.all_steps() == [2, 3]
    assert os.path.isabs(checkpointer.directory)


@functools.cache
def _compiled_setup():
    # The jitted step is pure, so runs share it (saves compiles); checkpointer, iterator and
    # state are rebuilt from the workdir on every run.
    spec, create, schedule = build(mesh_of((4, 2)), "fsdp", total_steps=6)
    return (
        spec,
        create,
        train_state.make_train_step(spec, toy_loss, schedule=schedule, ema_decay=0.5),
    )


def _run(workdir, until_step):
    """Builds everything from `workdir` (resuming if possible) and trains to `until_step`."""
    spec, create, step_fn = _compiled_setup()
    data = batches()
    checkpointer = checkpointing.Checkpointer(workdir)
    restored = checkpointer.restore_or_init(spec, create, data_iterator=data)
    state, step = restored.state, restored.step
    while step < until_step:
        batch = sharding.make_global_batch(next(data), spec.mesh)
        state, _ = step_fn(state, batch, jax.random.key(7))
        step += 1
    checkpointer.save(step, state, data_iterator=data)
    checkpointer.close()
    return jax.device_get(state)


def test_kill_and_resume_gives_the_same_parameters(tmp_path):
    straight = _run(tmp_path / "straight", 4)
    _run(tmp_path / "resumed", 2)  # "killed" after step 2: everything rebuilt from the workdir
    resumed = _run(tmp_path / "resumed", 4)
    assert_same_state(resumed, straight)


def test_missing_and_corrupt_checkpoints_give_one_line_errors(tmp_path):
    spec, create, _ = build(mesh_of((1, 1)), use_ema=False)
    checkpointer = checkpointing.Checkpointer(tmp_path, async_save=False)
    with pytest.raises(checkpointing.CheckpointError, match="no checkpoint there") as missing:
        checkpointer.restore(5, spec)
    assert str(tmp_path / "checkpoints" / "5") in str(missing.value)
    checkpointer.save(1, sharding.init_state(create, spec.shardings))
    with pytest.raises(checkpointing.CheckpointError, match="has no data_iterator item"):
        checkpointer.restore(1, spec, data_iterator=batches())
    state_dir = tmp_path / "checkpoints" / "1" / "state"
    for entry in state_dir.iterdir():  # damage the array store, keep the folder
        if entry.is_dir():
            shutil.rmtree(entry)
    with pytest.raises(checkpointing.CheckpointError, match="cannot restore checkpoint") as corrupt:
        checkpointer.restore(1, spec)
    message = str(corrupt.value)
    assert "\n" not in message and str(tmp_path / "checkpoints" / "1") in message
