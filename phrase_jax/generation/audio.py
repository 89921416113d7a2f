"""Songs as audio (.wav): FluidSynth with a General MIDI sound font when both are installed,
else sine tones, so a song can always be heard.

    synthesizer = render_wav(song, "song_000.wav", tempo=90.0)     # "fluidsynth" or "sine"

FluidSynth needs the `pyfluidsynth` package and the libfluidsynth library:
  Debian/Ubuntu: sudo apt-get install fluidsynth fluid-soundfont-gm && pip install pyfluidsynth
  macOS:         brew install fluid-synth && pip install pyfluidsynth
The sound font is the first found of: the `sound_font` argument, $PHRASE_JAX_SOUNDFONT, the
system General MIDI fonts below, the small GM font that pretty_midi ships (TimGM6mb).

The sine fallback (numpy only) plays every pitched note as a decaying sine with one overtone
and every drum hit as a short noise burst, loudness by velocity; it is a sketch of the song,
not a rendition. WAV files are written with scipy (the `demo` extra).
"""

from __future__ import annotations

import os

import numpy as np
import pretty_midi
from absl import logging

from phrase_jax import errors
from phrase_jax.music import midi_io
from phrase_jax.music.events import Song

AUDIO_RATE = 22050
SYNTHESIZERS = ("auto", "fluidsynth", "sine")
SOUND_FONT_ENV = "PHRASE_JAX_SOUNDFONT"
SYSTEM_SOUND_FONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # Debian/Ubuntu fluid-soundfont-gm
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)
FLUIDSYNTH_HINT = (
    "install libfluidsynth (apt-get install fluidsynth / brew install fluid-synth) and "
    "`pip install pyfluidsynth`"
)
PEAK = 0.9
TAIL_SECONDS = 0.5  # room for the last notes' release
_SINE_ATTACK_S, _SINE_DECAY_PER_S, _SINE_RELEASE_S = 0.005, 1.5, 0.05
_DRUM_SECONDS, _DRUM_DECAY_PER_S = 0.08, 40.0
_notice_given = False  # one notice per process, not one per song


def find_sound_font(sound_font: str | None = None) -> str | None:
    """The .sf2 to use: `sound_font`, $PHRASE_JAX_SOUNDFONT, a system GM font, or None (then
    pretty_midi's bundled TimGM6mb). A given path that does not exist is a UserError."""
    explicit = sound_font or os.environ.get(SOUND_FONT_ENV)
    if explicit:
        if not os.path.isfile(explicit):
            raise errors.UserError(f"sound font {explicit} not found; pass an existing .sf2")
        return explicit
    return next((path for path in SYSTEM_SOUND_FONTS if os.path.isfile(path)), None)


def fluidsynth_error() -> str:
    """'' when pyfluidsynth and libfluidsynth load, else why not (one line)."""
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth loads libfluidsynth on import)
    except (ImportError, OSError) as error:  # no package, or the package without the library
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return ""


def sine_tones(pm: pretty_midi.PrettyMIDI, rate: int = AUDIO_RATE) -> np.ndarray:
    """float32 [samples] (unnormalised): the song as decaying sines, drums as noise bursts."""
    audio = np.zeros(int((pm.get_end_time() + TAIL_SECONDS) * rate) + 1, np.float64)
    for instrument in pm.instruments:
        for note in instrument.notes:
            start = int(note.start * rate)
            loudness = note.velocity / 127.0
            if instrument.is_drum:
                t = np.arange(int(_DRUM_SECONDS * rate)) / rate
                noise = np.random.default_rng(note.pitch).uniform(-1.0, 1.0, t.size)
                wave = 0.5 * loudness * noise * np.exp(-_DRUM_DECAY_PER_S * t)
            else:
                held = max(note.end - note.start, 1.0 / rate)
                t = np.arange(int((held + _SINE_RELEASE_S) * rate)) / rate
                frequency = 440.0 * 2.0 ** ((note.pitch - 69) / 12.0)
                phase = 2 * np.pi * frequency * t
                envelope = np.minimum(t / _SINE_ATTACK_S, 1.0) * np.exp(-_SINE_DECAY_PER_S * t)
                envelope *= np.clip((held + _SINE_RELEASE_S - t) / _SINE_RELEASE_S, 0.0, 1.0)
                wave = 0.3 * loudness * envelope * (np.sin(phase) + 0.25 * np.sin(2 * phase))
            end = min(start + wave.size, audio.size)
            audio[start:end] += wave[: end - start]
    return audio.astype(np.float32)


def _as_midi(midi: pretty_midi.PrettyMIDI | Song, tempo: float | None) -> pretty_midi.PrettyMIDI:
    if isinstance(midi, Song):
        return midi_io.song_to_midi(midi, tempo=tempo)
    if tempo is not None:
        raise ValueError("tempo applies to a Song; a PrettyMIDI already has its tempo")
    return midi


def synthesize(
    midi: pretty_midi.PrettyMIDI | Song,
    *,
    rate: int = AUDIO_RATE,
    synthesizer: str = "auto",
    sound_font: str | None = None,
    tempo: float | None = None,
) -> tuple[np.ndarray, str]:
    """(audio float32 [samples] peaking at 0.9, the synthesizer that made it).

    `synthesizer`: auto (FluidSynth when it loads, else one logged notice and sine tones),
    fluidsynth (a UserError when it does not load) or sine. A Song is written at `tempo`
    (None: its bars' own tempi).
    """
    global _notice_given
    if synthesizer not in SYNTHESIZERS:
        raise errors.UserError(f"synthesizer={synthesizer!r}: use one of {SYNTHESIZERS}")
    pm = _as_midi(midi, tempo)
    method = "sine"
    if synthesizer != "sine":
        problem = fluidsynth_error()
        if not problem:
            audio = pm.fluidsynth(fs=rate, synthesizer=find_sound_font(sound_font))
            method = "fluidsynth"
        elif synthesizer == "fluidsynth":
            raise errors.UserError(f"FluidSynth does not load ({problem}); {FLUIDSYNTH_HINT}")
        elif not _notice_given:
            logging.warning("FluidSynth unavailable (%s): WAVs are sine tones; %s",
                            problem, FLUIDSYNTH_HINT)  # fmt: skip
            _notice_given = True
    if method == "sine":
        audio = sine_tones(pm, rate)
    audio = np.asarray(audio, np.float32)
    if audio.size == 0:
        return np.zeros(1, np.float32), method
    peak = float(np.max(np.abs(audio)))
    return (audio * np.float32(PEAK / peak) if peak > 0 else audio), method


def write_wav(path: str, audio: np.ndarray, rate: int = AUDIO_RATE) -> None:
    """16-bit mono PCM."""
    try:
        from scipy.io import wavfile
    except ImportError:
        raise errors.UserError(
            "writing WAV files needs scipy: pip install 'phrase_jax[demo]'"
        ) from None
    wavfile.write(path, rate, (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16))


def render_wav(
    midi: pretty_midi.PrettyMIDI | Song,
    path: str,
    *,
    rate: int = AUDIO_RATE,
    synthesizer: str = "auto",
    sound_font: str | None = None,
    tempo: float | None = None,
) -> str:
    """Writes `path` (.wav) and returns the synthesizer that rendered it (for samples.json)."""
    audio, method = synthesize(
        midi, rate=rate, synthesizer=synthesizer, sound_font=sound_font, tempo=tempo
    )
    write_wav(path, audio, rate)
    return method
