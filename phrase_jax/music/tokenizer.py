"""Song <-> token ids (SPEC 1.3): phrases, bars, songs, and a decoder that never raises.

Phrase: `i-P`, notes by onset ascending, pitch descending, duration descending; `o-X` only when
the onset changes; each note `p-Y d-Z` (`p-Y d-Z v-V` with velocity). Bar: phrases by average
pitch, highest first, drums last, then `b-1`; with `with_meta`, `s-*` and `t-*` open the bar.

Decoding reads any id sequence. A note that breaks the grammar (no onset yet, no program, a
pitch in the wrong range for its program, a pitch without a duration, d-0) is dropped and
counted, a stray `o-`/`d-`/`v-` or a second `i-` inside a phrase is counted, special tokens are
ignored. A bar without `s-*` is 4/4, widened to whole quarters when its onsets reach further.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Iterable, Sequence

from phrase_jax.music import vocab
from phrase_jax.music.events import Bar, Note, Song

_DEFAULT_TEMPO = 90.0


def _note_order(note: Note):
    return (note.onset, -note.pitch, -note.duration, -note.velocity)


def phrase_tokens(program: int, notes: Iterable[Note], with_velocity: bool = False) -> list[int]:
    """One track in one bar: `i-P [o-X] p-Y d-Z [v-V] ...` (SPEC 1.3 order)."""
    is_drum = program == vocab.DRUM_PROGRAM
    ids = [vocab.program_id(program)]
    previous_onset = None
    for note in sorted(notes, key=_note_order):
        if note.onset != previous_onset:
            ids.append(vocab.onset_id(note.onset))
            previous_onset = note.onset
        ids.append(vocab.pitch_id(note.pitch, is_drum))
        ids.append(vocab.duration_id(note.duration))
        if with_velocity:
            ids.append(vocab.velocity_id(note.velocity))
    return ids


def phrase_order(bar: Bar) -> list[int]:
    """Programs of the bar's non-empty tracks: average pitch high -> low, drums last."""
    pitched = [p for p, notes in bar.tracks.items() if notes and p != vocab.DRUM_PROGRAM]
    pitched.sort(key=lambda p: (-sum(n.pitch for n in bar.tracks[p]) / len(bar.tracks[p]), p))
    if bar.tracks.get(vocab.DRUM_PROGRAM):
        pitched.append(vocab.DRUM_PROGRAM)
    return pitched


def bar_phrases(bar: Bar, with_velocity: bool = False) -> list[list[int]]:
    """The bar's phrases in serialisation order (without `b-1`)."""
    return [phrase_tokens(p, bar.tracks[p], with_velocity) for p in phrase_order(bar)]


def bar_tokens(bar: Bar, with_velocity: bool = False, with_meta: bool = False) -> list[int]:
    """`[s-* t-*] phrase ... b-1`."""
    ids = []
    if with_meta:
        ids += [vocab.time_signature_id(*bar.time_signature), vocab.tempo_id(bar.tempo)]
    for phrase in bar_phrases(bar, with_velocity):
        ids += phrase
    ids.append(vocab.BAR_END)
    return ids


def song_tokens(song: Song, with_velocity: bool = False, with_meta: bool = False) -> list[int]:
    """All bars' tokens concatenated."""
    ids = []
    for bar in song.bars:
        ids += bar_tokens(bar, with_velocity, with_meta)
    return ids


@dataclasses.dataclass
class DecodeStats:
    """What decoding had to repair. `dropped` counts grammar violations (each dropped note or
    stray token once); `ignored` counts special tokens; `widened_bars` counts bars whose onsets
    did not fit the signature their `s-*` token gave."""

    bars: int = 0
    notes: int = 0
    dropped: int = 0
    ignored: int = 0
    widened_bars: int = 0

    def __iadd__(self, other: DecodeStats) -> DecodeStats:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self


def _as_id(raw) -> int:
    """An int token id, or -1 for anything that is not an integer (numpy ints included)."""
    try:
        return operator.index(raw)
    except TypeError:
        return -1


def _kind(token: int) -> str:
    """Token family: special, bar, onset, program, pitch, duration, velocity, sig, tempo, bad."""
    if not 0 <= token < vocab.VOCAB_SIZE:
        return "bad"
    if token < vocab.BAR_END:
        return "special"
    if token == vocab.BAR_END:
        return "bar"
    for base, count, kind in (
        (vocab.ONSET_BASE, vocab.NUM_ONSETS, "onset"),
        (vocab.PROGRAM_BASE, vocab.NUM_PROGRAMS, "program"),
        (vocab.PITCH_BASE, vocab.NUM_PITCHES, "pitch"),
        (vocab.DURATION_BASE, vocab.NUM_DURATIONS, "duration"),
        (vocab.VELOCITY_BASE, vocab.NUM_VELOCITIES, "velocity"),
        (vocab.TIME_SIG_BASE, vocab.NUM_TIME_SIGS, "sig"),
    ):
        if base <= token < base + count:
            return kind
    return "tempo"


