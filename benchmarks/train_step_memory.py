"""The paper-size PhraseLDM train step alone in this process: its time and the process's peak
memory, which an in-process benchmark row cannot isolate (earlier rows raise the peak).

    python -m benchmarks.train_step_memory --batch 32 [--remat] [--runs 2]

Prints one JSON line: batch, remat, median_s, times_s, first_s, peak_rss_mib (the process's
VmHWM: parameters, optimizer state, the batch and XLA's temporaries). `bench_ldm
--memory_batches` runs it as a subprocess.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from benchmarks import common


def measure(batch_size: int, *, remat: bool, runs: int) -> dict:
    from benchmarks import bench_ldm
    from phrase_jax.models import dit

    config = dataclasses.replace(dit.paper_config(("length",)), remat=remat)
    timing = bench_ldm.bench_train_step(config, batch_size, runs=runs)
    return {
        "batch": batch_size,
        "remat": remat,
        "median_s": timing.median_s,
        "times_s": list(timing.times_s),
        "first_s": timing.first_s,
        "peak_rss_mib": round(common.peak_rss_mib()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--remat", action="store_true", help="model.remat=True")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    result = measure(args.batch, remat=args.remat, runs=args.runs)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
