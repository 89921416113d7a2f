"""Which bars do POP909's section labels count? (issue 11, point 2)

    python -m benchmarks.pop909_bar_fit POP909_DIR [STRUCTURE_DIR] [N]

For the first N songs (default all): the bar count of each reading (`default`: bars from
`beat_midi.txt` downbeats, 16th notes; `remiz`: REMI-z's bars from the MIDI ticks) before and
after dropping silent end bars, against the total of `human_label1.txt`: how many equal it, are
within one bar, and are up to 6 bars longer (what the `trim` section rule accepts).

STRUCTURE_DIR is the POP909 folder of Dai et al.'s structure analysis
(github.com/Dsqvival/hierarchical-structure-analysis), whose `melody.txt` (pitch, 16ths) is the
16th-note grid the labels were made on and the grid of the phrase-split data the reference
built its songs from. With it, each reading's melody is laid over that grid: the shift (in 16ths)
that lines up the most melody notes, and how many notes then line up. A shift that is a whole
number of bars means the reading's barlines are the labels' barlines; a shift of 0 after the
silent end bars are dropped means `prepare`'s labels (counted from the first kept bar) sit on the
bars they name.
"""

from __future__ import annotations

import collections
import pathlib
import sys
import time

import mido

from data_pipelines import datasets
from phrase_jax.music import events

MELODY = datasets.POP909_PROGRAMS["MELODY"]
STEP = 3  # grid positions per 16th note
MAX_SHIFT = 16 * 16  # 16 bars of 16ths either way


def melody_onsets(song: events.Song) -> collections.Counter:
    """(16th from the song start, pitch) of every melody note; off-grid onsets are rounded."""
    onsets, start = collections.Counter(), 0
    for bar in song.bars:
        for note in bar.tracks.get(MELODY, []):
            onsets[(round((start + note.onset) / STEP), note.pitch)] += 1
        start += bar.length
    return onsets


def structure_melody(path: pathlib.Path) -> tuple[collections.Counter, int]:
    """Dai et al.'s melody.txt rows `pitch sixteenths` (pitch 0 = rest) -> onsets, length."""
    onsets, cursor = collections.Counter(), 0
    for row in path.read_text().split("\n"):
        if row.strip():
            pitch, length = (int(v) for v in row.split()[:2])
            if pitch:
                onsets[(cursor, pitch)] += 1
            cursor += length
    return onsets, cursor


def best_shift(ours: collections.Counter, theirs: collections.Counter) -> tuple[int, int]:
    """The shift s (16ths) with the most notes at (t + s, pitch) in both; (shift, matches)."""
    votes = collections.Counter()
    ours_by_pitch = collections.defaultdict(list)
    for t, pitch in ours:
        ours_by_pitch[pitch].append(t)
    for (t, pitch), _ in theirs.items():
        for mine in ours_by_pitch.get(pitch, ()):
            if abs(mine - t) <= MAX_SHIFT:
                votes[mine - t] += 1
    if not votes:
        return 0, 0
    return votes.most_common(1)[0]


def main(root: pathlib.Path, structure: pathlib.Path | None, limit: int) -> None:
    spec = datasets.get_dataset("pop909")
    sources = spec.list_sources(str(root), "")[:limit]
    table = collections.defaultdict(collections.Counter)
    for source in sources:  # the meters the files declare (REMI-z's tick bars follow them)
        midi = mido.MidiFile(source.path)
        meters = sorted(
            {
                (m.numerator, m.denominator)
                for t in midi.tracks
                for m in t
                if m.type == "time_signature"
            }
        )
        table["declared meters"][" + ".join(f"{n}/{d}" for n, d in meters) or "none"] += 1
    for reading in datasets.READINGS:
        settings = datasets.DatasetSettings(
            reading=reading, section_rule="none", trim_silent_bars=False
        )
        began = time.time()
        for source in sources:
            loaded = spec.load(source, settings, "")
            total = loaded.info.get("section_bars")
            if total is None:
                table[reading]["no usable labels"] += 1
                continue
            untrimmed = len(loaded.song.bars)
            trimmed_song, _, _ = datasets.trim_silent_bars(loaded.song)
            for name, n_bars in (
                ("all bars", untrimmed),
                ("silent ends dropped", len(trimmed_song.bars)),
            ):
                table[reading][f"{name}: == labels"] += n_bars == total
                table[reading][f"{name}: within 1"] += abs(n_bars - total) <= 1
                table[reading][f"{name}: 0..6 longer"] += 0 <= n_bars - total <= 6
            melody_path = structure / source.name / "melody.txt" if structure else None
            if melody_path is not None and melody_path.exists():
                theirs, length = structure_melody(melody_path)
                if reading == datasets.READINGS[0]:
                    table["structure"]["melody.txt length == labels x 16"] += length == 16 * total
                    table["structure"]["melody.txt within 1 bar"] += abs(length - 16 * total) < 16
                shift, matches = best_shift(melody_onsets(loaded.song), theirs)
                n_notes = sum(theirs.values())
                table[reading]["melody notes (structure)"] += n_notes
                table[reading]["melody notes lined up"] += matches
                table[reading]["songs: shift a whole number of bars"] += shift % 16 == 0
                if shift % 16 == 0:
                    table[reading][f"songs: shift {shift // 16:+d} bars"] += 1
                table[reading]["songs: >= 90% notes lined up"] += matches >= 0.9 * n_notes
                # Where `prepare` puts the labels: from the first bar left after trimming.
                trimmed_shift, _ = best_shift(melody_onsets(trimmed_song), theirs)
                table[reading]["songs: labels start at the first kept bar"] += trimmed_shift == 0
        table[reading]["seconds"] = round(time.time() - began)
    print(f"{len(sources)} songs")
    for reading, counts in table.items():
        print(f"[{reading}]")
        for key in sorted(counts):
            print(f"  {key}: {counts[key]}")


if __name__ == "__main__":
    structure_dir = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    main(
        pathlib.Path(sys.argv[1]),
        structure_dir,
        int(sys.argv[3]) if len(sys.argv) > 3 else 10**6,
    )
