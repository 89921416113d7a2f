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
from collections.abc import Callable

import numpy as np
from array_record.python import array_record_module

from data_pipelines import corpus_stats
from phrase_jax.music import vocab

FORMAT_VERSION = 2  # bump when records or per-song results change (invalidates caches)
# 2: bounded reading, meter filtering, chorale pickups, dropped notes by reason, track_choice
KINDS = ("phrases", "bars", "songs")


class _ShardStream:
    """Writes `total` records of one kind and split into shards of `per_shard`, one at a time."""

    def __init__(self, out_dir: pathlib.Path, kind: str, split: str, total: int, per_shard: int):
        self.out_dir, self.kind, self.split, self.per_shard = out_dir, kind, split, per_shard
        self.n = max(1, math.ceil(total / per_shard))
        self.names: list[str] = []
        self.writer, self.in_shard = None, 0
        self._open()

    def _open(self) -> None:
        name = f"{self.kind}-{self.split}-{len(self.names):05d}-of-{self.n:05d}.array_record"
        self.names.append(name)
        self.writer = array_record_module.ArrayRecordWriter(
            str(self.out_dir / f".{name}.tmp"), "group_size:1"
        )
        self.in_shard = 0

    def _close(self) -> None:
        self.writer.close()
        name = self.names[-1]
        os.replace(self.out_dir / f".{name}.tmp", self.out_dir / name)

    def write(self, record: bytes) -> None:
        if self.in_shard == self.per_shard:
            self._close()
            self._open()
        self.writer.write(record)
        self.in_shard += 1

    def finish(self) -> list[str]:
        self._close()
        while len(self.names) < self.n:  # only when a count was wrong; keeps names consistent
            self._open()
            self._close()
        return self.names


def summarize(result: dict) -> dict:
    """A per-song result without its token lists (what the manifest needs), so that `prepare`
    holds one small dict per song however large the corpus."""
    summary = {k: v for k, v in result.items() if k not in ("phrases", "bars", "song")}
    if result.get("ok"):
        song = result["song"]
        summary.update(
            n_phrases=len(result["phrases"]),
            n_bar_records=len(result["bars"]),
            phrase_lengths=corpus_stats.histogram(len(p) for p in result["phrases"]),
            bar_lengths=corpus_stats.histogram(len(b) for b in result["bars"]),
            song=None
            if song is None
            else {"n_bars": song["n_bars"], "dropped_tracks": song["dropped_tracks"]},
        )
    return summary


def _merge(histograms) -> dict[str, int]:
    total: dict[int, int] = {}
    for histogram in histograms:
        for length, n in histogram.items():
            total[int(length)] = total.get(int(length), 0) + n
    return {str(k): total[k] for k in sorted(total)}


def _expand(histogram: dict[str, int], min_length: int = 0) -> np.ndarray:
    pairs = [(int(k), n) for k, n in histogram.items() if int(k) >= min_length]
    if not pairs:
        return np.zeros(0, np.int64)
    lengths, counts = zip(*pairs, strict=True)
    return np.repeat(np.asarray(lengths, np.int64), counts)


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
    load: Callable[[str], dict],
) -> dict:
    """Writes every shard of `out` and returns the manifest (without fingerprint and timing,
    which `prepare` adds). `results` are per-song summaries (`summarize`); `load(name)` reads
    one song's full result (`prepare.process_song`), one song at a time, so memory does not grow
    with the corpus."""
    ok = {n: r for n, r in results.items() if r["ok"]}
    shards, records, lengths = {k: {} for k in KINDS}, {k: {} for k in KINDS}, {}
    for split, names in splits.items():
        kept = [n for n in names if n in ok]
        totals = {
            "phrases": sum(ok[n]["n_phrases"] for n in kept),
            "bars": sum(ok[n]["n_bar_records"] for n in kept),
            "songs": sum(ok[n]["song"] is not None for n in kept),
        }
        streams = {
            kind: _ShardStream(out, kind, split, totals[kind], output.records_per_shard)
            for kind in KINDS
        }
        for name in kept:
            full = load(name)
            for phrase in full["phrases"]:
                streams["phrases"].write(np.asarray(phrase, np.int16).tobytes())
            for bar in full["bars"]:
                streams["bars"].write(np.asarray(bar, np.int16).tobytes())
            if full["song"] is not None:
                streams["songs"].write(json.dumps(full["song"] | {"split": split}).encode())
        for kind, stream in streams.items():
            shards[kind][split] = stream.finish()
            records[kind][split] = totals[kind]
        lengths[split] = {
            "phrases": _merge(ok[n]["phrase_lengths"] for n in kept),
            "bars": _merge(ok[n]["bar_lengths"] for n in kept),
        }
    written = {f for by_split in shards.values() for fs in by_split.values() for f in fs}
    for stale in out.glob("*.array_record"):  # shards of an earlier run with other settings
        if stale.name not in written:
            stale.unlink()

    skipped = [r for r in results.values() if not r["ok"]]
    rejected = [r for r in ok.values() if r["song"] is None]
    ldm = [r for r in ok.values() if r["song"] is not None]
    # Track phrases have at least 3 tokens; the one-token phrases are [INST], b-1 and [SEP].
    all_phrases = _merge(r["phrase_lengths"] for r in ok.values())
    all_bars = _merge(r["bar_lengths"] for r in ok.values())
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
            "phrase_tokens": corpus_stats.percentiles(_expand(all_phrases, min_length=2)),
            "bar_tokens": corpus_stats.percentiles(_expand(all_bars)),
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
