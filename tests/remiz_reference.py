"""The reference tokenizer (REMI-z 0.7.4, `pip install remi-z`, the parity extra) on a MIDI file,
for comparing our readings with it.

    python tests/remiz_reference.py POP909_DIR [N]    # agreement on the first N songs

prints how many songs' tokens equal REMI-z's, for the remiz reading and for the default reading
on the file's tick grid (`midi_io`, no beat annotations, no snapping).

The 0.7.4 wheel lacks the two YAML tables its repository has (`dict_time_signature.yaml`,
`dict_tempo.yaml`); `MultiTrack` loads the first on construction. `reference_tokens` gives it
the equivalent tables built from our vocabulary (the same MusicBERT time-signature table and
tempo bins), without writing into the installed package.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import sys

from phrase_jax.music import midi_io, remiz_reading, tokenizer, vocab


def _tables(path) -> dict:
    name = pathlib.Path(path).name
    if name == "dict_time_signature.yaml":
        return {f"s-{i}": list(ts) for i, ts in enumerate(vocab.TIME_SIGNATURES)}
    if name == "dict_tempo.yaml":
        return {f"t-{i}": vocab.tempo_from_bin(i) for i in range(vocab.NUM_TEMPOS)}
    raise FileNotFoundError(path)


@contextlib.contextmanager
def reference_tables():
    """REMI-z with the two tables its wheel lacks, built from our vocabulary; its prints
    silenced."""
    from remi_z import multitrack, time_signature_utils

    modules = (multitrack, time_signature_utils)
    saved = [module.read_yaml for module in modules]
    for module in modules:
        module.read_yaml = _tables
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield multitrack
    finally:
        for module, read_yaml in zip(modules, saved, strict=True):
            module.read_yaml = read_yaml


def reference_tokens(path: str) -> list[str]:
    """REMI-z's tokens of a MIDI file (no time signature, tempo or velocity; drums left out)."""
    with reference_tables() as multitrack:
        return multitrack.MultiTrack.from_midi(str(path)).to_remiz_str().split()


def write_with_reference(tokens: list[str], path: str) -> None:
    """REMI-z writes `tokens` as a MIDI file (as the reference system wrote its songs)."""
    with reference_tables() as multitrack:
        song = multitrack.MultiTrack.from_remiz_str(" ".join(tokens), verbose=False)
        song.to_midi(str(path), verbose=False)


def our_tokens(path: str) -> list[str]:
    """Our tokens of the same file in the REMI-z reading mode."""
    song = remiz_reading.load_song_remiz(path)
    return vocab.Vocab().decode(tokenizer.song_tokens(song))


if __name__ == "__main__":
    root = pathlib.Path(sys.argv[1])
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 10**6
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())[:limit]
    same = same_default = notes = 0
    for folder in folders:
        midi_path = folder / f"{folder.name}.mid"
        ours, theirs = our_tokens(midi_path), reference_tokens(midi_path)
        default_song = midi_io.midi_to_song(midi_io.load_midi(midi_path))
        same += ours == theirs
        same_default += vocab.Vocab().decode(tokenizer.song_tokens(default_song)) == theirs
        notes += sum(t.startswith("p-") for t in theirs)
        if ours != theirs:
            print(f"{folder.name}: {len(ours)} vs {len(theirs)} tokens")
    print(
        f"token-identical to REMI-z: remiz reading {same}/{len(folders)} songs, default reading "
        f"{same_default}/{len(folders)} ({notes} reference notes)"
    )