def parse_phrase(
    ids: Sequence[int], default_velocity: int = 96
) -> tuple[int | None, list[Note], int]:
    """Read one phrase: `(program or None, notes, violations)`; never raises.

    Notes get `default_velocity` unless a `v-*` follows their duration. Special, `b-1`, `s-*`
    and `t-*` tokens are skipped (a phrase holds none of them when well formed). Each dropped
    note or stray token counts as one violation.
    """
    program: int | None = None
    onset: int | None = None
    notes: list[Note | None] = []
    violations = 0
    pitch: int | None = None  # a pitch token waiting for its duration
    last_note_done = False  # the previous tokens closed a note (kept or dropped): v-* may follow

    for token in map(_as_id, ids):
        kind = _kind(token)
        if kind in ("special", "bar", "sig", "tempo"):
            continue
        if pitch is not None and kind != "duration":
            violations += 1  # a pitch that never got its duration
            pitch = None
        if kind == "velocity":
            if not last_note_done:
                violations += 1  # a velocity that follows no note
            elif notes and notes[-1] is not None:
                velocity = vocab.velocity_from_bin(token - vocab.VELOCITY_BASE)
                notes[-1] = dataclasses.replace(notes[-1], velocity=velocity)
            last_note_done = False
            continue
        last_note_done = False
        if kind == "bad":
            violations += 1
        elif kind == "program":
            if program is None and not notes:
                program = token - vocab.PROGRAM_BASE
            else:
                violations += 1  # a second i-* (or one after notes) is not a phrase start
        elif kind == "onset":
            onset = token - vocab.ONSET_BASE
        elif kind == "pitch":
            pitch = token - vocab.PITCH_BASE
        elif pitch is None:  # a duration with no pitch before it
            violations += 1
        else:
            duration = token - vocab.DURATION_BASE
            note_pitch = _note_pitch(program, pitch)
            if onset is None or note_pitch is None or duration < 1:
                violations += 1
                notes.append(None)  # placeholder so a following v-* is absorbed, removed below
            else:
                notes.append(Note(onset, note_pitch, duration, default_velocity))
            pitch = None
            last_note_done = True
    if pitch is not None:
        violations += 1
    return program, [note for note in notes if note is not None], violations


def _note_pitch(program: int | None, pitch_token: int) -> int | None:
    """MIDI pitch of `p-*`, or None when it does not fit the program (drums use p-128..p-255)."""
    if program is None:
        return None
    if program == vocab.DRUM_PROGRAM:
        return pitch_token - 128 if pitch_token >= 128 else None
    return pitch_token if pitch_token < 128 else None


def split_phrases(bar_ids: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """Split one bar's ids (no `b-1`) at each `i-*`: (ids before the first `i-*`, phrases)."""
    head: list[int] = []
    phrases: list[list[int]] = []
    for token in map(_as_id, bar_ids):
        if _kind(token) == "program":
            phrases.append([token])
        elif phrases:
            phrases[-1].append(token)
        else:
            head.append(token)
    return head, phrases


def bar_from_phrases(
    phrases: Sequence[Sequence[int]],
    *,
    time_signature: tuple[int, int] | None = None,
    tempo: float = _DEFAULT_TEMPO,
    default_velocity: int = 96,
) -> tuple[Bar, DecodeStats]:
    """Decode a bar's phrases; one program's phrases merge. Never raises."""
    stats = DecodeStats(bars=1)
    tracks: dict[int, list[Note]] = {}
    for phrase in phrases:
        program, notes, violations = parse_phrase(phrase, default_velocity)
        stats.dropped += violations
        stats.ignored += sum(_kind(_as_id(t)) == "special" for t in phrase)
        if program is None:
            continue
        if notes:
            tracks.setdefault(program, []).extend(notes)
    for notes in tracks.values():
        notes.sort(key=_note_order)
        stats.notes += len(notes)
    signature = time_signature or (4, 4)
    last_onset = max((n.onset for notes in tracks.values() for n in notes), default=0)
    num, den = signature
    if last_onset >= num * 4 * vocab.POSITIONS_PER_QUARTER // den:
        # Onsets past the bar end: widen to whole quarters so every note stays in this bar.
        signature = (math.ceil((last_onset + 1) / vocab.POSITIONS_PER_QUARTER), 4)
        stats.widened_bars += time_signature is not None
    return Bar(tracks=tracks, time_signature=signature, tempo=tempo), stats


def tokens_to_song(
    ids: Sequence[int], default_velocity: int = 96, name: str = ""
) -> tuple[Song, DecodeStats]:
    """Decode a token sequence into bars (split at `b-1`); never raises.

    Ids after the last `b-1` form a final bar only if they hold notes. A bar's tempo is its
    `t-*`, else the previous bar's, else 90 bpm; its signature is its `s-*`, else 4/4 (widened
    to fit its onsets).
    """
    stats = DecodeStats()
    bars: list[Bar] = []
    tempo = _DEFAULT_TEMPO
    current: list[int] = []
    chunks: list[tuple[list[int], bool]] = []
    for token in map(_as_id, ids):
        if token == vocab.BAR_END:
            chunks.append((current, True))
            current = []
        else:
            current.append(token)
    if current:
        chunks.append((current, False))
    for chunk, closed in chunks:
        head, phrases = split_phrases(chunk)
        signature = None
        for token in head + [t for phrase in phrases for t in phrase]:
            kind = _kind(token)
            if kind == "sig":
                signature = vocab.TIME_SIGNATURES[token - vocab.TIME_SIG_BASE]
            elif kind == "tempo":
                tempo = vocab.tempo_from_bin(token - vocab.TEMPO_BASE)
        # Anything but s-*/t-* before the first i-* has no program: parse_phrase counts it.
        stats.dropped += parse_phrase(head)[2]
        stats.ignored += sum(_kind(t) == "special" for t in head)
        bar, bar_stats = bar_from_phrases(
            phrases, time_signature=signature, tempo=tempo, default_velocity=default_velocity
        )
        if not closed and bar_stats.notes == 0:
            stats.ignored += bar_stats.ignored
            stats.dropped += bar_stats.dropped
            continue
        bars.append(bar)
        stats += bar_stats
    return Song(bars=bars, name=name), stats
