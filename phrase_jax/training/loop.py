"""The training loop cadence shared by the stages: step, log, checkpoint, evaluate.

`run_train_loop` owns what every trainer repeats: fetch a batch, run the jitted step, keep the
step metrics on device until a log or checkpoint step, then mean them on the host (which raises
on the first non-finite step, so a broken state is never saved), write JSONL + a progress line,
checkpoint state and data iterator together, and call the stage's evaluation. What differs
between stages comes in as arguments: the eval callback, the progress keys, and the counters
(e.g. `n_tokens`) summed between logs and turned into rates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from phrase_jax.training import metrics, sharding

# (state, global batch, rng) -> (state, metrics): a jitted `train_state.make_train_step`.
TrainStep = Callable[[Any, dict, Any], tuple[Any, Mapping]]
# (step, state, last_checkpoint) -> eval metrics; writes and logs them itself.
EvalFn = Callable[[int, Any, "int | None"], dict]
# (summed counters since the last log, elapsed seconds) -> (JSONL rates, Progress.report kwargs).
RatesFn = Callable[[dict, float], tuple[dict, dict]]


def run_train_loop(
    state,
    step: int,
    *,
    train_step: TrainStep,
    train_iter: Iterator,
    mesh,
    rng,
    total_steps: int,
    log_every: int,
    checkpoint_every: int,
    eval_every: int,
    checkpointer,
    json_items: Mapping,
    writer: metrics.MetricWriter,
    evaluate: EvalFn,
    progress_keys: Sequence[str],
    summed: Sequence[str] = (),
    rates: RatesFn | None = None,
) -> dict | None:
    """Trains from `step` to `total_steps`; returns the last `evaluate` result (None if none ran).

    Each of log / checkpoint / eval happens every `*_every` steps and always at the last step.
    `train_iter` yields per-process numpy batches; it is saved with every checkpoint so a
    resumed run sees the same data. Keys in `summed` are per-step counters: their totals since
    the last log go to `rates`, never to the JSONL as they are. Steps/s and rates cover only
    training time: the clocks restart after each eval.
    """
    if summed and rates is None:
        raise ValueError(f"summed counters {tuple(summed)} need a `rates` function")
    last_checkpoint = checkpointer.latest_step()
    progress = metrics.Progress(total_steps, start_step=step)
    pending: list[tuple[int, Mapping]] = []
    last_log = (step, time.monotonic())
    results = None
    while step < total_steps:
        batch = sharding.make_global_batch(next(train_iter), mesh)
        state, step_metrics = train_step(state, batch, rng)
        step += 1
        pending.append((step, step_metrics))
        done = step == total_steps
        is_log = step % log_every == 0 or done
        is_checkpoint = step % checkpoint_every == 0 or done
        is_eval = step % eval_every == 0 or done

        if is_log or is_checkpoint:  # never save a state that went non-finite
            means = metrics.mean_train_metrics(pending, last_checkpoint, summed=tuple(summed))
        if is_log:  # a log covers every step since the previous log, checkpoints or not
            pending = []
            elapsed = max(time.monotonic() - last_log[1], 1e-9)
            counts = {key: means.pop(key) for key in summed}
            means["steps_per_s"] = (step - last_log[0]) / elapsed
            progress_kwargs = {}
            if rates is not None:
                rate_scalars, progress_kwargs = rates(counts, elapsed)
                means.update(rate_scalars)
            writer.write(step, means)
            progress.report(step, {k: means[k] for k in progress_keys}, **progress_kwargs)
        if is_checkpoint:
            checkpointer.save(step, state, data_iterator=train_iter, json_items=json_items)
            last_checkpoint = step
        if is_eval:
            results = evaluate(step, state, last_checkpoint)
        if is_log or is_eval:  # rates exclude eval time
            last_log = (step, time.monotonic())
            progress = metrics.Progress(total_steps, start_step=step)
    return results
