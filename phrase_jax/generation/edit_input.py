"""The song an edit starts from: a MIDI file read exactly as training data is (SPEC 1), the
key normalisation it went through, and the names of its tracks.

    song = read_input("my_song.mid", datasets.DatasetSettings())
    song.original      # quantised bars in the file's key, tempi and time signatures
    song.normalized    # the same bars moved to C major / A minor (what the model saw in training)
    song.key_shift     # semitones added by the normalisation; written notes move back by it

A POP909 song (a `NNN/NNN.mid` next to its `beat_midi.txt`) is read by the POP909 loader of
`data_pipelines/datasets.py` (beat-annotated bars, MELODY/BRIDGE/PIANO programs, section
labels); any other file by the MIDI-folder loader. Both drop the silent bars before the first
note, as training did, so bar 1 is the first bar with a note.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from data_pipelines import datasets
from phrase_jax import errors
from phrase_jax.music import keys, midi_limits, vocab
from phrase_jax.music.events import Song


@dataclasses.dataclass(frozen=True)
class EditInput:
    """A read input song. `track_programs`: lower-cased track name -> program (the names of
    the file's instruments, and for POP909 its MELODY/BRIDGE/PIANO names); `info`: what the
    loader recorded (leading silent bars dropped, ...)."""

    path: str
    original: Song
    normalized: Song
    key_shift: int
    track_programs: dict[str, int]
    info: dict

    @property
    def n_bars(self) -> int:
        return len(self.original.bars)

    def programs(self) -> list[int]:
        """The programs that play in the song, sorted."""
        return sorted({p for bar in self.original.bars for p, notes in bar.tracks.items() if notes})


def is_pop909_song(path: str) -> bool:
    """A POP909 song file: `NNN/NNN.mid` with the folder's `beat_midi.txt`."""
    file = pathlib.Path(path)
    return file.stem == file.parent.name and (file.parent / "beat_midi.txt").exists()


def _track_names(path: str, settings: datasets.DatasetSettings, pop909: bool) -> dict[str, int]:
    pm, _ = midi_limits.read_midi(path, settings.read_limits)
    names = {}
    for instrument in pm.instruments:
        name = instrument.name.strip()
        if not name:
            continue
        if instrument.is_drum:
            program = vocab.DRUM_PROGRAM
        elif pop909 and name in datasets.POP909_PROGRAMS:
            program = datasets.POP909_PROGRAMS[name]
        else:
            program = int(instrument.program)
        names.setdefault(name.lower(), program)
    return names


def read_input(path: str, settings: datasets.DatasetSettings) -> EditInput:
    """Reads and normalises `path` as prepare does; UserError for a missing or unusable file."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise errors.UserError(f"config input={path!r}: no such MIDI file")
    pop909 = is_pop909_song(path)
    source = datasets.SongSource(pathlib.Path(path).stem, path)
    spec = datasets.get_dataset("pop909" if pop909 else "midi")
    try:
        loaded = spec.load(source, settings, os.path.dirname(path))
        names = _track_names(path, settings, pop909)
    except (ValueError, OSError) as error:
        raise errors.UserError(f"config input={path!r}: cannot read it ({error})") from None
    song = loaded.song
    if not song.bars:
        raise errors.UserError(f"config input={path!r}: the file has no notes to edit")
    normalized, shift = keys.normalize_key(song) if settings.normalize_key else (song, 0)
    return EditInput(
        path=path,
        original=song,
        normalized=normalized,
        key_shift=int(shift),
        track_programs=names,
        info=dict(loaded.info, pop909=pop909, dropped=dict(loaded.dropped)),
    )


def resolve_track(song: EditInput, text: str, key: str) -> int:
    """One track named by a program number (0..127, 128 = drums) or a track name (any case)
    that plays in the song -> its program; UserError naming `key` otherwise."""
    text = text.strip()
    playing = song.programs()
    if text.isdigit():
        program = int(text)
    elif text.lower() in song.track_programs:
        program = song.track_programs[text.lower()]
    else:
        program = None
    if program is None or program not in playing:
        named = sorted(song.track_programs)
        raise errors.UserError(
            f"config {key}={text!r}: no such track in {song.path}; its tracks are programs "
            f"{playing}" + (f" named {named}" if named else "")
        )
    return program
