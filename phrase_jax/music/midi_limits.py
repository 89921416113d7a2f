"""Bounded reading of a MIDI file: limits checked on the raw events before any expensive work.

`read_midi` parses the bytes with mido (linear in the file size, which is itself limited), scans
every event once, and rejects a file past a limit with `MidiReadError("<file>: <reason>")`, one
line naming the limit. Only then does pretty_midi build notes and its tick-to-seconds table, whose
size is proportional to the last tick: our limits on song length (quarter notes) and resolution
replace pretty_midi's "largest tick ... likely corrupt" heuristic, so valid high-resolution
(e.g. 10080 ticks per quarter, read at 480) and long files load.

What the scan repairs, it counts (`ScanReport.dropped`): tempo events of 0 microseconds per
quarter (they would divide by zero), note-ons that no note-off ends (pretty_midi drops them).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import re
import warnings
from fractions import Fraction

import mido
import pretty_midi
import pretty_midi.pretty_midi as pretty_midi_module

from phrase_jax.music import bar_grid

# Resolution the events are rescaled to when a file has more ticks per quarter: a multiple of
# the 12-per-quarter grid (grid positions stay exact), fine enough that rounding to it moves no
# note by more than half a tick (1/80 of a grid step), and small enough that pretty_midi's two
# per-tick tables (8 bytes per tick each) stay bounded: 20,000 quarters -> 2 x 77 MB, inside
# the default per-file memory limit (isolated_workers.JobLimits.memory_mb).
READ_RESOLUTION = 480


class MidiReadError(ValueError):
    """A MIDI file that cannot be read; the message is `<path>: <reason>` on one line."""


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """What one file may cost. Every limit is checked before pretty_midi builds anything."""

    max_file_mb: float = 16.0
    max_tracks: int = 1024
    max_notes: int = 300_000
    max_quarters: int = 20_000  # song length in quarter notes (5,000 bars of 4/4)
    max_bars: int = 10_000
    max_ticks_per_quarter: int = 32_767  # the largest the MIDI header can state

    def validate(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if not value > 0:
                raise ValueError(f"read limit {name} must be > 0, got {value}")


@dataclasses.dataclass
class ScanReport:
    notes: int = 0
    tracks: int = 0
    quarters: float = 0.0
    bars: int = 0
    ticks_per_quarter: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    warnings: int = 0  # library warnings captured while reading (they name no file)


def scan_midi(
    path: str | os.PathLike, limits: ReadLimits, *, retime: bool = True
) -> tuple[mido.MidiFile, ScanReport]:
    """The file's events within `limits` (MidiReadError past any), repaired as the module
    docstring says; `retime` also rescales high resolutions and clamps stray late events for
    pretty_midi's per-tick tables."""
    midi = _parse(path, _read_bytes(path, limits))
    return midi, _scan(path, midi, limits, retime)


def read_midi(
    path: str | os.PathLike, limits: ReadLimits = ReadLimits()
) -> tuple[pretty_midi.PrettyMIDI, ScanReport]:
    """The file as PrettyMIDI, and what the scan found; MidiReadError past any limit."""
    midi, report = scan_midi(path, limits)
    if report.notes == 0:  # nothing to read (pretty_midi fails on a header-only file)
        return pretty_midi.PrettyMIDI(resolution=midi.ticks_per_beat), report
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = _to_pretty_midi(path, midi)
    report.warnings = len(caught)
    return pm, report


def _read_bytes(path, limits: ReadLimits) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > limits.max_file_mb * 2**20:
            raise MidiReadError(
                f"{path}: file of {size / 2**20:.1f} MB is over the max_file_mb limit "
                f"({limits.max_file_mb:g})"
            )
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise MidiReadError(f"{path}: cannot open file ({exc.strerror or exc})") from exc
    if not data:
        raise MidiReadError(f"{path}: empty file, not a MIDI file")
    if not data.startswith(b"MThd") and b"MThd" not in data[:512]:  # RIFF MIDI wraps MThd
        raise MidiReadError(f"{path}: not a MIDI file (no MThd header)")
    return data


def _parse(path, data: bytes) -> mido.MidiFile:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mido.MidiFile(file=io.BytesIO(data))
    except EOFError as exc:
        raise MidiReadError(f"{path}: file ends early (truncated MIDI data)") from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - mido raises many unrelated types on bad bytes
        raise MidiReadError(f"{path}: not a readable MIDI file ({_in_midi_terms(exc)})") from exc


def _in_midi_terms(exc: Exception) -> str:
    """mido's parse errors, said in terms of the file."""
    text = " ".join(str(exc).split())
    if "data byte must be in range" in text:
        return "damaged event data: a data byte above 127"
    if "MTrk" in text:
        return "damaged track: no MTrk header where a track should start"
    if match := re.search(r"is not a valid `(\w+)`", text):
        return f"invalid {match.group(1)} in a meta event"
    if "MThd" in text:
        return "damaged file header"
    if "running status" in text or "wrong number of bytes" in text:
        return "damaged event data: an event with missing or extra bytes"
    return text[:120] or type(exc).__name__


