"""MIDI <-> `Song` on the 12-per-quarter grid (SPEC 1.2, 1.4).

Reading: every note start/end becomes a grid position, either from the file's own ticks (so tempo
changes never move the grid) or from beat annotations (POP909 `beat_midi.txt`). A note belongs to
the bar of its onset and keeps its full duration across barlines. Bars run from the song origin
to the bar of the last onset; trailing silence is not kept.

Writing: bars are laid end to end with their time signatures and tempi, so reading the written
file back (without annotations) gives the same bars and notes.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction

import numpy as np
import pretty_midi

from phrase_jax.music import bar_grid, midi_limits, vocab
from phrase_jax.music.events import Bar, Note, Song

GRID = vocab.POSITIONS_PER_QUARTER
DEFAULT_TEMPO = 90.0


MidiReadError = midi_limits.MidiReadError


def load_midi(
    path: str | os.PathLike, limits: midi_limits.ReadLimits | None = None
) -> pretty_midi.PrettyMIDI:
    """Read a MIDI file within `limits`; any failure (missing, empty, truncated, not MIDI, past
    a limit) raises `MidiReadError("<path>: <reason>")`. `midi_limits.read_midi` also returns
    what the reading repaired."""
    return midi_limits.read_midi(path, limits or midi_limits.ReadLimits())[0]


class _TickClock:
    """Grid positions from the file's ticks; bars from its time-signature events."""

    def __init__(self, pm: pretty_midi.PrettyMIDI):
        self._pm = pm
        self._resolution = pm.resolution
        times, tempi = pm.get_tempo_changes()
        self._tempo_times = np.asarray(times, dtype=np.float64)
        self._tempo_ticks = np.array([pm.time_to_tick(t) for t in times], dtype=np.float64)
        self._tempo_positions = [Fraction(int(t), pm.resolution) for t in self._tempo_ticks]
        self._tempi = [float(bpm) for bpm in tempi]

    def to_grid(self, seconds: np.ndarray) -> np.ndarray:
        # pretty_midi.time_to_tick, vectorised: seconds -> nearest tick through the tempo map.
        seconds = np.asarray(seconds, dtype=np.float64)
        segment = np.clip(np.searchsorted(self._tempo_times, seconds, side="right") - 1, 0, None)
        ticks_per_second = self._resolution * np.asarray(self._tempi)[segment] / 60.0
        elapsed = seconds - self._tempo_times[segment]
        ticks = np.rint(self._tempo_ticks[segment] + elapsed * ticks_per_second)
        return ticks * GRID / self._resolution

    def bars(self, earliest_quarter: float) -> Iterator[bar_grid.BarSpan]:
        del earliest_quarter  # ticks start at 0: nothing comes before the first bar
        changes = [
            (
                Fraction(self._pm.time_to_tick(ts.time), self._resolution),
                (ts.numerator, ts.denominator),
            )
            for ts in self._pm.time_signature_changes
        ]
        return bar_grid.bars_from_time_signatures(changes)

    def tempo(self, span: bar_grid.BarSpan) -> float:
        current = self._tempi[0] if self._tempi else 120.0
        for position, bpm in zip(self._tempo_positions, self._tempi, strict=True):
            if position > span.start:
                break
            current = bpm
        return round(current, 6)


class _BeatClock:
    """Grid positions by linear interpolation between annotated beats (one quarter per beat)."""

    def __init__(self, beat_times: Sequence[float], downbeat_times: Sequence[float] | None):
        beats = np.asarray(beat_times, dtype=np.float64).ravel()
        if beats.size < 2 or np.any(np.diff(beats) <= 0):
            raise ValueError("beat_times must hold at least two strictly increasing times (s)")
        self._beats = beats
        self._index = np.arange(beats.size, dtype=np.float64)
        if downbeat_times is None or len(downbeat_times) == 0:
            self._downbeats = [0]  # no bar information: 4/4 bars from the first beat
        else:
            marks = np.asarray(downbeat_times, dtype=np.float64).ravel()
            nearest = np.abs(marks[:, None] - beats[None, :]).argmin(axis=1)
            self._downbeats = sorted(set(nearest.tolist()))

    def _beat_of(self, seconds: np.ndarray) -> np.ndarray:
        beats, index = self._beats, self._index
        position = np.interp(seconds, beats, index)
        before, after = seconds < beats[0], seconds > beats[-1]
        position[before] = (seconds[before] - beats[0]) / (beats[1] - beats[0])
        position[after] = index[-1] + (seconds[after] - beats[-1]) / (beats[-1] - beats[-2])
        return position

    def _seconds_of(self, beat: float) -> float:
        beats = self._beats
        if beat < 0:
            return beats[0] + beat * (beats[1] - beats[0])
        if beat > beats.size - 1:
            return beats[-1] + (beat - beats.size + 1) * (beats[-1] - beats[-2])
        return float(np.interp(beat, self._index, beats))

    def to_grid(self, seconds: np.ndarray) -> np.ndarray:
        return self._beat_of(np.asarray(seconds, dtype=np.float64)) * GRID

    def bars(self, earliest_quarter: float) -> Iterator[bar_grid.BarSpan]:
        return bar_grid.bars_from_downbeats(self._downbeats, earliest_quarter)

    def tempo(self, span: bar_grid.BarSpan) -> float:
        seconds = self._seconds_of(float(span.end)) - self._seconds_of(float(span.start))
        return round(60.0 * float(span.length) / seconds, 6)


