"""MIDI -> tokens -> ArrayRecord shards + manifest.json, in parallel over songs, resumable.

The pipeline's `prepare` stage (phrase_jax/stages/prepare.py, experiments/prepare.py) calls
`prepare()`; the command line here is a short alias for it:

    python -m data_pipelines.prepare --dataset pop909 --out_dir data/pop909 [--pop909_dir D]
    python -m data_pipelines.prepare --dataset chorales --out_dir data/chorales
    python -m data_pipelines.prepare --dataset midi --midi_dir D --out_dir data/mymidi

Each song is loaded, key-normalised and tokenised in an isolated worker process
(`isolated_workers`: a wall-time and memory limit per file, a crashed or stuck worker is
replaced) within the read limits of `phrase_jax.music.midi_limits`; its result is cached
under `out_dir/.cache/<settings hash>/` (temp file + rename), so an interrupted run resumes
where it stopped and a run with unchanged inputs and settings exits at once. Shards follow
docs/design.md: `{kind}-{split}-{i:05d}-of-{n:05d}.array_record` with kind in phrases, bars,
songs. A corrupt, empty, unreadable or oversized file is skipped with a one-line warning and
recorded in the manifest; it never stops the run. Notes left out are counted by reason per song
(`dropped_by_song`) and in total (`counts.dropped`). When no song loads, `prepare` raises
`errors.UserError` after writing the manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import resource
import sys
import time

import numpy as np

from data_pipelines import corpus_stats, corpus_writer, datasets, isolated_workers
from phrase_jax import errors
from phrase_jax.music import keys, layout, tokenizer, vocab

PREPARE_VERSION = corpus_writer.FORMAT_VERSION


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Settings that change the shards but not the per-song results (cache is reused)."""

    seed: int = 42
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    records_per_shard: int = 100_000


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _write_json_atomic(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _cache_file(cache_dir: pathlib.Path, name: str) -> pathlib.Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-80:]
    return cache_dir / f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:10]}.json"


def _file_identity(path: str) -> list:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None, None]


def split_songs(names: list[str], settings: OutputSettings) -> dict[str, list[str]]:
    """Deterministic split by song: a seeded permutation of the sorted names.

    Computed over every listed song (also the ones that fail to load), so one corrupt file
    never moves other songs between splits. Small sets still get one valid and one test song.
    """
    names = sorted(names)
    n = len(names)
    order = np.random.default_rng(settings.seed).permutation(n)

    def size(fraction):
        return max(1, round(fraction * n)) if n >= 3 and fraction > 0 else 0

    n_valid, n_test = size(settings.valid_fraction), size(settings.test_fraction)
    valid = sorted(names[i] for i in order[:n_valid])
    test = sorted(names[i] for i in order[n_valid : n_valid + n_test])
    train = sorted(names[i] for i in order[n_valid + n_test :])
    return {"train": train, "valid": valid, "test": test}


def process_song(job: tuple) -> dict:
    """Loads and tokenises one song; writes its cached result; returns a small summary.

    Runs in an isolated worker process (`isolated_workers`): a MIDI past a read limit, or any
    other unusable input, becomes a recorded skip whose reason speaks of the file.
    """
    dataset_name, source, settings, work_dir, cache_path = job
    result = {"name": source.name, "path": source.path, "source_id": _file_identity(source.path)}
    try:
        result.update(
            _tokenize_song(datasets.get_dataset(dataset_name), source, settings, work_dir)
        )
    except MemoryError:
        raise  # the worker reports it as over its memory_mb limit (not cached: retried)
    except (ValueError, OSError) as err:  # MidiReadError, annotation files, limits
        result.update(ok=False, skip_reason=_reason(err, source.path))
    except Exception as err:  # noqa: BLE001 - a bug, still recorded per file, never fatal
        result.update(ok=False, skip_reason=f"unexpected error: {_reason(err, source.path)}")
    _write_json_atomic(pathlib.Path(cache_path), result)
    return {k: result.get(k) for k in SUMMARY_KEYS}


SUMMARY_KEYS = ("name", "path", "ok", "skip_reason", "ldm_reject", "dropped")


def _reason(err: Exception, path: str) -> str:
    """One line without the file's path (the manifest lists it next to the reason)."""
    message = " ".join(str(err).split()) or type(err).__name__
    if message.startswith(f"{path}: "):
        message = message[len(path) + 2 :]
    return message.replace(path, "<file>")[:300]


