"""Do the score's barlines survive the chorale export? (issue 11, point 3)

    python -m benchmarks.chorale_barlines [N]

For the first N Bach chorales of the music21 corpus (default 40): how many have a pickup, and
for how many every score barline (first measure of each number) is one of our bar starts, when
reading music21's own MIDI export (before) and our export (`chorale_export`, after).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
from fractions import Fraction

from data_pipelines import chorale_export, datasets
from phrase_jax.music import bar_grid, midi_io


def _bar_starts(song) -> set[Fraction]:
    starts, position = set(), Fraction(0)
    for bar in song.bars:
        starts.add(position)
        position += bar_grid.quarters(bar.time_signature)
    return starts


def _barlines_kept(path: pathlib.Path, score_starts: list[Fraction]) -> bool:
    song = midi_io.midi_to_song(midi_io.load_midi(path))
    starts = _bar_starts(song)
    return set(score_starts[: len(starts)]) <= starts


def main(n: int) -> None:
    import music21

    folder = pathlib.Path(tempfile.mkdtemp())
    sources = datasets.get_dataset("chorales").list_sources(None, str(folder))[:n]
    pickups = before = after = 0
    for source in sources:
        score = music21.converter.parse(source.path)
        first_of_number = {}
        for measure in chorale_export._satb_parts(score)[0].getElementsByClass("Measure"):
            first_of_number.setdefault(measure.number, Fraction(measure.offset))
        score_starts = sorted(first_of_number.values())
        ours = folder / f"{source.name}.mid"
        pickups += chorale_export.export_chorale_midi(source.path, str(ours)) > 0
        theirs = folder / f"{source.name}.music21.mid"
        music21.defaults.ticksPerQuarter = chorale_export.TICKS_PER_QUARTER
        theirs.write_bytes(music21.midi.translate.streamToMidiFile(score).writestr())
        before += _barlines_kept(theirs, score_starts)
        after += _barlines_kept(ours, score_starts)
    print(
        f"{len(sources)} chorales, {pickups} with a pickup; every score barline is a bar: "
        f"music21's MIDI {before}, our export {after}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