def _round_half_up(values: np.ndarray, step: int) -> np.ndarray:
    # Python's round() is half-to-even; half-up keeps quantisation independent of parity.
    return (np.floor(values / step + 0.5) * step).astype(np.int64)


def _collect_notes(pm: pretty_midi.PrettyMIDI, track_programs: Mapping[str, int] | None):
    """Flatten all instruments to arrays; same-program tracks merge here (SPEC 1.3)."""
    columns = collections.defaultdict(list)
    for instrument in pm.instruments:
        if instrument.is_drum:
            program = vocab.DRUM_PROGRAM
        elif track_programs is not None and instrument.name.strip() in track_programs:
            program = int(track_programs[instrument.name.strip()])
        else:
            program = int(instrument.program)
        for note in instrument.notes:
            columns["program"].append(program)
            columns["start"].append(note.start)
            columns["end"].append(max(note.end, note.start))
            columns["pitch"].append(note.pitch)
            columns["velocity"].append(note.velocity)
    return {
        key: np.asarray(columns[key]) for key in ("program", "start", "end", "pitch", "velocity")
    }


def _resolve_collisions(
    notes: list[list[int]], dropped: collections.Counter | None = None
) -> list[list[int]]:
    """One track's [abs_onset, pitch, duration, velocity] rows, sorted, without same-pitch overlap.

    MIDI cannot hold two sounding notes of one pitch in one track (the first note-off ends both),
    so a repeated onset keeps the longest note (the others are counted in `dropped`) and an
    earlier note is cut at the next onset.
    """
    notes.sort(key=lambda n: (n[0], n[1], -n[2]))
    kept: list[list[int]] = []
    last_by_pitch: dict[int, list[int]] = {}
    for note in notes:
        previous = last_by_pitch.get(note[1])
        if previous is not None:
            if previous[0] == note[0]:
                if dropped is not None:
                    dropped[
                        "notes: same pitch and onset in one track (after merging and snapping)"
                    ] += 1
                continue
            if previous[0] + previous[2] > note[0]:
                previous[2] = note[0] - previous[0]
        last_by_pitch[note[1]] = note
        kept.append(note)
    return kept


def midi_to_song(
    pm: pretty_midi.PrettyMIDI,
    *,
    name: str = "",
    beat_times: Sequence[float] | None = None,
    downbeat_times: Sequence[float] | None = None,
    quantize_step: int = 1,
    track_programs: Mapping[str, int] | None = None,
    dropped: collections.Counter | None = None,
) -> Song:
    """Quantise a PrettyMIDI to bars of notes on the 12-per-quarter grid.

    beat_times/downbeat_times (seconds, one quarter per beat) replace the file's own tempo map
    and time signatures; bars start at downbeats, a bar's signature is (beats, 4), and notes
    before the first downbeat go into pickup bars of the first bar's length. `quantize_step`
    snaps onsets and ends to multiples of that many positions inside the bar (3 = 16th notes);
    durations are clamped to [step, 127 rounded down to a step] (a zero-length note gets one
    step). `track_programs` maps instrument names to programs (POP909: MELODY 13, BRIDGE 25,
    PIANO 0); drums are always program 128. Notes left out are counted by reason in `dropped`.
    """
    if quantize_step < 1:
        raise ValueError(f"quantize_step must be >= 1, got {quantize_step}")
    if beat_times is None:
        if downbeat_times is not None:
            raise ValueError("downbeat_times needs beat_times as well")
        clock = _TickClock(pm)
    else:
        clock = _BeatClock(beat_times, downbeat_times)
    columns = _collect_notes(pm, track_programs)
    if columns["start"].size == 0:
        return Song(bars=[], name=name)

    starts, ends = clock.to_grid(columns["start"]), clock.to_grid(columns["end"])
    latest = float(starts.max()) + quantize_step  # rounding moves an onset at most half a step
    # Beat bars start on whole beats (multiples of every step up to 12), so rounding the earliest
    # onset here matches its rounding inside its bar: a note a hair before the first downbeat
    # does not open a pickup bar.
    earliest = float(_round_half_up(starts.min(keepdims=True), quantize_step)[0]) / GRID
    spans = list(
        itertools.takewhile(lambda span: span.start * GRID <= latest, clock.bars(earliest))
    )
    bounds = np.array([round(span.start * GRID) for span in spans] + [round(spans[-1].end * GRID)])
    home = np.clip(np.searchsorted(bounds, starts, side="right") - 1, 0, len(spans) - 1)
    origin = bounds[home]
    onset_in_home = _round_half_up(starts - origin, quantize_step)
    end_in_home = _round_half_up(ends - origin, quantize_step)
    longest = vocab.MAX_DURATION // quantize_step * quantize_step
    durations = np.clip(end_in_home - onset_in_home, quantize_step, longest)
    onsets = origin + onset_in_home  # absolute grid positions

    tracks: dict[int, list[list[int]]] = collections.defaultdict(list)
    for program, onset, pitch, duration, velocity in zip(
        columns["program"].tolist(),
        onsets.tolist(),
        columns["pitch"].tolist(),
        durations.tolist(),
        np.clip(columns["velocity"], 1, 127).tolist(),
        strict=True,
    ):
        tracks[program].append([onset, pitch, duration, velocity])

    bars = [
        Bar(tracks={}, time_signature=span.time_signature, tempo=clock.tempo(span))
        for span in spans
    ]
    last_used = 0
    for program in sorted(tracks):
        for onset, pitch, duration, velocity in _resolve_collisions(tracks[program], dropped):
            index = int(np.searchsorted(bounds, onset, side="right") - 1)
            note = Note(onset - int(bounds[index]), pitch, duration, velocity)
            bars[index].tracks.setdefault(program, []).append(note)
            last_used = max(last_used, index)
    bars = bars[: last_used + 1]
    for bar in bars:
        for notes in bar.tracks.values():
            notes.sort(key=lambda n: (n.onset, -n.pitch, -n.duration, -n.velocity))
    return Song(bars=bars, name=name)


