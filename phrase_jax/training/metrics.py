"""Run logs a person and a script can read: JSONL scalars, a progress line, a NaN/inf guard.

Only process 0 writes. `<workdir>/metrics.jsonl` gets one object per logged step,
`{"step": 100, "split": "train", "loss": 2.31, ...}`; TensorBoard event files are added when
the `tensorboard` package happens to be installed (it is not a dependency).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging


def check_finite(step: int, metrics: Mapping[str, float], last_checkpoint: int | None) -> None:
    """Raises FloatingPointError naming the step, the bad keys and the checkpoint to resume."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
    if bad:
        resume = (
            f"last good checkpoint: step {last_checkpoint}"
            if last_checkpoint is not None
            else "no checkpoint saved yet"
        )
        raise FloatingPointError(
            f"non-finite {', '.join(bad)} at step {step} ({resume}); lower the learning rate or "
            "check the batch, then rerun to resume"
        )


def mean_train_metrics(
    pending: list[tuple[int, Mapping]], last_checkpoint: int | None, summed: tuple[str, ...] = ()
) -> dict[str, float]:
    """Host means of the train metrics of the steps since the last log, one device transfer.

    Raises `FloatingPointError` naming the first non-finite step (see `check_finite`), so a
    caller that checks before saving never checkpoints a broken state. Keys in `summed` (e.g.
    `n_tokens`) are totals; `learning_rate` is the last step's.
    """
    host = jax.device_get(pending)
    for step, values in host:
        check_finite(step, values, last_checkpoint)
    means = {k: float(np.mean([values[k] for _, values in host])) for k in host[0][1]}
    for key in summed:
        means[key] = float(sum(values[key] for _, values in host))
    means["learning_rate"] = float(host[-1][1]["learning_rate"])
    return means


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` (+ TensorBoard if installed), process 0 only."""

    def __init__(self, workdir: str | os.PathLike, *, use_tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(os.path.abspath(os.fspath(workdir)), "metrics.jsonl")
        self._tensorboard = None
        if not self.active:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if use_tensorboard:
            try:
                from tensorboard.summary import Writer  # optional: only when installed
            except ImportError:
                Writer = None  # noqa: N806
            if Writer is not None:
                self._tensorboard = Writer(os.path.join(os.path.dirname(self.path), "tensorboard"))

    def drop_after(self, step: int) -> int:
        """Removes the rows of steps after `step` (a resumed run logs them again, so each step
        appears once); rewrites the file atomically. Returns how many rows went."""
        if not self.active or not os.path.exists(self.path):
            return 0
        rows = read_jsonl(self.path)
        kept = [row for row in rows if row["step"] <= step]
        if len(kept) < len(rows):
            tmp = f"{self.path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in kept)
            os.replace(tmp, self.path)
        return len(rows) - len(kept)

    def write(self, step: int, scalars: Mapping[str, float], *, split: str = "train") -> None:
        """Appends one JSON line; values are fetched to host floats."""
        if not self.active:
            return
        values = {k: float(np.asarray(v)) for k, v in jax.device_get(dict(scalars)).items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        if self._tensorboard is not None:
            for key, value in values.items():
                self._tensorboard.add_scalar(f"{split}/{key}", value, step=int(step))
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A readable progress line: step, rates and ETA since the previous report.

    `report(step, scalars, tokens=n)` where n is the number of tokens processed since the
    previous report (optional) returns e.g.
    `step 200/1000 (20.0%) | loss 2.310 | 4.51 steps/s | 18.4k tok/s | ETA 2m57s`.
    """

    def __init__(self, total_steps: int, *, start_step: int = 0, clock=time.monotonic):
        self.total_steps = total_steps
        self._clock = clock
        self._last_step = start_step
        self._last_time = clock()

    def report(self, step: int, scalars: Mapping[str, float] | None = None, *, tokens=None) -> str:
        now = self._clock()
        elapsed = max(now - self._last_time, 1e-9)
        steps_per_s = (step - self._last_step) / elapsed
        parts = [f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%)"]
        for key, value in (scalars or {}).items():
            parts.append(f"{key} {float(value):.4g}")
        parts.append(f"{steps_per_s:.2f} steps/s")
        if tokens is not None:
            parts.append(f"{_si(tokens / elapsed)} tok/s")
        remaining = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
        parts.append(f"ETA {_duration(remaining)}")
        self._last_step, self._last_time = step, now
        line = " | ".join(parts)
        if jax.process_index() == 0:
            logging.info("%s", line)
        return line


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.1f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
