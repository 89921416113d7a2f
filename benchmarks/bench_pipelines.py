"""Throughput of the VAE input pipelines on this machine: batches/s and tokens/s.

    python -m benchmarks.bench_pipelines --data_dir data/pop909 [--batch_size 128]
        [--workers 0,1,2] [--batches 50]

tokens/s counts real (non-[PAD]) decoder target tokens, the tokens a training step learns from.
The first batches of each run (worker start-up, file opening) are excluded from the timing.
"""

from __future__ import annotations

import argparse
import os
import time

from absl import flags

from data_pipelines import vae_pipeline


def measure(
    data_dir: str, kind: str, batch_size: int, workers: int, batches: int, warmup: int
) -> tuple[float, float]:
    """(batches/s, target tokens/s) over `batches` batches after `warmup` untimed ones."""
    it = vae_pipeline.make_vae_loader(
        data_dir,
        "train",
        kind,
        batch_size=batch_size,
        seed=0,
        num_workers=workers,
        shard_index=0,
        shard_count=1,
    )
    try:
        for _ in range(warmup):
            next(it)
        tokens, start = 0, time.perf_counter()
        for _ in range(batches):
            tokens += int(next(it)["decoder_mask"].sum())
        seconds = time.perf_counter() - start
    finally:
        if hasattr(it, "close"):
            it.close()
    return batches / seconds, tokens / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--kinds", default="phrases,bars")
    args = parser.parse_args(argv)
    flags.FLAGS.mark_as_parsed()  # Grain worker processes read absl flags
    print(
        f"pipeline throughput, batch {args.batch_size}, {os.cpu_count()} CPU cores, "
        f"{args.batches} timed batches after {args.warmup} warm-up"
    )
    print(f"{'kind':8s} {'workers':>7s} {'batches/s':>10s} {'tokens/s':>10s}")
    for kind in args.kinds.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            rate, tokens = measure(
                args.data_dir, kind, args.batch_size, workers, args.batches, args.warmup
            )
            print(f"{kind:8s} {workers:7d} {rate:10.1f} {tokens:10.0f}", flush=True)


if __name__ == "__main__":
    main()
