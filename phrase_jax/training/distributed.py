"""Several processes, one run: initialisation, process-aware helpers and a hang watchdog.

    settings = resolve_settings(os.environ, coordinator_address=..., num_processes=...,
                                process_id=...)          # None: a single-process run
    if settings is not None:
        initialize(settings)                            # before any other JAX call
        start_stall_watchdog(settings.stall_timeout_s)  # exits when training stops moving

Where the processes come from:
- explicit: `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID`, or the same as flags of `phrase_jax.main` (flags win);
- detected by JAX itself: SLURM (`srun`), Open MPI (`mpirun`), Cloud TPU pod slices (pass
  `--multi_host` or set `PHRASE_JAX_MULTI_HOST=1` there: a TPU VM's environment does not say so).

What keeps a broken job from hanging:
- joining: `initialize` gives up after `initialization_timeout_s` with one clear line (which
  process, which coordinator, whether it answered) instead of JAX's abort deep in gRPC;
- a process that dies: JAX's coordination service notices the missing heartbeats within
  `heartbeat_timeout_s` and terminates every other process ("... another task died");
- a collective that never completes while every process is alive (e.g. processes that disagree
  on the number of batches): the stall watchdog exits when no global batch was built for
  `stall_timeout_s`, after dumping every thread's Python stack.
Every exit names the process and returns a non-zero status, so the launcher sees the failure.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

import jax
from absl import logging

# Exit statuses of the watchdogs (EX_TEMPFAIL-like: a restart may succeed).
EXIT_JOIN_TIMEOUT = 75
EXIT_STALLED = 76

# JAX's own join deadline is ours plus this much, so our clear message always comes first.
_JAX_DEADLINE_GRACE_S = 10


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """How this process joins the run. None fields are left to JAX's cluster detection
    (SLURM, Open MPI, Cloud TPU); all three explicit fields are needed otherwise."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100
    shutdown_timeout_s: int = 300
    stall_timeout_s: float = 1800.0

    def describe(self) -> str:
        who = "?" if self.process_id is None else str(self.process_id)
        of = "?" if self.num_processes is None else str(self.num_processes)
        where = self.coordinator_address or "auto-detected coordinator"
        return f"process {who} of {of} ({where})"


