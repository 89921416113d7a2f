"""A seeded corpus of malformed and extreme MIDI files for `prepare` (issue 11, point 5).

    python tests/midi_fuzz.py OUT_DIR [--seed 0] [--copies 1]

`write_corpus` returns {file name: expectation}: "keep" for files that are valid however extreme
(they must load), "reject" for files that must be rejected, "either" for random damage whose
outcome depends on where the damage lands. Every file must end with a kept song or a one-line
reason; none may hang the run or crash it.
"""

from __future__ import annotations

import argparse
import io
import pathlib

import mido
import numpy as np


def _song_track(rng, n_notes, ticks_per_quarter, channel=0, program=0, step=None, pitch=60):
    step = step or ticks_per_quarter
    messages = [mido.Message("program_change", program=program, channel=channel, time=0)]
    for _ in range(n_notes):
        note = int(pitch + rng.integers(-12, 13))
        messages.append(mido.Message("note_on", note=note, velocity=90, channel=channel, time=0))
        messages.append(mido.Message("note_off", note=note, channel=channel, time=step))
    return mido.MidiTrack(messages)


def _meta_track(*messages):
    return mido.MidiTrack(list(messages))


def _file(tracks, ticks_per_quarter=480, kind=1) -> bytes:
    midi = mido.MidiFile(type=kind, ticks_per_beat=ticks_per_quarter)
    midi.tracks.extend(tracks)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def _time_signature(numerator, denominator, time=0):
    return mido.MetaMessage(
        "time_signature", numerator=numerator, denominator=denominator, time=time
    )


def _raw_time_signature(numerator: int, exponent: int, time_byte: int = 0) -> bytes:
    """A time-signature event with any denominator exponent (mido only writes powers of two)."""
    return bytes([time_byte, 0xFF, 0x58, 0x04, numerator, exponent, 24, 8])


def _raw_file(track_events: bytes, ticks_per_quarter: int = 480) -> bytes:
    track = track_events + b"\x00\x90\x3c\x50\x83\x60\x80\x3c\x00\x00\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + b"\x00\x00\x00\x01"
    header += ticks_per_quarter.to_bytes(2, "big")
    return header + b"MTrk" + len(track).to_bytes(4, "big") + track