def _tokenize_song(spec, source, settings: datasets.DatasetSettings, work_dir: str) -> dict:
    loaded = spec.load(source, settings, work_dir)
    song = loaded.song
    dropped = dict(loaded.dropped)  # reasons name their unit: "notes: ...", "events: ..."
    if not song.bars:
        return {"ok": False, "skip_reason": "no notes", "dropped": dropped}
    shift = 0
    if settings.normalize_key:
        song, shift = keys.normalize_key(song)
    phrases, bars = [], []
    for bar in song.bars:
        phrases.extend(tokenizer.bar_phrases(bar, with_velocity=settings.with_velocity))
        # The VAE also learns latents for the LDM's padding phrases (SPEC 1.7).
        phrases.append(list(layout.INST_PHRASE))
        phrases.append(list(layout.BAR_PHRASE))
        bars.append(tokenizer.bar_tokens(bar, with_velocity=settings.with_velocity))
    phrases.append(list(layout.SEP_PHRASE))
    reject = loaded.ldm_reject
    if reject is None and len(song.bars) > settings.max_bars:
        reject = f"{len(song.bars)} bars > max_bars {settings.max_bars}"
    song_record = None
    if reject is None:
        slots = layout.song_slots(
            song, settings.slots_per_bar, settings.with_velocity, settings.track_choice
        )
        song_record = {
            "name": song.name,
            "n_bars": slots.n_bars,
            "sections": [list(s) for s in song.sections] if song.sections else None,
            "slots": [list(map(int, s)) for s in slots.slots],
            "dropped_tracks": int(slots.dropped_tracks),
        }
        if slots.dropped_tracks:
            dropped["track phrases: beyond the bar's track slots (LDM layout only)"] = int(
                slots.dropped_tracks
            )
    return {
        "ok": True,
        "n_bars": len(song.bars),
        "key_shift": int(shift),
        "phrases": [list(map(int, p)) for p in phrases],
        "bars": [list(map(int, b)) for b in bars],
        "ldm_reject": reject,
        "song": song_record,
        "info": loaded.info,
        "dropped": dropped,
    }


def _run_jobs(jobs: list[tuple], workers: int, limits: isolated_workers.JobLimits, log) -> dict:
    """Runs `process_song` over `jobs` in isolated workers; returns the summaries of jobs whose
    worker failed (timeout, memory, crash), which have no cached result, and the peak memory."""
    started, done, failed, peak_mb = time.time(), 0, {}, 0.0
    for outcome in isolated_workers.run_isolated(
        process_song, jobs, workers=workers, limits=limits
    ):
        done += 1
        peak_mb = max(peak_mb, outcome.peak_rss_mb)
        summary = outcome.value
        if outcome.error is not None:
            source = jobs[outcome.index][1]
            summary = {
                "name": source.name,
                "path": source.path,
                "ok": False,
                "skip_reason": outcome.error,
                "source_id": _file_identity(source.path),
            }
            failed[source.name] = summary
        if not summary["ok"]:
            log(f"warning: skipped {summary['path']}: {summary['skip_reason']}")
        if done % 200 == 0 or done == len(jobs):
            log(f"[prepare] {done}/{len(jobs)} songs ({time.time() - started:.1f} s)")
    return {"failed": failed, "worker_peak_mb": round(peak_mb, 1)}