def wants_multi_host(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the environment describes more than one process (explicit JAX coordinator,
    SLURM or Open MPI with several tasks, several TPU workers, or PHRASE_JAX_MULTI_HOST=1)."""
    if environ.get("JAX_COORDINATOR_ADDRESS") or environ.get("PHRASE_JAX_MULTI_HOST") == "1":
        return True
    for key in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(key, "1").isdigit() and int(environ.get(key, "1")) > 1:
            return True
    return len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def _int_setting(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: give a whole number") from None


def resolve_settings(
    environ: Mapping[str, str] = os.environ,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    multi_host: bool = False,
    initialization_timeout_s: int = 300,
    heartbeat_timeout_s: int = 100,
    shutdown_timeout_s: int = 300,
    stall_timeout_s: float = 1800.0,
) -> DistributedSettings | None:
    """This process's settings from flags (given here) over the environment; None when nothing
    asks for more than one process. Raises ValueError naming the flag or variable at fault."""
    address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = _int_setting(
        num_processes if num_processes is not None else environ.get("JAX_NUM_PROCESSES"),
        "--num_processes / JAX_NUM_PROCESSES",
    )
    index = _int_setting(
        process_id if process_id is not None else environ.get("JAX_PROCESS_ID"),
        "--process_id / JAX_PROCESS_ID",
    )
    # JAX_NUM_PROCESSES=1 alone still means one process.
    explicit = address is not None or index is not None or (count is not None and count != 1)
    if not (explicit or multi_host or wants_multi_host(environ)):
        return None
    if explicit and None in (address, count, index):
        raise ValueError(
            f"multi-process run needs all of --coordinator_address / JAX_COORDINATOR_ADDRESS "
            f"(got {address!r}), --num_processes / JAX_NUM_PROCESSES (got {count}) and "
            f"--process_id / JAX_PROCESS_ID (got {index}); or give none under SLURM, Open MPI "
            "or a TPU pod, where JAX detects them"
        )
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"coordinator address {address!r}: give host:port of process 0")
    if count is not None and count < 1:
        raise ValueError(f"--num_processes / JAX_NUM_PROCESSES={count}: must be >= 1")
    if index is not None and not 0 <= index < (count or index + 1):
        raise ValueError(f"--process_id / JAX_PROCESS_ID={index}: must be in [0, {count})")
    for name, value in (("initialization_timeout", initialization_timeout_s),
                        ("heartbeat_timeout", heartbeat_timeout_s),
                        ("shutdown_timeout", shutdown_timeout_s)):  # fmt: skip
        if value < 1:
            raise ValueError(f"--{name}={value}: give at least 1 second")
    if stall_timeout_s < 0:
        raise ValueError(f"--stall_timeout={stall_timeout_s}: give seconds, or 0 to turn it off")
    return DistributedSettings(
        coordinator_address=address,
        num_processes=count,
        process_id=index,
        initialization_timeout_s=int(initialization_timeout_s),
        heartbeat_timeout_s=int(heartbeat_timeout_s),
        shutdown_timeout_s=int(shutdown_timeout_s),
        stall_timeout_s=float(stall_timeout_s),
    )


class Watchdog:
    """Calls `on_expire(idle_seconds)` once when `kick()` has not been called for `timeout_s`.

    A daemon thread; use as a context manager or call `stop()`. The default `on_expire` of the
    helpers below writes a message and ends the process with `os._exit`: a process blocked
    inside a collective cannot be interrupted from Python in any gentler way.
    """

    def __init__(self, timeout_s: float, on_expire: Callable[[float], None], *,
                 poll_s: float | None = None, name: str = "watchdog"):  # fmt: skip
        if timeout_s <= 0:
            raise ValueError(f"watchdog timeout {timeout_s}: must be > 0 seconds")
        self.timeout_s = float(timeout_s)
        self._on_expire = on_expire
        self._poll_s = poll_s if poll_s is not None else min(1.0, self.timeout_s / 4)
        self._last_kick = time.monotonic()
        self._stopped = threading.Event()
        self.expired = False
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._last_kick = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stopped.wait(self._poll_s):
            idle = time.monotonic() - self._last_kick
            if idle >= self.timeout_s:
                self.expired = True
                self._on_expire(idle)
                return


def _die(message: str, status: int, *, dump_stacks: bool = False) -> None:
    """One clear line on stderr, optionally every thread's Python stack, then exit."""
    sys.stderr.write(f"\n{message}\n")
    if dump_stacks:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(status)


def coordinator_answers(address: str, timeout_s: float = 2.0) -> bool:
    """Whether something accepts TCP connections at `host:port` (the coordinator service)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def _join_timeout_message(settings: DistributedSettings) -> str:
    if settings.process_id == 0 or settings.coordinator_address is None:
        reason = "not every process joined"
    elif coordinator_answers(settings.coordinator_address):
        reason = "the coordinator answers but not every process joined"
    else:
        reason = "nothing answers at the coordinator address (is process 0 running there?)"
    return (
        f"phrase_jax: {settings.describe()} could not join the distributed run within "
        f"{settings.initialization_timeout_s}s: {reason}; start all processes with the same "
        "--coordinator_address and --num_processes and distinct --process_id, or raise "
        "--initialization_timeout"
    )


def initialize(settings: DistributedSettings, *, on_timeout: Callable[[str], None] | None = None):
    """Joins the run: CPU collectives over gloo, then `jax.distributed.initialize` with the
    settings' timeouts. Must run before anything touches a JAX backend.

    on_timeout(message) replaces the default (print the message, exit EXIT_JOIN_TIMEOUT).
    """
    from jax._src import xla_bridge  # the only way to ask without starting a backend

    if jax.distributed.is_initialized():
        raise RuntimeError("phrase_jax: jax.distributed is already initialised in this process")
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "phrase_jax: a JAX backend started before distributed initialisation; call "
            "distributed.initialize first (before jax.devices(), any array or any jit)"
        )
    # Cross-process collectives of the CPU backend (CPU runs, tests); accelerators ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    expire = on_timeout or (lambda message: _die(message, EXIT_JOIN_TIMEOUT))
    logging.info("joining the distributed run as %s", settings.describe())
    with Watchdog(
        settings.initialization_timeout_s,
        lambda _: expire(_join_timeout_message(settings)),
        name="join-watchdog",
    ):
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            initialization_timeout=settings.initialization_timeout_s + _JAX_DEADLINE_GRACE_S,
            heartbeat_timeout_seconds=settings.heartbeat_timeout_s,
            shutdown_timeout_seconds=settings.shutdown_timeout_s,
        )
        # The CPU client (and its gloo collectives) starts lazily; start it while guarded.
        devices = jax.devices()
    logging.info(
        "joined: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), len(devices),
    )  # fmt: skip


# The process-wide stall watchdog; `note_progress` kicks it (no-op when none runs).
_stall_watchdog: Watchdog | None = None


def start_stall_watchdog(
    timeout_s: float, *, on_stall: Callable[[str], None] | None = None
) -> Watchdog | None:
    """Starts the watchdog that `note_progress()` keeps alive; None when timeout_s is 0.

    on_stall(message) replaces the default (dump all stacks, print, exit EXIT_STALLED).
    """
    global _stall_watchdog
    stop_stall_watchdog()
    if timeout_s == 0:
        return None

    def expire(idle: float) -> None:
        message = (
            f"phrase_jax: process {jax.process_index()} of {jax.process_count()} made no "
            f"progress for {idle:.0f}s (no global batch built): a collective is stuck or a "
            "process went its own way; exiting so the job does not hang (resume restarts all "
            "processes from the last checkpoint; raise --stall_timeout if one step, compile "
            "or eval legitimately takes longer)"
        )
        if on_stall is not None:
            on_stall(message)
        else:
            _die(message, EXIT_STALLED, dump_stacks=True)

    _stall_watchdog = Watchdog(timeout_s, expire, name="stall-watchdog")
    return _stall_watchdog


def stop_stall_watchdog() -> None:
    global _stall_watchdog
    if _stall_watchdog is not None:
        _stall_watchdog.stop()
        _stall_watchdog = None


def note_progress() -> None:
    """Tells the stall watchdog that training moved (called for every global batch)."""
    if _stall_watchdog is not None:
        _stall_watchdog.kick()


def is_main_process() -> bool:
    """Process 0 writes the run's files (metrics, logs, JSON); every process saves checkpoints."""
    return jax.process_index() == 0
