"""The trainers' loop helpers alone (phrase_jax/training/loop.py): a fake step, no model.

`train` below is the loop every trainer writes out (train_vae.py, train_ldm.py), here around a
step that counts, so the cadence, the logs, the NaN guard and Ctrl-C can be checked exactly.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from phrase_jax import errors
from phrase_jax.training import loop, metrics, sharding


class FakeCheckpointer:
    """Records the steps saved; `latest` plays a checkpoint left by an earlier run."""

    def __init__(self, latest=None):
        self.latest, self.saved = latest, []

    def latest_step(self):
        return self.latest

    def save(self, step, state, *, data_iterator, json_items):
        position = None if data_iterator is None else data_iterator.get_state()["position"]
        self.saved.append((step, state, position, json_items))
        self.latest = step

    def wait(self):
        """Saves above are synchronous: nothing to wait for."""


class CountingIterator:
    """Endless batches of 8 rows; its state is how many it handed out."""

    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        return {"x": np.zeros((8, 2), np.float32)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def fake_step(bad_step=None, interrupt_at=None):
    """state: the step count; loss = the step (NaN at `bad_step`), 8 tokens per step; Ctrl-C
    arrives when step `interrupt_at` is asked for."""

    def step_fn(state, batch, rng):
        if state + 1 == interrupt_at:
            raise KeyboardInterrupt
        state += 1
        loss = math.nan if state == bad_step else float(state)
        return state, {"loss": np.float32(loss), "n_tokens": np.float32(batch["x"].shape[0]),
                       "learning_rate": np.float32(0.5)}  # fmt: skip

    return step_fn


def train(tmp_path, *, start=0, total=10, checkpointer=None, bad_step=None, interrupt_at=None,
          log_every=3, checkpoint_every=4, eval_every=5, summed=(), rates=None,
          time_limit=None):  # fmt: skip
    checkpointer = checkpointer or FakeCheckpointer()
    evals, results = [], None
    train_step = fake_step(bad_step, interrupt_at)
    batches = loop.Batches(CountingIterator(), sharding.make_mesh({"shape": (-1, 1)}))
    writer = metrics.MetricWriter(tmp_path)
    cadence = loop.Cadence(total, log_every, checkpoint_every, eval_every)
    train_log = loop.TrainLog(writer, total, start, progress_keys=("loss",), summed=summed,
                              rates=rates)  # fmt: skip
    state, step, last_checkpoint = start, start, checkpointer.latest_step()
    time_limit = time_limit or loop.TimeLimit(0.0)
    try:
        while step < cadence.total_steps:
            state, step_metrics = train_step(state, batches.next(step), None)
            step += 1
            cadence = time_limit.cadence_after(step, cadence)
            train_log.add(step, step_metrics)
            if cadence.log(step) or cadence.checkpoint(step):
                means = train_log.means(last_checkpoint)
            if cadence.log(step):
                train_log.write(step, means)
            if cadence.checkpoint(step):
                checkpointer.save(step, state, data_iterator=batches.iterator, json_items={})
                last_checkpoint = step
            if cadence.eval(step):
                evals.append((step, state, last_checkpoint))
                results = {"loss": float(step)}
            if cadence.log(step) or cadence.eval(step):
                train_log.restart_clock(step)
    except KeyboardInterrupt:
        loop.save_and_raise_interrupted(checkpointer, step, state, train_log, batches)
    return results, checkpointer, evals


def train_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    return [r for r in metrics.read_jsonl(path) if r["split"] == "train"] if path.exists() else []


def test_cadence_and_the_last_step_always_logs_checkpoints_and_evaluates(tmp_path):
    results, checkpointer, evals = train(tmp_path, summed=("n_tokens",), rates=loop.token_rates)
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [3, 6, 9, 10]
    assert [s for s, *_ in checkpointer.saved] == [4, 8, 10]
    assert [s for s, _, _ in evals] == [5, 10] and results == {"loss": 10.0}
    # Each checkpoint holds the state of its step; eval sees the last checkpoint before it.
    assert [state for _, state, *_ in checkpointer.saved] == [4, 8, 10]
    assert evals == [(5, 5, 4), (10, 10, 10)]
    # Each log means the steps since the previous one, across a checkpoint (4) in between:
    # 1-3, 4-6, 7-9, 10; counters become rates, never raw totals.
    assert [r["loss"] for r in rows] == [2.0, 5.0, 8.0, 10.0]
    assert set(rows[0]) == {"step", "split", "loss", "learning_rate", "steps_per_s",
                            "tokens_per_s"}  # fmt: skip
    assert all(r["steps_per_s"] > 0 and r["tokens_per_s"] > 0 for r in rows)


def test_a_time_limit_makes_the_step_in_progress_the_last(tmp_path):
    ticks = iter(range(100))  # the clock advances one second per reading
    limit = loop.TimeLimit(6.0, clock=lambda: float(next(ticks)))  # started at 0
    # Readings 1..6 follow steps 1..6: the time is up after step 6, which becomes the last.
    results, checkpointer, evals = train(tmp_path, time_limit=limit)
    assert [r["step"] for r in train_rows(tmp_path)] == [3, 6]
    assert [s for s, *_ in checkpointer.saved] == [4, 6]
    assert [s for s, _, _ in evals] == [5, 6] and results == {"loss": 6.0}
    # No limit (0) never stops a run; a negative one is refused.
    assert loop.TimeLimit(0.0, clock=lambda: 1e9).up() is False
    with pytest.raises(ValueError, match="time_limit_s=-1"):
        loop.TimeLimit(-1)


def test_resumes_from_the_given_step(tmp_path):
    _, checkpointer, evals = train(tmp_path, start=6, checkpointer=FakeCheckpointer(latest=6))
    assert [r["step"] for r in train_rows(tmp_path)] == [9, 10]
    assert [s for s, *_ in checkpointer.saved] == [8, 10] and evals == [(10, 10, 10)]


def test_a_non_finite_metric_raises_before_the_checkpoint(tmp_path):
    checkpointer = FakeCheckpointer()
    with pytest.raises(FloatingPointError, match="loss at step 7 .last good checkpoint: step 4"):
        train(tmp_path, checkpointer=checkpointer, bad_step=7, log_every=100)
    # Step 8 would have checkpointed: only the earlier, finite state was saved.
    assert [s for s, *_ in checkpointer.saved] == [4]


def test_summed_counters_need_a_rates_function(tmp_path):
    with pytest.raises(ValueError, match="need a `rates` function"):
        train(tmp_path, summed=("n_tokens",))


def test_ctrl_c_saves_the_last_finished_step_and_raises_interrupted(tmp_path):
    checkpointer = FakeCheckpointer()
    with pytest.raises(errors.Interrupted, match="interrupted at step 6; run the same command"):
        train(tmp_path, checkpointer=checkpointer, interrupt_at=7)
    # Step 6's state, with the data position after batch 6: batch 7 was drawn for a step that
    # never ran, so the resumed run trains on it.
    assert [(s, state, position) for s, state, position, _ in checkpointer.saved] == [
        (4, 4, 4), (6, 6, 6)]  # fmt: skip
    # Ctrl-C right after a checkpoint saves nothing new.
    checkpointer = FakeCheckpointer()
    with pytest.raises(errors.Interrupted) as stopped:
        train(tmp_path, checkpointer=checkpointer, interrupt_at=5)
    assert stopped.value.step == 4 and [s for s, *_ in checkpointer.saved] == [4]


def test_ctrl_c_never_saves_a_non_finite_or_donated_state(tmp_path):
    checkpointer = FakeCheckpointer()
    with pytest.raises(errors.Interrupted) as stopped:
        train(tmp_path, checkpointer=checkpointer, bad_step=6, interrupt_at=7, log_every=100)
    assert stopped.value.step == 4 and [s for s, *_ in checkpointer.saved] == [4]
    donated = jnp.zeros(3)
    donated.delete()  # what jit's donation leaves when Ctrl-C arrives inside the step
    log = loop.TrainLog(metrics.MetricWriter(tmp_path), 10, 0, progress_keys=())
    checkpointer = FakeCheckpointer(latest=2)
    with pytest.raises(errors.Interrupted) as stopped:
        loop.save_and_raise_interrupted(checkpointer, 3, {"w": donated}, log)
    assert stopped.value.step == 2 and checkpointer.saved == []


def test_metrics_rows_past_the_resume_step_are_dropped(tmp_path):
    writer = metrics.MetricWriter(tmp_path)
    for step in (1, 2, 3, 4):
        writer.write(step, {"loss": float(step)})
    writer.write(4, {"loss": 0.5}, split="valid")
    assert writer.drop_after(2) == 3
    assert [(r["step"], r["split"]) for r in metrics.read_jsonl(writer.path)] == [
        (1, "train"),
        (2, "train"),
    ]
    assert writer.drop_after(2) == 0 and not list(tmp_path.glob("*.tmp*"))
