"""WAV rendering: the sine fallback (always available) and the synthesizer choice."""

import numpy as np
import pretty_midi
import pytest

from phrase_jax import errors
from phrase_jax.generation import audio
from phrase_jax.music.events import Bar, Note, Song

wavfile = pytest.importorskip("scipy.io.wavfile")


def one_note_midi(pitch=69, start=0.0, end=1.0, drum=False):
    pm = pretty_midi.PrettyMIDI()
    instrument = pretty_midi.Instrument(0, is_drum=drum)
    instrument.notes.append(pretty_midi.Note(velocity=100, pitch=pitch, start=start, end=end))
    pm.instruments.append(instrument)
    return pm


def dominant_frequency(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return np.fft.rfftfreq(samples.size, 1.0 / rate)[np.argmax(spectrum)]


def test_sine_wav_plays_the_note_at_its_pitch_and_time(tmp_path):
    path = str(tmp_path / "a.wav")
    pm = one_note_midi(pitch=69, start=0.5, end=1.5)
    assert audio.render_wav(pm, path, synthesizer="sine") == "sine"
    rate, samples = wavfile.read(path)
    assert rate == audio.AUDIO_RATE and samples.dtype == np.int16
    assert samples.size == int((1.5 + audio.TAIL_SECONDS) * rate) + 1
    assert abs(int(np.abs(samples).max()) - int(0.9 * 32767)) <= 1
    assert np.abs(samples[: int(0.5 * rate)]).max() == 0  # silent before the onset
    held = samples[int(0.6 * rate) : int(1.4 * rate)].astype(np.float64)
    assert abs(dominant_frequency(held, rate) - 440.0) < 3.0
    assert np.abs(samples[int(1.6 * rate) :]).max() == 0  # released after the note


def test_sine_drums_are_audible_and_deterministic():
    drums, method = audio.synthesize(one_note_midi(pitch=36, drum=True), synthesizer="sine")
    again, _ = audio.synthesize(one_note_midi(pitch=36, drum=True), synthesizer="sine")
    assert method == "sine" and np.abs(drums).max() > 0.5
    np.testing.assert_array_equal(drums, again)


def test_a_song_is_written_at_the_requested_tempo():
    bar = Bar(tracks={0: [Note(onset=0, pitch=60, duration=48)]})
    song = Song(bars=[bar, Bar(tracks={0: [Note(onset=0, pitch=64, duration=12)]})])
    slow, _ = audio.synthesize(song, synthesizer="sine", tempo=60.0)
    fast, _ = audio.synthesize(song, synthesizer="sine", tempo=120.0)
    # Two 4/4 bars, the second note a quarter long: 5 beats of music, then the tail.
    rate = audio.AUDIO_RATE
    assert slow.size == int((5.0 + audio.TAIL_SECONDS) * rate) + 1
    assert fast.size == int((2.5 + audio.TAIL_SECONDS) * rate) + 1


def test_auto_falls_back_to_sine_with_one_notice(monkeypatch):
    monkeypatch.setattr(audio, "fluidsynth_error", lambda: "ImportError: no fluidsynth")
    monkeypatch.setattr(audio, "_notice_given", False)
    warnings = []
    monkeypatch.setattr(audio.logging, "warning", lambda *args: warnings.append(args))
    for _ in range(2):
        assert audio.synthesize(one_note_midi())[1] == "sine"
    assert len(warnings) == 1 and "pyfluidsynth" in warnings[0][0] % warnings[0][1:]
    with pytest.raises(errors.UserError, match="FluidSynth does not load"):
        audio.synthesize(one_note_midi(), synthesizer="fluidsynth")


def test_auto_uses_fluidsynth_when_it_loads(monkeypatch, tmp_path):
    calls = []

    def fake_fluidsynth(self, fs, synthesizer):
        calls.append((fs, synthesizer))
        return np.sin(np.arange(100, dtype=np.float32))

    sound_font = tmp_path / "gm.sf2"
    sound_font.write_bytes(b"RIFF")
    monkeypatch.setattr(audio, "fluidsynth_error", lambda: "")
    monkeypatch.setattr(pretty_midi.PrettyMIDI, "fluidsynth", fake_fluidsynth)
    samples, method = audio.synthesize(one_note_midi(), sound_font=str(sound_font))
    assert method == "fluidsynth" and calls == [(audio.AUDIO_RATE, str(sound_font))]
    assert abs(float(np.abs(samples).max()) - 0.9) < 1e-6


def test_bad_choices_are_user_errors(tmp_path):
    with pytest.raises(errors.UserError, match="synthesizer='piano'"):
        audio.synthesize(one_note_midi(), synthesizer="piano")
    with pytest.raises(errors.UserError, match="not found"):
        audio.find_sound_font(str(tmp_path / "missing.sf2"))


def test_an_empty_song_is_silence():
    samples, method = audio.synthesize(pretty_midi.PrettyMIDI(), synthesizer="sine")
    assert method == "sine" and samples.size > 0 and not samples.any()
