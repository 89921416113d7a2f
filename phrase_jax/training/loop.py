"""Small pieces every trainer's loop uses; the loop itself is written out in each trainer.

    cadence = loop.Cadence(total_steps, log_every, checkpoint_every, eval_every)
    train_log = loop.TrainLog(writer, total_steps, step, progress_keys=("loss",))
    batches = loop.Batches(train_iter, mesh)
    time_limit = loop.TimeLimit(config.time_limit_s)     # started at the top of run()
    while step < cadence.total_steps:
        batch = batches.next(step)
        state, step_metrics = train_step(state, batch, rng); step += 1
        cadence = time_limit.cadence_after(step, cadence)  # time up: this step is the last
        train_log.add(step, step_metrics)
        if cadence.log(step) or cadence.checkpoint(step):
            means = train_log.means(last_checkpoint)   # raises on NaN/inf: never saved
        if cadence.log(step): train_log.write(step, means)
        ...
    except KeyboardInterrupt:
        loop.save_and_raise_interrupted(checkpointer, step, state, train_log, batches, ...)

Step metrics stay on device until a log or checkpoint step and are then fetched once; a log
covers every step since the previous log; steps/s and token rates cover training time only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
from absl import logging

from phrase_jax import errors
from phrase_jax.training import metrics, sharding

# (summed counters since the last log, elapsed seconds) -> (JSONL rates, Progress.report kwargs).
RatesFn = Callable[[dict, float], tuple[dict, dict]]


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Log / checkpoint / evaluate every `*_every` steps, and always at the last step."""

    total_steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int

    def _due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total_steps

    def log(self, step: int) -> bool:
        return self._due(step, self.log_every)

    def checkpoint(self, step: int) -> bool:
        return self._due(step, self.checkpoint_every)

    def eval(self, step: int) -> bool:
        return self._due(step, self.eval_every)


class TimeLimit:
    """A wall-clock limit on one call of a trainer (`config.time_limit_s`; 0 = none), counted
    from its creation at the top of `run`, so set-up, restore and compilation count too.

    When the time is up the step just finished becomes the last one: `cadence_after` returns a
    Cadence ending there, so that step logs, checkpoints and evaluates as a planned last step
    does, and the loop ends. Calling the trainer again resumes from that checkpoint (with the
    same `time_limit_s` again), towards `total_steps`.
    """

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic):
        if seconds < 0:
            raise ValueError(f"config time_limit_s={seconds}: must be >= 0 (0 = no limit)")
        self.seconds, self.clock = float(seconds), clock
        self.started = clock()

    def up(self) -> bool:
        return self.seconds > 0 and self.clock() - self.started >= self.seconds

    def cadence_after(self, step: int, cadence: Cadence) -> Cadence:
        """`cadence`, or one ending at `step` when the time is up before its last step."""
        if step >= cadence.total_steps or not self.up():
            return cadence
        logging.warning(
            "time_limit_s=%g reached after %.0f s: stopping at step %d of %d (checkpoint and "
            "evaluation of this step follow; run again to resume)",
            self.seconds, self.clock() - self.started, step, cadence.total_steps,
        )  # fmt: skip
        return dataclasses.replace(cadence, total_steps=step)


class Batches:
    """Global batches from this process's data iterator, remembering the data position before
    the batch of the step in progress: after Ctrl-C, the saved position must be the one after
    the last finished step, not after a batch drawn for a step that never ran."""

    def __init__(self, iterator: Iterator, mesh):
        self.iterator, self.mesh = iterator, mesh
        self._drawn_for: tuple[int, Any] | None = None

    def next(self, step: int) -> dict:
        """The global batch for the step after `step` (the steps finished so far)."""
        self._drawn_for = (step, self.iterator.get_state())
        return sharding.make_global_batch(next(self.iterator), self.mesh)

    def rewind_unfinished(self, step: int) -> None:
        """Puts back the batch drawn for a step that did not finish (`step` steps finished)."""
        if self._drawn_for is not None and self._drawn_for[0] == step:
            self.iterator.set_state(self._drawn_for[1])
            self._drawn_for = None