def write_corpus(folder: str | pathlib.Path, seed: int = 0, copies: int = 1) -> dict[str, str]:
    """Writes the corpus into `folder`; returns {file name: "keep" | "reject" | "either"}."""
    rng = np.random.default_rng(seed)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        (folder / name).write_bytes(data)
        expect[name] = outcome

    def tempo(t):
        return _meta_track(mido.MetaMessage("set_tempo", tempo=t))

    for copy in range(copies):
        c = f"{copy:02d}_"
        valid = _file([_meta_track(_time_signature(4, 4)), _song_track(rng, 64, 480)])
        put(f"{c}valid.mid", valid, "keep")
        # Damaged copies of a valid file.
        for i in range(6):
            cut = int(rng.integers(14, len(valid) - 1))
            put(f"{c}truncated_{i}.mid", valid[:cut], "either")
        for i in range(8):
            damaged = bytearray(valid)
            for position in rng.integers(0, len(valid), size=int(rng.integers(1, 20))):
                damaged[position] = int(rng.integers(0, 256))
            put(f"{c}flipped_{i}.mid", bytes(damaged), "either")
        put(f"{c}empty.mid", b"", "reject")
        put(f"{c}text.mid", b"this is not a MIDI file\n" * 20, "reject")
        put(f"{c}random.mid", rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), "reject")
        put(f"{c}random_header.mid", b"MThd" + rng.bytes(3000), "reject")
        put(f"{c}header_only.mid", b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x01\xe0", "reject")
        put(f"{c}no_notes.mid", _file([tempo(500_000)]), "reject")
        # Absurd tempos (the grid comes from ticks, so they still read).
        for name, t in (("tempo_zero", 0), ("tempo_1us", 1), ("tempo_max", 2**24 - 1)):
            put(f"{c}{name}.mid", _file([tempo(t), _song_track(rng, 32, 480)]), "keep")
        # Ticks per quarter: 1, 10080 (valid high resolution), 32767, 0 and SMPTE.
        for tpq in (1, 10080, 32767):
            put(f"{c}tpq_{tpq}.mid", _file([_song_track(rng, 48, tpq)], tpq), "keep")
        put(f"{c}tpq_0.mid", _raw_file(b"", 0), "reject")
        put(f"{c}tpq_smpte.mid", _raw_file(b"", 0xE728), "reject")
        # The case behind the out-of-memory kill: tpq 1, 1/64 meter, one note far away.
        far = _song_track(rng, 1, 1)
        far.insert(1, mido.Message("note_on", note=50, velocity=80, time=10**7))
        far.insert(2, mido.Message("note_off", note=50, time=1))
        put(f"{c}far_note_tpq1.mid", _file([_meta_track(_time_signature(1, 64)), far], 1), "reject")
        late = _song_track(rng, 8, 480)
        late.append(mido.MetaMessage("marker", text="late", time=2 * 10**9))
        put(f"{c}late_meta_event.mid", _file([late]), "keep")
        # Odd and changing meters, off-grid slivers, impossible denominators.
        meters = [_time_signature(n, d, time=480 * 4 if i else 0) for i, (n, d) in enumerate(
            [(7, 8), (13, 16), (5, 4), (1, 64), (27, 64), (3, 4), (3, 4), (12, 8), (2, 2)]
        )]  # fmt: skip
        put(f"{c}changing_meters.mid", _file([_meta_track(*meters), _song_track(rng, 64, 480)]),
            "keep")  # fmt: skip
        every_tick = [_time_signature(int(rng.integers(1, 16)), 4, time=1) for _ in range(3000)]
        put(f"{c}meter_every_tick.mid", _file([_meta_track(*every_tick),
            _song_track(rng, 64, 480)]), "keep")  # fmt: skip
        for name, exponent in (("denominator_2pow7", 7), ("denominator_2pow255", 255)):
            put(f"{c}{name}.mid", _raw_file(_raw_time_signature(3, exponent)), "keep")
        put(f"{c}numerator_0.mid", _raw_file(_raw_time_signature(0, 2)), "reject")
        # Durations: zero, "negative" (the off comes first), offs without ons, ons without offs.
        events = [
            mido.Message("note_on", note=60, velocity=80, time=0),
            mido.Message("note_off", note=60, time=0),
            mido.Message("note_off", note=62, time=240),
            mido.Message("note_on", note=62, velocity=80, time=0),
            mido.Message("note_off", note=70, time=240),
            mido.Message("note_on", note=64, velocity=80, time=0),
            mido.Message("note_off", note=64, time=480),
            mido.Message("note_on", note=64, velocity=80, time=0),
            mido.Message("note_on", note=64, velocity=80, time=120),
            mido.Message("note_off", note=64, time=480),
        ]
        put(f"{c}odd_durations.mid", _file([mido.MidiTrack(events)]), "keep")
        offs = [mido.Message("note_off", note=int(n), time=120) for n in rng.integers(0, 128, 50)]
        put(f"{c}only_note_offs.mid", _file([mido.MidiTrack(offs)]), "reject")
        # Many tracks, drums only, very long songs, file types 0 and 2.
        many = [_song_track(rng, 4, 480, channel=i % 16, program=i % 128) for i in range(300)]
        put(f"{c}tracks_300.mid", _file(many), "keep")
        put(f"{c}tracks_1100.mid", _file([mido.MidiTrack()] * 1100 + many[:1]), "reject")
        put(f"{c}drums_only.mid", _file([_song_track(rng, 64, 480, channel=9, pitch=40)]), "keep")
        put(f"{c}long_song.mid", _file([_song_track(rng, 12_000, 480)]), "keep")
        put(f"{c}long_song_10080.mid", _file([_song_track(rng, 6_000, 10080)], 10080), "keep")
        put(f"{c}too_long.mid", _file([_song_track(rng, 2, 480, step=480 * 30_000)]), "reject")
        put(f"{c}type0.mid", _file([_song_track(rng, 32, 480)], kind=0), "keep")
        put(f"{c}type2.mid", _file([_song_track(rng, 16, 480)] * 3, kind=2), "keep")
    return expect


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    written = write_corpus(args.out_dir, args.seed, args.copies)
    print(f"{len(written)} files in {args.out_dir}")
