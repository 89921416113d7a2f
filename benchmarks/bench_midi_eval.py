"""The model-independent evaluation on prepared data: its real-vs-real ceilings and its cost.

    python -m benchmarks.bench_midi_eval --data_dir data/pop909 [--json runs/bench_midi_eval.json]

Measures, against the held-out songs (valid + test) as `make eval` does:
- the stored ceiling (`descriptor_rows.from_prepared_data`: 5 draws of 20 training songs);
- every training song as one row (the ceiling without the small-sample penalty);
- the two halves of the held-out songs against each other (valid vs test statistics);
- the share of real songs per bar-recurrence value (is the feature informative at the threshold);
and the seconds each step takes (describing songs, building the statistics, comparing a row).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from phrase_jax.artifacts import real_statistics
from phrase_jax.evaluation import descriptor_comparison, descriptor_rows, midi_descriptors

KEYS = ("songs", "bars", "mean_overlap", "descriptor_fd")


def _row(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 4) for k in KEYS if k in metrics} | {
        k: round(float(v), 3) for k, v in metrics.items() if k.startswith("overlap_")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    report: dict = {}

    tick = time.perf_counter()
    splits = ("train", "valid", "test")
    songs = {s: descriptor_rows.prepared_songs(args.data_dir, s) for s in splits}
    report["read_and_assemble_s"] = round(time.perf_counter() - tick, 2)
    tick = time.perf_counter()
    described = {s: [midi_descriptors.describe(x) for x in v] for s, v in songs.items()}
    seconds = time.perf_counter() - tick
    total = sum(map(len, described.values()))
    bars = sum(len(d.bars_bf) for v in described.values() for d in v)
    report["describe"] = {"songs": total, "bars": bars, "s": round(seconds, 2),
                          "ms_per_song": round(1000 * seconds / total, 2)}  # fmt: skip

    tick = time.perf_counter()
    stats = descriptor_rows.from_prepared_data(args.data_dir, ("valid", "test"))
    report["statistics_with_ceiling_s"] = round(time.perf_counter() - tick, 2)
    report["held_out"] = {"songs": stats.source["songs"], "bars": stats.source["bars"]}
    report["ceiling_5x20_train"] = _row(stats.ceiling) | {
        "mean_overlap_std": round(stats.ceiling["mean_overlap_std"], 4),
        "descriptor_fd_std": round(stats.ceiling["descriptor_fd_std"], 4),
    }
    tick = time.perf_counter()
    report["all_train"] = _row(descriptor_comparison.compare(described["train"], stats))
    report["compare_all_train_s"] = round(time.perf_counter() - tick, 2)
    valid_stats = real_statistics.build(described["valid"], {"splits": ["valid"]})
    report["test_vs_valid"] = _row(descriptor_comparison.compare(described["test"], valid_stats))
    recurrence = np.array([d.song[2] for d in described["valid"] + described["test"]])
    recurrence = recurrence[~np.isnan(recurrence)]
    report["held_out_bar_recurrence_quantiles"] = [
        round(float(q), 3) for q in np.quantile(recurrence, [0.1, 0.25, 0.5, 0.75, 0.9])
    ]
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
