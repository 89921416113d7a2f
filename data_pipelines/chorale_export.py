"""Bach chorales from the music21 corpus -> four-voice MIDI whose barlines are the score's.

music21 writes a pickup (anacrusis) measure from tick 0 under the piece's full time signature,
so a reader would put every later barline a pickup-length early. The export therefore marks the
pickup as a short first bar: a time signature of the pickup's length at tick 0 (e.g. 1/4), then
the piece's own signature where the first full bar starts.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import mido

from phrase_jax.music import bar_grid

EXPORT_VERSION = 2  # 2: pickups as a short first bar
TICKS_PER_QUARTER = 480
# Chorale voices soprano, alto, tenor, bass -> violin, viola, cello, contrabass: four distinct
# programs, so the tokenizer keeps them as four tracks instead of merging same-program tracks.
CHORALE_PROGRAMS = (40, 41, 42, 43)
CHORALE_VOICES = ("soprano", "alto", "tenor", "bass")


def _satb_parts(score) -> list:
    """The soprano, alto, tenor and bass parts, by name (chorales with instruments) or order."""
    parts = list(score.parts)
    by_voice = {}
    for part in parts:
        words = (part.partName or "").split()
        if words and words[0].lower() in CHORALE_VOICES and words[0].lower() not in by_voice:
            by_voice[words[0].lower()] = part
    if len(by_voice) == len(CHORALE_VOICES):
        return [by_voice[voice] for voice in CHORALE_VOICES]
    if len(parts) == len(CHORALE_VOICES):
        return parts
    raise ValueError(f"{len(parts)} parts without soprano/alto/tenor/bass names, expected SATB")


def pickup_quarters(part) -> Fraction:
    """Length of the pickup (anacrusis) in quarter notes; 0 when the first bar is full."""
    first = part.getElementsByClass("Measure").first()
    if first is None or not first.paddingLeft:
        return Fraction(0)
    length = Fraction(first.barDuration.quarterLength) - Fraction(first.paddingLeft)
    return length if 0 < length < Fraction(first.barDuration.quarterLength) else Fraction(0)


def export_chorale_midi(score_path: str, midi_path: str) -> Fraction:
    """Writes the four voices of a chorale as MIDI (480 ticks/quarter, one track per voice),
    a pickup as a short first bar; instrumental parts (horns, continuo, ...) are left out.
    Returns the pickup's length in quarters (0 = none)."""
    import music21
    from music21 import instrument

    score = music21.converter.parse(score_path)
    voices = _satb_parts(score)
    for part in list(score.parts):
        if not any(part is voice for voice in voices):
            score.remove(part)
    for part, program in zip(voices, CHORALE_PROGRAMS, strict=True):
        for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
            old.activeSite.remove(old)
        voice = instrument.Instrument()
        voice.midiProgram = program
        part.insert(0, voice)
    pickup = pickup_quarters(voices[0])
    music21.defaults.ticksPerQuarter = TICKS_PER_QUARTER
    data = music21.midi.translate.streamToMidiFile(score).writestr()
    midi = mido.MidiFile(file=io.BytesIO(data))
    if pickup:
        mark_pickup(midi, pickup)
    tmp = f"{midi_path}.tmp{os.getpid()}"
    midi.save(tmp)
    os.replace(tmp, midi_path)
    return pickup


def mark_pickup(midi: mido.MidiFile, pickup: Fraction) -> None:
    """Makes the first `pickup` quarters a bar of their own: the time signature in force at
    tick 0 moves to the pickup's end, and a signature of the pickup's length opens the file."""
    tpq = midi.ticks_per_beat
    end_tick = round(pickup * tpq)
    short = bar_grid.signatures_for_length(pickup)[0]
    meter = None
    for track in midi.tracks:
        events, tick = [], 0
        for message in track:
            tick += message.time
            if message.type == "time_signature" and tick == 0:
                meter = meter or message
                continue
            events.append((tick, message))
        track[:] = _with_deltas(events)
    if meter is None:
        meter = mido.MetaMessage("time_signature", numerator=4, denominator=4)
    conductor = midi.tracks[0]
    events, tick = [], 0
    for message in conductor:
        tick += message.time
        events.append((tick, message))
    numerator, denominator = short
    events.insert(0, (0, mido.MetaMessage("time_signature", numerator=numerator,
                                          denominator=denominator)))  # fmt: skip
    if not any(t == end_tick and m.type == "time_signature" for t, m in events):
        events.append((end_tick, meter.copy(time=0)))
    events.sort(key=lambda pair: (pair[0], pair[1].type == "end_of_track"))
    conductor[:] = _with_deltas(events)


def _with_deltas(events: list) -> list:
    out, previous = [], 0
    for tick, message in events:
        out.append(message.copy(time=tick - previous))
        previous = tick
    return out
