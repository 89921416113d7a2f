"""Token statistics of a prepared corpus and the printed report, next to the reference's numbers.

Length histograms are stored in the manifest so the truncation count for any `max_len` can be
computed later without reading the shards (`truncated_count`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np

# Reference statistics (PhraseLDM code, POP909 statistics folder) printed next to ours.
REFERENCE = {
    "bar_tokens": {"p50": 58, "p99": 113},
    "bars_per_song": {"p50": 79, "p90": 115},
}
# Tokens the VAE batch adds around a record: phrases get [C0..C3] [BOS] ... [EOS], bars get
# [BOS] ... [EOS]; a record longer than max_len minus these is truncated by the pipeline.
EXTRA_ENCODER_TOKENS = {"phrases": 6, "bars": 2}


def percentiles(values: Iterable[int], qs=(50, 90, 99)) -> dict[str, float]:
    arr = np.fromiter(values, dtype=np.int64)
    if arr.size == 0:
        return {f"p{q}": 0.0 for q in qs} | {"mean": 0.0, "max": 0, "count": 0}
    out = {f"p{q}": float(np.percentile(arr, q)) for q in qs}
    return out | {
        "mean": round(float(arr.mean()), 2),
        "max": int(arr.max()),
        "count": int(arr.size),
    }


def histogram(lengths: Iterable[int]) -> dict[str, int]:
    """{length: count} with string keys (JSON), sorted by length."""
    counts = collections.Counter(lengths)
    return {str(k): counts[k] for k in sorted(counts)}


def truncated_count(length_histogram: dict[str, int], kind: str, max_len: int) -> int:
    """Records of `kind` that a VAE batch with `max_len` positions truncates."""
    limit = max_len - EXTRA_ENCODER_TOKENS[kind]
    return sum(n for length, n in length_histogram.items() if int(length) > limit)


def print_report(manifest: dict, log=print) -> None:
    """A person-readable summary of a manifest: songs kept/dropped and token statistics."""
    counts, stats = manifest["counts"], manifest["token_stats"]
    log(
        f"[prepare] {manifest['dataset']}: {counts['songs_listed']} songs listed, "
        f"{counts['songs_loaded']} loaded, {counts['songs_skipped']} skipped, "
        f"{counts['ldm_songs']} in the LDM song corpus ({manifest['seconds']:.1f} s)"
    )
    for reason, n in sorted(counts["skip_reasons"].items(), key=lambda kv: -kv[1]):
        log(f"  skipped {n:5d}: {reason}")
    for reason, n in sorted(counts["ldm_reject_reasons"].items(), key=lambda kv: -kv[1]):
        log(f"  not in LDM corpus {n:5d}: {reason}")
    for reason, n in counts.get("dropped", {}).items():
        log(f"  dropped {n:7d} {reason}")
    for key, value in counts.get("dataset_facts", {}).items():
        log(f"  {key}: {value}")
    for split, names in manifest["splits"].items():
        recs = {kind: manifest["records"][kind][split] for kind in manifest["records"]}
        log(f"  split {split}: {len(names)} songs, records {recs}")

    def fmt(name, ref=None):
        s = stats[name]
        line = ", ".join(f"{k} {s[k]:g}" for k in ("p50", "p90", "p99", "mean", "max") if k in s)
        if ref:
            line += "   (ref POP909 " + ", ".join(f"{k} {v}" for k, v in ref.items()) + ")"
        log(f"  {name}: {line}")

    fmt("phrase_tokens")
    fmt("bar_tokens", REFERENCE["bar_tokens"])
    fmt("bars_per_song", REFERENCE["bars_per_song"])
    fmt("bars_per_ldm_song", REFERENCE["bars_per_song"])
    trunc = manifest["truncated_at_128"]
    log(f"  truncated at 128 positions: phrases {trunc['phrases']}, bars {trunc['bars']}")