def prepare(
    dataset: str,
    out_dir: str | os.PathLike,
    *,
    input_dir: str | None = None,
    settings: datasets.DatasetSettings | None = None,
    output: OutputSettings | None = None,
    workers: int = 0,
    limit: int | None = None,
    songs: list[str] | None = None,
    job_limits: isolated_workers.JobLimits | None = None,
    log=print,
) -> dict:
    """Prepares `dataset` into `out_dir`; returns the manifest. `workers` 0 = all cores."""
    started = time.time()
    spec = datasets.get_dataset(dataset)
    settings = settings or datasets.DatasetSettings(slots_per_bar=spec.default_slots_per_bar)
    settings.validate()
    output = output or OutputSettings()
    out = pathlib.Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sources = spec.list_sources(input_dir, str(out))
    if songs:
        wanted = set(songs)
        sources = [s for s in sources if s.name in wanted]
        if missing := wanted - {s.name for s in sources}:
            raise ValueError(f"--songs names not found in the dataset: {sorted(missing)[:5]}")
    if limit:
        sources = sources[:limit]
    song_key = _digest(
        [PREPARE_VERSION, dataset, vocab.Vocab().sha256, dataclasses.asdict(settings)]
    )
    fingerprint = _digest(
        [song_key, dataclasses.asdict(output), [(s.name, _file_identity(s.path)) for s in sources]]
    )
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        files = [
            f for by_split in old.get("shards", {}).values() for fs in by_split.values() for f in fs
        ]
        if old.get("fingerprint") == fingerprint and all((out / f).exists() for f in files):
            log(f"[prepare] {out}: up to date ({len(sources)} songs, settings unchanged)")
            _require_loaded(old, manifest_path)
            return old

    cache_dir = out / ".cache" / song_key[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for source in sources:
        path = _cache_file(cache_dir, source.name)
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("source_id") == _file_identity(source.path):
                continue
        jobs.append((dataset, source, settings, str(out), str(path)))
    job_limits = job_limits or isolated_workers.JobLimits()
    job_limits.validate()
    workers = min(workers or os.cpu_count() or 1, job_limits.max_workers())
    log(
        f"[prepare] {dataset}: {len(sources)} songs, {len(sources) - len(jobs)} cached, "
        f"{len(jobs)} to process with {min(workers, max(len(jobs), 1))} workers"
    )
    run = _run_jobs(jobs, workers, job_limits, log)

    def load(name: str) -> dict:
        return json.loads(_cache_file(cache_dir, name).read_text())

    # Small summaries only: the token lists are read again, one song at a time, while the shards
    # are written. A job whose worker failed has no cache file: the next run retries it.
    results = {s.name: run["failed"].get(s.name) for s in sources}
    for name, failed in results.items():
        results[name] = failed or corpus_writer.summarize(load(name))
    splits = split_songs([s.name for s in sources], output)
    manifest = corpus_writer.write_corpus(out, dataset, results, splits, settings, output, load)
    manifest.update(
        fingerprint=fingerprint,
        seconds=round(time.time() - started, 2),
        peak_memory_mb={"prepare": round(_own_peak_mb(), 1), "worker": run["worker_peak_mb"]},
        job_limits=dataclasses.asdict(job_limits),
    )
    vocab.Vocab().to_json(out / "vocab.json")
    _write_json_atomic(manifest_path, manifest)  # last: its presence marks a complete run
    corpus_stats.print_report(manifest, log)
    _require_loaded(manifest, manifest_path)
    return manifest


def _require_loaded(manifest: dict, manifest_path: pathlib.Path) -> None:
    counts = manifest["counts"]
    if counts["songs_loaded"] == 0:
        raise errors.UserError(
            f"prepare {manifest['dataset']}: none of the {counts['songs_listed']} songs loaded; "
            f"the reasons are listed in {manifest_path}"
        )


def _own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(datasets.DATASETS))
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--pop909_dir", default=os.environ.get("POP909_DIR"))
    parser.add_argument("--midi_dir")
    parser.add_argument("--workers", type=int, default=0, help="0 = all cores")
    parser.add_argument("--limit", type=int, help="only the first N songs (sorted by name)")
    parser.add_argument("--songs", help="comma-separated song names to prepare")
    parser.add_argument("--slots_per_bar", type=int, help="default: the dataset's")
    parser.add_argument("--quantize_step", type=int, default=3)
    parser.add_argument("--no_key_normalization", action="store_true")
    parser.add_argument("--keep_silent_bars", action="store_true")
    parser.add_argument("--with_velocity", action="store_true")
    parser.add_argument("--max_bars", type=int, default=128)
    parser.add_argument("--track_choice", default="keep_drums", choices=layout.TRACK_CHOICES)
    parser.add_argument("--reading", default="default", choices=datasets.READINGS)
    parser.add_argument("--section_rule", default="trim", choices=("exact", "trim", "none"))
    parser.add_argument("--section_slack", type=int, default=6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--valid_fraction", type=float, default=0.05)
    parser.add_argument("--test_fraction", type=float, default=0.05)
    parser.add_argument("--records_per_shard", type=int, default=100_000)
    args = parser.parse_args(argv)
    spec = datasets.get_dataset(args.dataset)
    input_dir = {"pop909": args.pop909_dir, "midi": args.midi_dir}.get(args.dataset)
    settings = datasets.DatasetSettings(
        quantize_step=args.quantize_step,
        normalize_key=not args.no_key_normalization,
        trim_silent_bars=not args.keep_silent_bars,
        slots_per_bar=args.slots_per_bar or spec.default_slots_per_bar,
        with_velocity=args.with_velocity,
        max_bars=args.max_bars,
        track_choice=args.track_choice,
        reading=args.reading,
        section_rule=args.section_rule,
        section_slack=args.section_slack,
    )
    output = OutputSettings(
        args.seed, args.valid_fraction, args.test_fraction, args.records_per_shard
    )
    songs = [s for s in (args.songs or "").split(",") if s]
    try:
        return prepare(
            args.dataset,
            args.out_dir,
            input_dir=input_dir,
            settings=settings,
            output=output,
            workers=args.workers,
            limit=args.limit,
            songs=songs,
        )
    except (FileNotFoundError, ValueError, errors.UserError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
