"""Run one function over many jobs in worker processes, each job bounded in time and memory.

A job that runs past `timeout_s`, grows its worker past `memory_mb`, or kills its worker
(a crash in a C extension) costs only itself: the worker is replaced and the job is reported
as failed with a one-line reason. The workers are long-lived (importing numpy and pretty_midi
once per worker, not once per file) and started with `spawn`, so they never inherit a parent
that may have initialised JAX threads.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Resident memory of the parent (the prepare loop, results) and of an idle worker (interpreter,
# numpy, mido, pretty_midi), measured on the fuzz corpus and POP909 with headroom.
PARENT_MB = 256
WORKER_BASE_MB = 128


@dataclasses.dataclass(frozen=True)
class JobLimits:
    timeout_s: float = 60.0  # wall time per job
    memory_mb: int = 384  # address space a job may add to its worker's (after imports)
    # Memory for the whole run (parent + workers): caps the number of workers (`max_workers`).
    total_memory_mb: int = 2048

    def validate(self) -> None:
        if not (self.timeout_s > 0 and self.memory_mb > 0):
            raise ValueError(
                f"job limits timeout_s and memory_mb must be > 0, got {self.timeout_s}, "
                f"{self.memory_mb}"
            )
        if self.total_memory_mb < PARENT_MB + WORKER_BASE_MB + self.memory_mb:
            raise ValueError(
                f"job limits total_memory_mb={self.total_memory_mb} leaves no room for one "
                f"worker: needs >= {PARENT_MB + WORKER_BASE_MB + self.memory_mb}"
            )

    def max_workers(self) -> int:
        """Workers that fit `total_memory_mb` when every one runs a job at its memory limit."""
        per_worker = WORKER_BASE_MB + self.memory_mb
        return max(1, (self.total_memory_mb - PARENT_MB) // per_worker)


@dataclasses.dataclass
class JobOutcome:
    index: int  # position of the job in the input
    value: Any = None  # what `fn` returned, when `error` is None
    error: str | None = None  # one line: why the job gave no value
    peak_rss_mb: float = 0.0  # the worker's peak resident memory so far


def _peak_rss_mb() -> float:
    """This process's own peak resident memory. VmHWM belongs to the current address space;
    ru_maxrss would carry over the forking parent's peak across exec (a worker spawned by a
    large process, e.g. a test session, would report that parent's size)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass  # no /proc/self/status (not Linux): ru_maxrss is the best measure left
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _address_space_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _worker_main(fn: Callable, conn, memory_mb: int) -> None:
    """Worker loop: receive (index, job), send (index, ok, value or message, peak rss)."""
    # The limit is set on top of what the worker already maps (interpreter, libraries), so it
    # bounds what one job adds. A job past it gets MemoryError and is reported, not fatal.
    base = _address_space_bytes()
    if base and memory_mb > 0:
        limit = base + memory_mb * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass  # a lower hard limit is already in place
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, job = message
        try:
            conn.send((index, True, fn(job), _peak_rss_mb()))
        except MemoryError:
            message = f"over the memory_mb limit ({memory_mb} MB)"
            conn.send((index, False, message, _peak_rss_mb()))
        except Exception as err:  # noqa: BLE001 - every job failure becomes a reported outcome
            line = " ".join(str(err).split()) or type(err).__name__
            conn.send((index, False, line[:300], _peak_rss_mb()))


class _Worker:
    def __init__(self, context, fn: Callable, memory_mb: int):
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(fn, child, memory_mb), daemon=True
        )
        self.process.start()
        child.close()
        self.index: int | None = None  # the job it is running
        self.started = 0.0

    def give(self, index: int, job) -> None:
        self.index, self.started = index, time.monotonic()
        self.conn.send((index, job))

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                self.process.kill()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_isolated(
    fn: Callable, jobs: Iterable, *, workers: int, limits: JobLimits
) -> Iterator[JobOutcome]:
    """Yields one outcome per job, in completion order. `fn` must be importable by name (spawn
    pickles it by reference)."""
    jobs = list(jobs)
    if not jobs:
        return
    context = multiprocessing.get_context("spawn")
    pending = list(reversed(range(len(jobs))))  # pop() takes jobs in input order
    pool = [_Worker(context, fn, limits.memory_mb) for _ in range(max(1, min(workers, len(jobs))))]
    for worker in pool:
        _feed(worker, jobs, pending)
    try:
        while any(worker.index is not None for worker in pool):
            busy = [w for w in pool if w.index is not None]
            now = time.monotonic()
            wait_s = max(0.01, min(w.started + limits.timeout_s - now for w in busy))
            ready = multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=wait_s
            )
            for slot, worker in enumerate(pool):
                if worker.index is None:
                    continue
                outcome, healthy = None, False
                if worker.conn in ready:
                    try:
                        index, ok, value, rss = worker.conn.recv()
                        outcome = JobOutcome(index, *((value, None) if ok else (None, value)), rss)
                        healthy = True
                    except (EOFError, OSError):
                        pass  # the worker died while answering: reported below
                if outcome is None and not worker.process.is_alive():
                    code = worker.process.exitcode
                    outcome = JobOutcome(worker.index, error=f"reading crashed (exit code {code})")
                elif outcome is None and time.monotonic() - worker.started > limits.timeout_s:
                    outcome = JobOutcome(
                        worker.index, error=f"over the timeout_s limit ({limits.timeout_s:g} s)"
                    )
                if outcome is None:
                    continue
                if not healthy:  # killed or dead: a fresh worker takes the next job
                    worker.stop(kill=True)
                    worker = pool[slot] = _Worker(context, fn, limits.memory_mb)
                worker.index = None
                _feed(worker, jobs, pending)
                yield outcome
    finally:
        for worker in pool:
            worker.stop(kill=worker.index is not None)


def _feed(worker: _Worker, jobs: list, pending: list[int]) -> None:
    if pending:
        index = pending.pop()
        worker.give(index, jobs[index])
