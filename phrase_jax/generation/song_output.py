"""What the sample stage writes per song (SPEC 6): a .mid, a piano-roll .png, optionally a .wav
(`generation/audio.py`: FluidSynth + a GM sound font when installed, else sine tones).

    files, seconds = write_songs(songs, out_dir, tempo=90.0)   # song_000.mid, song_000.png, ...
    audio, rate, method = synthesize(pretty_midi_object)      # for notebooks and WAV files

The piano roll draws on a bare `matplotlib.figure.Figure` (Agg canvas), never through pyplot, so
importing this module does not change the matplotlib backend of a notebook or a script.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pretty_midi
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from phrase_jax import errors
from phrase_jax.artifacts.samples import song_file_stem
from phrase_jax.generation import audio
from phrase_jax.music import midi_io
from phrase_jax.music.events import Song

DRUMS = 128
AUDIO_RATE = audio.AUDIO_RATE
# Piano-roll width per bar and its cap, in inches: 128 bars stay readable and under ~4k pixels.
INCHES_PER_BAR = 0.3
MAX_WIDTH_INCHES = 40.0


def program_name(program: int) -> str:
    return "Drums" if program == DRUMS else pretty_midi.program_to_instrument_name(program)


def piano_roll_figure(
    song: Song, title: str = "", written: Sequence[frozenset[int]] | None = None
) -> Figure:
    """One horizontal bar per note: x in bars (a bar's onsets span [k, k+1)), y MIDI pitch,
    one colour per program; drums drawn as crosses at their drum-note pitch. `written` (an
    edit, `generation/editing.py`): per bar, the programs the model wrote there; those notes
    get a black outline and the bars holding them a shaded background, the rest was kept."""
    n_bars = max(len(song.bars), 1)
    figure = Figure(figsize=(min(max(6.0, INCHES_PER_BAR * n_bars), MAX_WIDTH_INCHES), 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    programs = sorted({p for bar in song.bars for p, notes in bar.tracks.items() if notes})
    colours = {p: f"C{i % 10}" for i, p in enumerate(programs)}
    for program in programs:
        starts, widths, pitches, edges = [], [], [], []
        for index, bar in enumerate(song.bars):
            is_written = written is not None and program in written[index]
            for note in bar.tracks.get(program, ()):
                starts.append(index + note.onset / bar.length)
                widths.append(note.duration / bar.length)
                pitches.append(note.pitch)
                edges.append("black" if is_written else "none")
        label = f"{program_name(program)} ({program})"
        if program == DRUMS:
            axes.scatter(starts, pitches, marker="x", s=8, color=colours[program], label=label)
        else:
            axes.barh(pitches, widths, left=starts, height=0.8, color=colours[program],
                      label=label, edgecolor=edges, linewidth=0.6 if written else 0)  # fmt: skip
    if written is not None:
        shaded = [k for k, bar_programs in enumerate(written) if bar_programs]
        for k in shaded:
            axes.axvspan(k, k + 1, color="gold", alpha=0.15, linewidth=0, zorder=0)
        if shaded:
            axes.axvspan(0, 0, color="gold", alpha=0.3, label="written (outlined notes)")
    for bar_start in range(0, n_bars + 1, 4):
        axes.axvline(bar_start, color="0.85", linewidth=0.5, zorder=0)
    axes.set_xlim(0, n_bars)
    axes.set_xlabel("bar")
    axes.set_ylabel("MIDI pitch")
    axes.set_title(title or song.name or "generated song", fontsize=9)
    if programs:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    figure.tight_layout()
    return figure


def synthesize(pm: pretty_midi.PrettyMIDI, rate: int = AUDIO_RATE) -> tuple[np.ndarray, int, str]:
    """(audio float32 [samples] peaking at 0.9, rate, synthesizer) as `audio.synthesize` makes
    it (FluidSynth with a GM sound font when they load, else sine tones): for notebooks."""
    waveform, method = audio.synthesize(pm, rate=rate)
    return waveform, rate, method


def write_songs(
    songs: Sequence[Song],
    out_dir: str,
    *,
    tempo: float = midi_io.DEFAULT_TEMPO,
    piano_roll: bool = True,
    wav: bool = False,
    synthesizer: str = "auto",
    sound_font: str | None = None,
    programs: Mapping[int, int] | None = None,
    first_index: int = 0,
) -> tuple[list[dict[str, str]], dict[str, float]]:
    """Writes song_{i:03d}.mid (+ .png, .wav) for each song into `out_dir`.

    Returns (per song {"midi", "png"?, "wav"?} file names relative to `out_dir` and, with a
    .wav, "wav_synthesizer": fluidsynth | sine; seconds per phase {"midi_write_s", "png_s",
    "wav_s"}). Programs come from the songs' own tracks (each decoded phrase starts with its
    `i-P`), remapped by `programs` (song program -> output program, 128 = drums); `tempo` sets
    every bar's tempo. `synthesizer` / `sound_font`: as `audio.render_wav`.
    """
    os.makedirs(out_dir, exist_ok=True)
    seconds = {"midi_write_s": 0.0, "png_s": 0.0, "wav_s": 0.0}
    files = []
    for offset, song in enumerate(songs):
        stem = song_file_stem(first_index + offset)
        written = {"midi": f"{stem}.mid"}
        started = time.monotonic()
        pm = midi_io.song_to_midi(song, tempo=tempo, programs=programs)
        pm.write(os.path.join(out_dir, written["midi"]))
        seconds["midi_write_s"] += time.monotonic() - started
        if piano_roll:
            started = time.monotonic()
            written["png"] = f"{stem}.png"
            piano_roll_figure(song, title=f"{stem}: {len(song.bars)} bars").savefig(
                os.path.join(out_dir, written["png"]), dpi=100
            )
            seconds["png_s"] += time.monotonic() - started
        if wav:
            started = time.monotonic()
            written["wav"] = f"{stem}.wav"
            written["wav_synthesizer"] = audio.render_wav(
                pm, os.path.join(out_dir, written["wav"]), synthesizer=synthesizer,
                sound_font=sound_font,
            )  # fmt: skip
            seconds["wav_s"] += time.monotonic() - started
        files.append(written)
    return files, {k: round(v, 4) for k, v in seconds.items()}


def parse_programs(text: str) -> dict[int, int] | None:
    """ "0:24,33:32" -> {0: 24, 33: 32} (song program -> output program, 128 = drums); "" ->
    None (keep the songs' programs)."""
    if not text.strip():
        return None
    mapping = {}
    for item in text.replace(";", ",").split(","):
        try:
            source, target = (int(x) for x in item.split(":"))
        except ValueError:
            raise errors.UserError(
                f"config programs={text!r}: want song:output pairs like 0:24,33:32"
            ) from None
        if not (0 <= source <= DRUMS and 0 <= target <= DRUMS):
            raise errors.UserError(f"config programs={text!r}: programs are 0..127, 128 = drums")
        mapping[source] = target
    return mapping
