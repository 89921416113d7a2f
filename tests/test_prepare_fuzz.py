"""`prepare` on a seeded corpus of malformed and extreme MIDI (tests/midi_fuzz.py): no
traceback, no hang, every rejection a one-line reason about the file, valid extremes kept."""

import time

import mido
from midi_fuzz import write_corpus

from data_pipelines import isolated_workers, prepare

# Library internals that must never reach a user (issue 11).
INTERNALS = (
    "Error", "Traceback", "max() arg", "division", "unexpected", "likely corrupt", "`",
    "last_status",
)  # fmt: skip


def test_fuzz_corpus_through_prepare(tmp_path):
    expect = write_corpus(tmp_path / "fuzz", seed=0)
    lines = []
    started = time.time()
    manifest = prepare.prepare(
        "midi",
        tmp_path / "out",
        input_dir=str(tmp_path / "fuzz"),
        workers=2,
        job_limits=isolated_workers.JobLimits(timeout_s=30),
        log=lines.append,
    )
    seconds = time.time() - started
    skipped = {s["name"]: s["reason"] for s in manifest["skipped"]}
    loaded = set(expect) - set(skipped)
    assert manifest["counts"]["songs_listed"] == len(expect)
    for name, reason in skipped.items():
        assert reason and "\n" not in reason and not any(word in reason for word in INTERNALS), (
            name,
            reason,
        )
        assert "timeout_s" not in reason and "crashed" not in reason, (name, reason)
    assert {n for n, e in expect.items() if e == "keep"} <= loaded, skipped
    assert {n for n, e in expect.items() if e == "reject"} <= set(skipped)
    assert all("\n" not in line for line in lines)
    assert "max_quarters" in skipped["00_far_note_tpq1.mid"]
    assert "max_tracks" in skipped["00_tracks_1100.mid"]
    dropped = manifest["counts"]["dropped"]
    assert dropped["events: tempo of 0 microseconds per quarter"] == 1
    assert manifest["dropped_by_song"]["00_odd_durations.mid"]
    assert manifest["peak_memory_mb"]["worker"] < 1024
    assert seconds < 60


def test_isolated_workers_bound_time_and_memory():
    """A stuck job and a job past its memory limit cost only themselves."""
    limits = isolated_workers.JobLimits(timeout_s=1.0, memory_mb=256)
    outcomes = list(
        isolated_workers.run_isolated(time.sleep, [0.01, 30, 0.01], workers=2, limits=limits)
    )
    errors = {o.index: o.error for o in outcomes}
    assert errors == {0: None, 1: "over the timeout_s limit (1 s)", 2: None}
    outcomes = list(
        isolated_workers.run_isolated(bytearray, [16, 2**31, 16], workers=1, limits=limits)
    )
    errors = {o.index: o.error for o in outcomes}
    assert errors == {0: None, 1: "over the memory_mb limit (256 MB)", 2: None}
    assert outcomes[-1].value == bytearray(16)


def test_file_past_the_memory_limit_costs_only_itself(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    for name, length in (("long.mid", 480 * 19_000), ("short.mid", 480)):
        track = mido.MidiTrack(
            [
                mido.Message("note_on", note=60, velocity=80, time=0),
                mido.Message("note_off", note=60, time=length),
            ]
        )
        mido.MidiFile(tracks=[track], ticks_per_beat=480).save(str(folder / name))
    manifest = prepare.prepare(
        "midi",
        tmp_path / "out",
        input_dir=str(folder),
        workers=1,
        job_limits=isolated_workers.JobLimits(memory_mb=100),
        log=lambda _: None,
    )
    assert manifest["skipped"] == [
        {
            "name": "long.mid",
            "path": str(folder / "long.mid"),
            "reason": "over the memory_mb limit (100 MB)",
        }
    ]
    assert manifest["counts"]["songs_loaded"] == 1