def song_to_midi(
    song: Song,
    *,
    tempo: float | None = None,
    programs: Mapping[int, int] | None = None,
    default_velocity: int = 96,
    resolution: int = 480,
) -> pretty_midi.PrettyMIDI:
    """Write bars end to end with their time signatures and tempi (a signature or tempo event
    wherever it changes). `tempo` overrides every bar's tempo; `programs` remaps song programs
    to output programs (128 = drums); notes whose velocity is outside 1..127 get
    `default_velocity`. `resolution` (ticks per quarter) must be a multiple of 12."""
    if resolution % GRID:
        raise ValueError(
            f"resolution must be a multiple of {GRID} ticks per quarter, got {resolution}"
        )
    ticks_per_step = resolution // GRID
    bar_ticks, position = [], Fraction(0)
    for bar in song.bars:
        bar_ticks.append(round(position * resolution))
        position += bar_grid.quarters(bar.time_signature)
    end_tick = round(position * resolution)

    tempo_marks: list[tuple[int, float]] = []
    for index, bar in enumerate(song.bars or [Bar()]):
        bpm = float(tempo if tempo is not None else bar.tempo)
        if not bpm > 0:
            raise ValueError(f"song {song.name!r} bar {index}: tempo must be positive, got {bpm}")
        if not tempo_marks or tempo_marks[-1][1] != bpm:
            tempo_marks.append((bar_ticks[index] if song.bars else 0, bpm))
    pm = pretty_midi.PrettyMIDI(resolution=resolution, initial_tempo=tempo_marks[0][1])
    # pretty_midi has no public API for tempo changes; `write()` emits one set_tempo event per
    # entry of `_tick_scales` (seconds per tick), so we set that list and rebuild its time table.
    pm._tick_scales = [(tick, 60.0 / (bpm * resolution)) for tick, bpm in tempo_marks]
    pm._update_tick_to_time(end_tick + vocab.MAX_DURATION * ticks_per_step + 1)

    previous_signature = None
    for index, bar in enumerate(song.bars):
        if bar.time_signature != previous_signature:
            num, den = bar.time_signature
            pm.time_signature_changes.append(
                pretty_midi.TimeSignature(num, den, pm.tick_to_time(bar_ticks[index]))
            )
            previous_signature = bar.time_signature
    if not song.bars:
        pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))

    instruments: dict[int, pretty_midi.Instrument] = {}
    for index, bar in enumerate(song.bars):
        for program, notes in bar.tracks.items():
            if program not in instruments:
                instruments[program] = _new_instrument((programs or {}).get(program, program))
            for note in notes:
                start = bar_ticks[index] + note.onset * ticks_per_step
                end = start + max(1, note.duration) * ticks_per_step
                velocity = note.velocity if 1 <= note.velocity <= 127 else default_velocity
                instruments[program].notes.append(
                    pretty_midi.Note(
                        velocity=int(velocity),
                        pitch=int(note.pitch),
                        start=pm.tick_to_time(start),
                        end=pm.tick_to_time(end),
                    )
                )
    pm.instruments = [instruments[program] for program in sorted(instruments)]
    return pm


def _new_instrument(program: int) -> pretty_midi.Instrument:
    if program == vocab.DRUM_PROGRAM:
        return pretty_midi.Instrument(program=0, is_drum=True, name="Drums")
    if not 0 <= program < vocab.DRUM_PROGRAM:
        raise ValueError(f"program must be 0..128 (128 = drums), got {program}")
    return pretty_midi.Instrument(
        program=program, name=pretty_midi.program_to_instrument_name(program)
    )