def token_rates(counts: dict, elapsed: float) -> tuple[dict, dict]:
    """Tokens since the last log -> `tokens_per_s` (JSONL) and the progress line's count."""
    return {"tokens_per_s": counts["n_tokens"] / elapsed}, {"tokens": counts["n_tokens"]}


class TrainLog:
    """The train metrics since the last log: JSONL rows (process 0) and a progress line.

    Keys in `summed` are per-step counters (e.g. `n_tokens`): their totals since the last log go
    to `rates`, never to the JSONL as they are.
    """

    def __init__(
        self,
        writer: metrics.MetricWriter,
        total_steps: int,
        start_step: int,
        *,
        progress_keys: Sequence[str],
        summed: Sequence[str] = (),
        rates: RatesFn | None = None,
    ):
        if summed and rates is None:
            raise ValueError(f"summed counters {tuple(summed)} need a `rates` function")
        self.writer, self.total_steps = writer, total_steps
        self.progress_keys, self.summed, self.rates = tuple(progress_keys), tuple(summed), rates
        self.pending: list[tuple[int, Mapping]] = []
        self.restart_clock(start_step)

    def add(self, step: int, step_metrics: Mapping) -> None:
        """Keeps a step's metrics (device arrays: no transfer here)."""
        self.pending.append((step, step_metrics))

    def means(self, last_checkpoint: int | None) -> dict[str, float]:
        """Host means since the last log; raises FloatingPointError at the first non-finite
        step, naming it and the last checkpoint (so a broken state is never saved)."""
        if not self.pending:
            return {}
        return metrics.mean_train_metrics(self.pending, last_checkpoint, summed=self.summed)

    def write(self, step: int, means: dict[str, float]) -> None:
        """One JSONL row and one progress line for the steps since the last log."""
        self.pending = []
        means = dict(means)
        elapsed = max(time.monotonic() - self._since[1], 1e-9)
        counts = {key: means.pop(key) for key in self.summed}
        means["steps_per_s"] = (step - self._since[0]) / elapsed
        progress_kwargs = {}
        if self.rates is not None:
            rate_scalars, progress_kwargs = self.rates(counts, elapsed)
            means.update(rate_scalars)
        self.writer.write(step, means)
        shown = {k: means[k] for k in self.progress_keys}
        self._progress.report(step, shown, **progress_kwargs)

    def restart_clock(self, step: int) -> None:
        """Rates from here on (called after a log or an eval: eval time is not training)."""
        self._since = (step, time.monotonic())
        self._progress = metrics.Progress(self.total_steps, start_step=step)


def _alive(state) -> bool:
    """False when the step donated `state`'s buffers (Ctrl-C arrived inside the step)."""
    return not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state))


def save_and_raise_interrupted(
    checkpointer,
    step: int,
    state,
    train_log: TrainLog,
    batches: Batches | None = None,
    *,
    json_items: Mapping | None = None,
) -> None:
    """After Ctrl-C: checkpoints `state` (and the data position after its last batch) at
    `step` when that is sensible (a step not saved yet, buffers not donated to an unfinished
    step, finite metrics), then raises `errors.Interrupted(step saved)` so the entry point
    prints one line."""
    saved = checkpointer.latest_step()
    if step != saved and step > 0 and _alive(state):
        try:
            train_log.means(saved)
        except FloatingPointError:
            logging.warning("Ctrl-C at step %d: metrics not finite, checkpoint not saved", step)
        else:
            iterator = None
            if batches is not None:
                batches.rewind_unfinished(step)
                iterator = batches.iterator
            checkpointer.save(step, state, data_iterator=iterator, json_items=json_items)
            checkpointer.wait()
            saved = step
    logging.warning("interrupted at step %d; last checkpoint: step %s", step, saved)
    raise errors.Interrupted(saved if saved is not None else 0) from None