def _scan(path, midi: mido.MidiFile, limits: ReadLimits, retime: bool) -> ScanReport:
    report = ScanReport(tracks=len(midi.tracks), ticks_per_quarter=midi.ticks_per_beat)
    tpq = midi.ticks_per_beat
    if not 0 < tpq <= limits.max_ticks_per_quarter:
        raise MidiReadError(
            f"{path}: {tpq} ticks per quarter is outside 1..{limits.max_ticks_per_quarter} "
            "(SMPTE timing is not supported)"
        )
    if report.tracks > limits.max_tracks:
        raise MidiReadError(
            f"{path}: {report.tracks} tracks, over the max_tracks limit ({limits.max_tracks})"
        )
    last_tick, last_event_tick = 0, 0
    changes = []
    for track in midi.tracks:
        tick = 0
        open_notes: collections.Counter = collections.Counter()
        kept = []
        for message in track:
            tick += message.time
            if message.type == "set_tempo" and message.tempo <= 0:
                report.dropped["events: tempo of 0 microseconds per quarter"] += 1
                continue
            kept.append(message)
            if message.type == "note_on" and message.velocity > 0:
                report.notes += 1
                open_notes[(message.channel, message.note)] += 1
                last_tick = max(last_tick, tick)
            elif message.type in ("note_off", "note_on"):
                key = (message.channel, message.note)
                if open_notes[key]:
                    last_tick = max(last_tick, tick)
                open_notes[key] = 0  # pretty_midi: one note-off ends every open note of a key
            elif message.type == "time_signature":
                changes.append((Fraction(tick, tpq), (message.numerator, message.denominator)))
        last_event_tick = max(last_event_tick, tick)
        if len(kept) != len(track):
            track[:] = _retimed(track, kept)
        report.dropped["notes: note-on without note-off"] += sum(open_notes.values())
        if report.notes > limits.max_notes:
            raise MidiReadError(f"{path}: more than {limits.max_notes} notes (the max_notes limit)")
    report.dropped = +report.dropped  # drop zero counts
    report.quarters = last_tick / tpq
    if report.quarters > limits.max_quarters:
        raise MidiReadError(
            f"{path}: last note at quarter note {report.quarters:.0f} (tick {last_tick}), over "
            f"the max_quarters limit ({limits.max_quarters})"
        )
    report.bars = bar_grid.count_bars(changes, report.quarters, stop_after=limits.max_bars)
    if report.bars > limits.max_bars:
        raise MidiReadError(
            f"{path}: its time signatures make more than {limits.max_bars} bars (the max_bars "
            "limit)"
        )
    # Events long after the last note (a stray meta event at tick 10^9) would only grow
    # pretty_midi's per-tick table: they move to one quarter after the last note.
    cap = last_tick + tpq
    if retime and (tpq > READ_RESOLUTION or last_event_tick > cap):
        _retime(midi, min(tpq, READ_RESOLUTION), cap)
    return report


def _retimed(track: list, kept: list) -> list:
    """`kept` (a subset of `track`'s messages) with delta times that keep absolute ticks."""
    absolute, tick = {}, 0
    for message in track:
        tick += message.time
        absolute[id(message)] = tick
    out, previous = [], 0
    for message in kept:
        out.append(message.copy(time=absolute[id(message)] - previous))
        previous = absolute[id(message)]
    return out


def _retime(midi: mido.MidiFile, resolution: int, cap: int) -> None:
    """Every event at absolute tick min(tick, cap), rescaled to `resolution` ticks per quarter."""
    factor = resolution / midi.ticks_per_beat
    for index, track in enumerate(midi.tracks):
        tick, previous, out = 0, 0, []
        for message in track:
            tick += message.time
            scaled = round(min(tick, cap) * factor)
            out.append(message.copy(time=scaled - previous))
            previous = scaled
        midi.tracks[index] = mido.MidiTrack(out)
    midi.ticks_per_beat = resolution


def _to_pretty_midi(path, midi: mido.MidiFile) -> pretty_midi.PrettyMIDI:
    # Our limits bound the last tick; pretty_midi's own heuristic would reject valid long files.
    saved = pretty_midi_module.MAX_TICK
    pretty_midi_module.MAX_TICK = float("inf")
    try:
        return pretty_midi.PrettyMIDI(mido_object=midi)
    except MemoryError:
        raise  # a memory limit, not a property of the file
    except Exception as exc:  # noqa: BLE001 - a file that passed the scan but still fails
        raise MidiReadError(f"{path}: not a readable MIDI file ({_in_midi_terms(exc)})") from exc
    finally:
        pretty_midi_module.MAX_TICK = saved
