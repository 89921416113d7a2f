"""Timing and memory helpers shared by the benchmarks.

    timing = time_calls(lambda: step(), runs=3, warmup=1)   # Timing(compile_s, times_s)
    timing.median_s, peak_rss_mib(), device_peak_mib(), load_average()
    context = machine_context(parameters=n)   # time, host, JAX version and backend + facts
    write_json_lines(path, records)

Every timed callable must block until its result exists (`jax.block_until_ready`, `.item()`),
otherwise JAX's asynchronous dispatch makes the clock stop early.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Timing:
    """first_s: the first call (compilation + one run for jitted code); times_s: the timed runs."""

    first_s: float
    times_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def spread(self) -> float:
        """(max - min) / median of the timed runs: how noisy the machine was."""
        return (max(self.times_s) - min(self.times_s)) / self.median_s


def time_calls(fn: Callable[[], Any], *, runs: int = 3, warmup: int = 1) -> Timing:
    """Calls `fn` warmup + runs times; the first call's time is kept apart as compile time.

    Extra warm-up calls beyond the first are untimed. `fn` must block until its work is done.
    """
    if runs < 1 or warmup < 1:
        raise ValueError(f"time_calls needs runs >= 1 and warmup >= 1, got {runs}, {warmup}")
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(first_s=first, times_s=tuple(times))


def machine_context(**facts) -> dict[str, Any]:
    """The facts every benchmark record carries (time, host, JAX version and backend) plus
    `facts` (e.g. parameter counts)."""
    import jax  # here, so that importing this module stays cheap

    return dict(
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
        host_cpus=os.cpu_count(),
        machine=platform.machine(),
        jax=jax.__version__,
        backend=jax.default_backend(),
        cpu_vector_extensions=" ".join(cpu_vector_extensions()),
        **facts,
    )


VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")  # fmt: skip


def cpu_vector_extensions(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's SIMD extensions that matter for matmul speed, from /proc/cpuinfo's flags
    (x86) or Features (Arm); [] where /proc/cpuinfo is missing. The same code runs 2x apart
    on AVX2-only and AVX-512 CPUs, so every timing should say which it had."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return []
    present = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present.update(value.split())
    return [flag for flag in VECTOR_FLAGS if flag in present]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def current_rss_mib() -> float:
    """Resident set size now, MiB (from /proc; 0.0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)


def device_peak_mib(device=None) -> float | None:
    """Peak bytes in use on a JAX device (MiB), or None where the backend keeps no statistics
    (the CPU backend returns none)."""
    import jax

    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / (1024.0 * 1024.0)


def load_average() -> tuple[float, float, float]:
    """(1, 5, 15)-minute load averages: timings on a shared machine mean little without them."""
    return os.getloadavg()


def speedup(reference_s: float | None, ours_s: float) -> float | None:
    """reference time / our time (> 1 means we are faster); None without a reference."""
    return None if reference_s is None else reference_s / ours_s


def write_json_lines(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    """Appends one JSON object per record to `path` (JSON lines), creating its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(dict(record), sort_keys=True) + "\n")
