"""The shared training loop alone (phrase_jax/training/loop.py): a fake step, no model."""

import itertools
import math

import numpy as np
import pytest

from phrase_jax.training import loop, metrics, sharding


class FakeCheckpointer:
    """Records the steps saved; `latest` plays a checkpoint left by an earlier run."""

    def __init__(self, latest=None):
        self.latest, self.saved = latest, []

    def latest_step(self):
        return self.latest

    def save(self, step, state, *, data_iterator, json_items):
        self.saved.append((step, state, data_iterator, json_items))


def fake_step(bad_step=None):
    """state: the step count; loss = the step (NaN at `bad_step`), 8 tokens per step."""

    def step_fn(state, batch, rng):
        state += 1
        loss = math.nan if state == bad_step else float(state)
        return state, {"loss": np.float32(loss), "n_tokens": np.float32(batch["x"].shape[0]),
                       "learning_rate": np.float32(0.5)}  # fmt: skip

    return step_fn


def token_rates(counts, elapsed):
    return {"tokens_per_s": counts["n_tokens"] / elapsed}, {"tokens": counts["n_tokens"]}


def train(tmp_path, *, start=0, total=10, checkpointer=None, bad_step=None, **kwargs):
    checkpointer = checkpointer or FakeCheckpointer()
    evals = []

    def evaluate(step, state, last_checkpoint):
        evals.append((step, state, last_checkpoint))
        return {"loss": float(step)}

    batches = itertools.repeat({"x": np.zeros((8, 2), np.float32)})
    kwargs = {"log_every": 3, "checkpoint_every": 4, "eval_every": 5} | kwargs
    results = loop.run_train_loop(
        start, start, train_step=fake_step(bad_step), train_iter=batches,
        mesh=sharding.make_mesh({"shape": (-1, 1)}), rng=None, total_steps=total,
        checkpointer=checkpointer, json_items={"config": {}}, writer=metrics.MetricWriter(tmp_path),
        evaluate=evaluate, progress_keys=("loss",), **kwargs,
    )  # fmt: skip
    return results, checkpointer, evals


def train_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    return [r for r in metrics.read_jsonl(path) if r["split"] == "train"] if path.exists() else []


def test_cadence_and_the_last_step_always_logs_checkpoints_and_evaluates(tmp_path):
    results, checkpointer, evals = train(tmp_path, summed=("n_tokens",), rates=token_rates)
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
