"""Shards and manifest from per-song results: the last step of `prepare`.

Record formats (docs/design.md): `phrases` and `bars` records are `np.int16` token ids as raw
bytes; `songs` records are UTF-8 JSON {name, split, n_bars, sections, slots, dropped_tracks}.
Shards are written to a temp name and renamed, and shards of an earlier run that the new run
does not write are removed, so the folder always matches its manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re

import numpy as np
from array_record.python import array_record_module

from data_pipelines import corpus_stats
from phrase_jax.music import vocab

FORMAT_VERSION = 2  # bump when records or per-song results change (invalidates caches)
# 2: bounded reading, meter filtering, chorale pickups, dropped notes by reason, track_choice
KINDS = ("phrases", "bars", "songs")


def _write_shards(
    out_dir: pathlib.Path, kind: str, split: str, records: list[bytes], per_shard: int
) -> list[str]:
    n = max(1, math.ceil(len(records) / per_shard))
    names = []
    for i in range(n):
        name = f"{kind}-{split}-{i:05d}-of-{n:05d}.array_record"
        tmp = out_dir / f".{name}.tmp"
        writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
        for record in records[i * per_shard : (i + 1) * per_shard]:
            writer.write(record)
        writer.close()
        os.replace(tmp, out_dir / name)
        names.append(name)
    return names


def _reason_class(reason: str) -> str:
    """Groups reasons that differ only in numbers, e.g. 'labels total N bars != N bars'."""
    return re.sub(r"\d+", "N", reason)


def write_corpus(
    out: pathlib.Path,
    dataset: str,
    results: dict[str, dict],
    splits: dict[str, list[str]],
    settings,
    output,
) -> dict:
    """Writes every shard of `out` from the per-song results (`prepare.process_song`) and
    returns the manifest (without fingerprint and timing, which `prepare` adds)."""
    ok = {n: r for n, r in results.items() if r["ok"]}
    shards, records, lengths = {k: {} for k in KINDS}, {k: {} for k in KINDS}, {}
    for split, names in splits.items():
        kept = [ok[n] for n in names if n in ok]
        by_kind = {
            "phrases": [np.asarray(p, np.int16).tobytes() for r in kept for p in r["phrases"]],
            "bars": [np.asarray(b, np.int16).tobytes() for r in kept for b in r["bars"]],
            "songs": [
                json.dumps(r["song"] | {"split": split}).encode()
                for r in kept
                if r["song"] is not None
            ],
        }
        for kind, recs in by_kind.items():
            shards[kind][split] = _write_shards(out, kind, split, recs, output.records_per_shard)
            records[kind][split] = len(recs)
        lengths[split] = {
            "phrases": corpus_stats.histogram(len(p) for r in kept for p in r["phrases"]),
            "bars": corpus_stats.histogram(len(b) for r in kept for b in r["bars"]),
        }
    written = {f for by_split in shards.values() for fs in by_split.values() for f in fs}
    for stale in out.glob("*.array_record"):  # shards of an earlier run with other settings
        if stale.name not in written:
            stale.unlink()

    skipped = [r for r in results.values() if not r["ok"]]
    rejected = [r for r in ok.values() if r["song"] is None]
    ldm = [r for r in ok.values() if r["song"] is not None]
    track_phrases = [p for r in ok.values() for p in r["phrases"] if len(p) > 1]
    facts = {}
    infos = [r.get("info", {}) for r in ok.values()]
    if any("key_exact_agree" in i for i in infos):
        judged = [i for i in infos if "key_exact_agree" in i]
        facts["key_detector_agrees_exact"] = (
            f"{sum(i['key_exact_agree'] for i in judged)}/{len(judged)}"
        )
        facts["key_detector_agrees_scale"] = (
            f"{sum(i['key_scale_agree'] for i in judged)}/{len(judged)}"
        )
    if any("tail_bars_cut_to_labels" in i for i in infos):
        cut = [i.get("tail_bars_cut_to_labels", 0) for i in infos]
        facts["songs_cut_to_section_labels"] = sum(c > 0 for c in cut)
    facts["dropped_track_phrases_in_layout"] = sum(r["song"]["dropped_tracks"] for r in ldm)
    dropped_by_song = {r["name"]: r["dropped"] for r in results.values() if r.get("dropped")}
    dropped_total: dict[str, int] = {}
    for counts in dropped_by_song.values():
        for reason, n in counts.items():
            dropped_total[reason] = dropped_total.get(reason, 0) + n

    all_lengths = {kind: {} for kind in ("phrases", "bars")}
    for by_kind in lengths.values():
        for kind, hist in by_kind.items():
            for length, n in hist.items():
                all_lengths[kind][length] = all_lengths[kind].get(length, 0) + n
    return {
        "dataset": dataset,
        "format": {
            "version": FORMAT_VERSION,
            "token_dtype": "int16",
            "shard_pattern": "{kind}-{split}-{i:05d}-of-{n:05d}.array_record",
        },
        "vocab_sha256": vocab.Vocab().sha256,
        "settings": dataclasses.asdict(settings) | dataclasses.asdict(output),
        "counts": {
            "songs_listed": len(results),
            "songs_loaded": len(ok),
            "songs_skipped": len(skipped),
            "ldm_songs": len(ldm),
            "skip_reasons": _count(_reason_class(r["skip_reason"]) for r in skipped),
            "ldm_reject_reasons": _count(_reason_class(r["ldm_reject"]) for r in rejected),
            "dataset_facts": facts,
            "dropped": dict(sorted(dropped_total.items())),
        },
        "dropped_by_song": dropped_by_song,
        "splits": splits,
        "ldm_splits": {
            s: [n for n in names if n in ok and ok[n]["song"] is not None]
            for s, names in splits.items()
        },
        "skipped": [
            {"name": r["name"], "path": r["path"], "reason": r["skip_reason"]} for r in skipped
        ],
        "ldm_rejected": [{"name": r["name"], "reason": r["ldm_reject"]} for r in rejected],
        "shards": shards,
        "records": records,
        "token_stats": {
            "phrase_tokens": corpus_stats.percentiles(len(p) for p in track_phrases),
            "bar_tokens": corpus_stats.percentiles(len(b) for r in ok.values() for b in r["bars"]),
            "bars_per_song": corpus_stats.percentiles(r["n_bars"] for r in ok.values()),
            "bars_per_ldm_song": corpus_stats.percentiles(r["song"]["n_bars"] for r in ldm),
        },
        "length_histograms": lengths,
        "truncated_at_128": {
            kind: corpus_stats.truncated_count(all_lengths[kind], kind, 128)
            for kind in ("phrases", "bars")
        },
    }


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts
