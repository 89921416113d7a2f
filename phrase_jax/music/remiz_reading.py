"""MIDI -> `Song` exactly as the reference tokenizer (REMI-z 0.7.4, `MultiTrack.from_midi`)
reads it, so that songs encoded for the released models get the tokens those were trained on.

Where this differs from `midi_io.midi_to_song` (the default reading), and why the default keeps
its way:
- note pairing: one note-off ends the *earliest* open note of its channel and pitch (first in,
  first out, as miditoolkit pairs them); pretty_midi's one note-off ends *every* open note of the
  pitch, which shortens overlapping same-pitch notes (REMI-z `p-59 d-24` vs our `p-59 d-6`);
- overlaps and duplicates are kept as they are (the default cuts a note at the next onset of its
  pitch and keeps one note per onset and pitch, because MIDI cannot sound both);
- positions are `round(tick * 12 / ticks_per_quarter)` with Python's half-to-even rounding, a
  note-off at its note-on's tick is a note of one step, durations are clamped to [1, 127], and
  nothing is snapped to 16th notes (the default for POP909 snaps to 16th notes, as the
  reference's POP909 data did);
- a time signature takes effect at the next barline, and is reduced (`n/d` longer than two whole
  notes is divided by its smallest factor) as REMI-z does; drums are left out (REMI-z's
  `to_remiz_str` drops them; the default keeps them as `i-128`).
The file's own ticks give the grid: tempo does not matter.

`load_song_remiz(path)` is the entry for a MIDI file (the encode side of editing and of latents
with the released weights); `midi_to_song_remiz` reads an already parsed `mido.MidiFile`.
"""

from __future__ import annotations

import bisect
import collections
import os
from collections.abc import Mapping

import mido

from phrase_jax.music import midi_limits, vocab
from phrase_jax.music.events import Bar, Note, Song

GRID = vocab.POSITIONS_PER_QUARTER
DEFAULT_TEMPO = 120.0  # REMI-z's tempo when the file states none


def _reduce(numerator: int, denominator: int) -> tuple[int, int]:
    """REMI-z's `MidiEncoder.reduce_time_signature`."""
    while denominator > 64 and denominator % 2 == 0 and numerator % 2 == 0:
        numerator, denominator = numerator // 2, denominator // 2
    while numerator > 2 * denominator:
        for factor in range(2, numerator + 1):
            if numerator % factor == 0:
                numerator //= factor
                break
    return numerator, denominator


def _program_of(program: int, is_drum: bool, track_name: str) -> int:
    """REMI-z's track id: 128 for drums (channel 10, or '128' in the track name), a program
    named by 'instrument_N' in the track name, else the MIDI program."""
    if "128" in track_name:
        is_drum = True
    program = vocab.DRUM_PROGRAM if is_drum else program
    if "instrument_" in track_name.lower():
        suffix = track_name.split("_")[-1]
        program = int(suffix) if suffix.isdigit() else program
    return program


def read_notes(
    midi: mido.MidiFile, track_programs: Mapping[str, int] | None = None
) -> list[tuple[int, int, int, int, int]]:
    """(program, start tick, end tick, pitch, velocity) of every note, paired first in, first out
    per track, channel and pitch; note-ons that no note-off ends are left out (as miditoolkit).
    `track_programs` maps track names to programs (POP909: MELODY 13, BRIDGE 25, PIANO 0)."""
    notes = []
    for track in midi.tracks:
        name, tick = "", 0
        programs = [0] * 16
        open_notes: dict[tuple[int, int], collections.deque] = collections.defaultdict(
            collections.deque
        )
        closed = []  # (channel, program at the note-off, start, end, pitch, velocity)
        for message in track:
            tick += message.time
            if message.type == "track_name":
                name = message.name
            elif message.type == "program_change":
                programs[message.channel] = message.program
            elif message.type == "note_on" and message.velocity > 0:
                open_notes[(message.channel, message.note)].append((tick, message.velocity))
            elif message.type in ("note_off", "note_on"):
                waiting = open_notes.get((message.channel, message.note))
                if waiting:
                    start, velocity = waiting.popleft()
                    program = programs[message.channel]
                    closed.append((message.channel, program, start, tick, message.note, velocity))
        for channel, program, start, end, pitch, velocity in closed:
            if track_programs is not None and name.strip() in track_programs and channel != 9:
                program = int(track_programs[name.strip()])
            else:
                program = _program_of(program, channel == 9, name)
            notes.append((program, start, end, pitch, velocity))
    return notes


def _meta_changes(midi: mido.MidiFile, kind: str) -> list[tuple[int, mido.MetaMessage]]:
    changes = []
    for track in midi.tracks:
        tick = 0
        for message in track:
            tick += message.time
            if message.type == kind:
                changes.append((tick, message))
    changes.sort(key=lambda change: change[0])  # stable: file order at one tick
    return changes


def midi_to_song_remiz(
    midi: mido.MidiFile,
    *,
    name: str = "",
    include_drums: bool = False,
    track_programs: Mapping[str, int] | None = None,
    dropped: collections.Counter | None = None,
) -> Song:
    """The song REMI-z reads from `midi` (see the module docstring); `dropped` counts the notes
    left out by reason. ValueError for a time signature whose bar is shorter than one step."""
    tpq = midi.ticks_per_beat

    def position(tick: int) -> int:
        return round(tick * GRID / tpq)

    notes = read_notes(midi, track_programs)
    if not include_drums:
        kept = [n for n in notes if n[0] != vocab.DRUM_PROGRAM]
        if dropped is not None and len(kept) < len(notes):
            dropped["notes: drums (the REMI-z reading leaves them out)"] += len(notes) - len(kept)
        notes = kept
    if not notes:
        return Song(bars=[], name=name)
    end = max(position(start) for _, start, _, _, _ in notes) + 1

    signatures: dict[int, tuple[int, int]] = {}
    for tick, message in _meta_changes(midi, "time_signature"):
        if (pos := position(tick)) < end:
            signatures[pos] = _reduce(message.numerator, message.denominator)
    signatures.setdefault(0, (4, 4))
    tempi: dict[int, float] = {}
    for tick, message in _meta_changes(midi, "set_tempo"):
        if (pos := position(tick)) < end and message.tempo > 0:
            tempi[pos] = mido.tempo2bpm(message.tempo)
    tempi.setdefault(0, DEFAULT_TEMPO)

    # Bars: a signature seen anywhere before a barline sets the length of the bar it opens.
    change_positions = sorted(signatures)
    bar_starts, bar_meters, cursor, meter, next_change = [], [], 0, (4, 4), 0
    while cursor < end:
        while next_change < len(change_positions) and change_positions[next_change] <= cursor:
            meter = signatures[change_positions[next_change]]
            next_change += 1
        length = meter[0] * 4 * GRID // meter[1]
        if length < 1:
            raise ValueError(f"time signature {meter[0]}/{meter[1]} is shorter than one step")
        bar_starts.append(cursor)
        bar_meters.append(meter)
        cursor += length

    tempo_positions = sorted(tempi)
    bars = []
    for start, meter in zip(bar_starts, bar_meters, strict=True):
        current = max((p for p in tempo_positions if p <= start), default=0)
        bars.append(Bar(tracks={}, time_signature=meter, tempo=round(tempi[current], 2)))
    for program, start, stop, pitch, velocity in notes:
        onset = position(start)
        index = _bar_index(bar_starts, onset)
        duration = min(max(position(stop) - onset, 1), vocab.MAX_DURATION)
        note = Note(onset - bar_starts[index], pitch, duration, velocity)
        bars[index].tracks.setdefault(program, []).append(note)
    for bar in bars:
        for track_notes in bar.tracks.values():
            track_notes.sort(key=lambda n: (n.onset, -n.pitch, -n.duration, -n.velocity))
    return Song(bars=bars, name=name)


def load_song_remiz(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    limits: midi_limits.ReadLimits | None = None,
    include_drums: bool = False,
    track_programs: Mapping[str, int] | None = None,
    dropped: collections.Counter | None = None,
) -> Song:
    """A MIDI file read token for token as REMI-z reads it (the module docstring), within
    `limits`: the reading for songs encoded for the released models; `name` defaults to the
    file's stem. A file that cannot be read
    or is past a limit raises `midi_limits.MidiReadError("<path>: <reason>")`; `dropped` counts
    what the scan repaired and the notes left out, by reason."""
    midi, report = midi_limits.scan_midi(path, limits or midi_limits.ReadLimits(), retime=False)
    if dropped is not None:
        dropped.update(report.dropped)
    try:
        return midi_to_song_remiz(
            midi,
            name=os.path.splitext(os.path.basename(path))[0] if name is None else name,
            include_drums=include_drums,
            track_programs=track_programs,
            dropped=dropped,
        )
    except ValueError as err:
        raise midi_limits.MidiReadError(f"{path}: {err}") from None


def _bar_index(bar_starts: list[int], onset: int) -> int:
    return bisect.bisect_right(bar_starts, onset) - 1
