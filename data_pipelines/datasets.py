"""The dataset table: one entry per source of songs (`pop909`, `midi`, `chorales`).

Each entry lists the songs of a dataset (cheap: names and paths only) and loads one song into
`events.Song`, with dataset facts for the manifest. `prepare.py` runs the loaders in worker
processes and does everything after loading (key normalisation, tokens, layouts) the same way
for every dataset, so a new dataset is one lister and one loader here.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import re
from collections.abc import Callable

import numpy as np

from data_pipelines import chorale_export
from phrase_jax.music import events, keys, layout, midi_io, midi_limits, remiz_reading

# POP909 track names -> General MIDI programs (SPEC 1.6: melody, secondary melody, piano).
POP909_PROGRAMS = {"MELODY": 13, "BRIDGE": 25, "PIANO": 0}
CHORALE_PROGRAMS = chorale_export.CHORALE_PROGRAMS
MIDI_SUFFIXES = (".mid", ".midi", ".kar")
READINGS = ("default", "remiz")
_SECTION_LABEL = re.compile(r"([A-Za-z])(\d+)")


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
    """Everything that changes what a loaded song looks like (part of the cache key)."""

    quantize_step: int = 3  # grid steps; 3 = 16th notes on the 12-per-quarter grid
    normalize_key: bool = True  # SPEC 1.5: transpose to C major / A minor
    trim_silent_bars: bool = True  # drop empty bars before the first and after the last note
    slots_per_bar: int = 4  # LDM layout width: slots_per_bar - 1 track phrases + b-1
    # Which tracks a bar with more tracks than slots keeps (layout.TRACK_CHOICES).
    track_choice: str = "keep_drums"
    # How notes are read from MIDI: "default" (midi_io: the tick grid, or POP909's beat
    # annotations, snapped to `quantize_step`, same-pitch overlaps resolved, drums kept) or
    # "remiz" (remiz_reading: token for token what the reference tokenizer REMI-z reads; no
    # snapping, no beat annotations, drums left out). POP909 keeps "default": the reference's
    # POP909 bars are its section labels' bars; the downbeat annotations give those barlines in
    # 556/909 songs, the MIDI's ticks in 48/909 (docs/design.md, "Prepared data").
    reading: str = "default"
    with_velocity: bool = False
    max_bars: int = 128  # longer songs stay in the VAE corpus but not in `songs`
    # How POP909 section labels must fit the bar count for a song to enter `songs` (the LDM
    # corpus). "exact": label total == bar count (ref rule). "trim": also accept a label total
    # up to `section_slack` bars shorter than the song and cut the unlabeled tail bars (the
    # labels are aligned at the first bar; the tail is usually a held final chord). "none": keep
    # every song, sections where they fit exactly, else None.
    section_rule: str = "trim"
    section_slack: int = 6
    # What reading one MIDI file may cost (bars, notes, length, tracks, resolution, size).
    read_limits: midi_limits.ReadLimits = midi_limits.ReadLimits()

    def validate(self) -> None:
        if self.quantize_step < 1:
            raise ValueError(f"quantize_step must be >= 1, got {self.quantize_step}")
        if self.slots_per_bar < 2:
            raise ValueError(
                f"slots_per_bar must be >= 2 (one phrase + b-1), got {self.slots_per_bar}"
            )
        if self.reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {self.reading!r}")
        if self.track_choice not in layout.TRACK_CHOICES:
            raise ValueError(
                f"track_choice must be one of {layout.TRACK_CHOICES}, got {self.track_choice!r}"
            )
        if self.section_rule not in ("exact", "trim", "none"):
            raise ValueError(f"section_rule must be exact, trim or none, got {self.section_rule!r}")
        if self.max_bars < 1 or self.section_slack < 0:
            raise ValueError("max_bars must be >= 1 and section_slack >= 0")
        self.read_limits.validate()


@dataclasses.dataclass(frozen=True)
class SongSource:
    """One song to load. `name` is unique in the dataset and stable across runs."""

    name: str
    path: str  # the MIDI file (POP909: NNN/NNN.mid; chorales: the music21 corpus score)


@dataclasses.dataclass
class LoadedSong:
    song: events.Song
    # Whether the song may enter the LDM corpus, and why not; None = no dataset rule applies.
    ldm_reject: str | None = None
    info: dict = dataclasses.field(default_factory=dict)  # facts for the manifest
    # Notes (and tracks) left out while reading, by reason.
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    default_slots_per_bar: int
    # (input_dir or None, work_dir) -> sources, sorted by name
    list_sources: Callable[[str | None, str], list[SongSource]]
    # (source, settings, work_dir) -> LoadedSong; raises ValueError for unusable input
    load: Callable[[SongSource, DatasetSettings, str], LoadedSong]
    needs_input_dir: bool = True


def read_song(
    path: str, settings: DatasetSettings, name: str, **song_args
) -> tuple[events.Song, collections.Counter, dict]:
    """One MIDI file within `settings.read_limits` -> (song, dropped by reason, info), read as
    `settings.reading` says (the remiz reading ignores beat annotations and quantize_step)."""
    if settings.reading == "remiz":
        dropped = collections.Counter()
        song = remiz_reading.load_song_remiz(
            path,
            name=name,
            limits=settings.read_limits,
            track_programs=song_args.get("track_programs"),
            dropped=dropped,
        )
        return song, dropped, {"reading": "remiz"}
    pm, report = midi_limits.read_midi(path, settings.read_limits)
    dropped = collections.Counter(report.dropped)
    song = midi_io.midi_to_song(
        pm, name=name, quantize_step=settings.quantize_step, dropped=dropped, **song_args
    )
    info = {"midi_warnings": report.warnings} if report.warnings else {}
    return song, dropped, info


def trim_silent_bars(song: events.Song) -> tuple[events.Song, int, int]:
    """Drops empty bars at both ends; returns (song, n_leading_dropped, n_trailing_dropped)."""
    filled = [i for i, bar in enumerate(song.bars) if any(bar.tracks.values())]
    if not filled:
        return dataclasses.replace(song, bars=[]), len(song.bars), 0
    first, last = filled[0], filled[-1]
    trailing = len(song.bars) - 1 - last
    return dataclasses.replace(song, bars=song.bars[first : last + 1]), first, trailing


def parse_section_label(text: str) -> list[tuple[str, int]]:
    """`"i4A4B8o3"` -> `[("i", 4), ("A", 4), ("B", 8), ("o", 3)]`; ValueError if malformed."""
    text = text.strip()
    pairs = [(kind, int(n)) for kind, n in _SECTION_LABEL.findall(text)]
    if not pairs or "".join(f"{k}{n}" for k, n in pairs) != text or min(n for _, n in pairs) < 1:
        raise ValueError(f"malformed section label {text[:40]!r}: want letter+bars pairs")
    return pairs


def fit_sections(
    song: events.Song, sections: list[tuple[str, int]], settings: DatasetSettings
) -> tuple[events.Song, str | None, int]:
    """Applies `settings.section_rule`; returns (song with sections set, ldm_reject, tail cut)."""
    n_bars, total = len(song.bars), sum(n for _, n in sections)
    if total == n_bars:
        return dataclasses.replace(song, sections=list(sections)), None, 0
    reason = f"section labels total {total} bars != {n_bars} bars"
    if settings.section_rule == "trim" and 0 < n_bars - total <= settings.section_slack:
        cut = n_bars - total
        return dataclasses.replace(song, bars=song.bars[:total], sections=list(sections)), None, cut
    if settings.section_rule == "none":
        reason = None
    return dataclasses.replace(song, sections=None), reason, 0


def _key_agreement(song: events.Song, label_path: pathlib.Path) -> dict:
    """Compares the key detector (SPEC 1.5) with POP909's analyzed_key.txt."""
    try:
        label_tonic, label_minor = keys.parse_key_label(label_path.read_text().strip())
    except (OSError, ValueError) as err:
        return {"key_label_error": str(err).splitlines()[0][:120]}
    tonic, is_minor, _ = keys.detect_key(song)
    # Relative keys share a scale: C major == A minor for transposition purposes.
    relative = (tonic + (3 if is_minor else 0)) % 12 == (
        label_tonic + (3 if label_minor else 0)
    ) % 12
    return {
        "key_exact_agree": bool(tonic == label_tonic and is_minor == label_minor),
        "key_scale_agree": bool(relative),
    }


# ---------------------------------------------------------------------------------------------
# POP909


def _list_pop909(input_dir: str | None, work_dir: str) -> list[SongSource]:
    del work_dir
    if not input_dir or not os.path.isdir(input_dir):
        raise FileNotFoundError(
            f"POP909 folder {input_dir!r} not found: set input_dir (experiments/prepare.py) "
            "or --pop909_dir"
        )
    root = pathlib.Path(input_dir)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not names:
        raise FileNotFoundError(f"{input_dir}: no song folders NNN/ inside; is this POP909?")
    return [SongSource(name, str(root / name / f"{name}.mid")) for name in names]


def _read_pop909_beats(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """beat_midi.txt rows `time_s half_bar_flag downbeat_flag` -> (beat times, downbeat times)."""
    try:
        rows = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable beat file ({err})") from None
    if rows.shape[1] < 3 or len(rows) < 2:
        raise ValueError(f"{path}: expected rows 'time half_bar downbeat', got shape {rows.shape}")
    beats, downbeats = rows[:, 0], rows[rows[:, 2] == 1, 0]
    if len(downbeats) == 0:
        raise ValueError(f"{path}: no downbeat rows (third column 1)")
    return beats, downbeats


def _load_pop909(source: SongSource, settings: DatasetSettings, work_dir: str) -> LoadedSong:
    del work_dir
    folder = pathlib.Path(source.path).parent
    beats, downbeats = _read_pop909_beats(folder / "beat_midi.txt")
    song, dropped, info = read_song(
        source.path,
        settings,
        source.name,
        beat_times=beats,
        downbeat_times=downbeats,
        track_programs=POP909_PROGRAMS,
    )
    info["bars_from_downbeats"] = len(song.bars)
    if settings.trim_silent_bars:
        song, lead, tail = trim_silent_bars(song)
        info.update(silent_bars_dropped_start=lead, silent_bars_dropped_end=tail)
    info.update(_key_agreement(song, folder / "analyzed_key.txt"))
    try:
        sections = parse_section_label((folder / "human_label1.txt").read_text())
    except (OSError, ValueError) as err:
        info["section_error"] = str(err).splitlines()[0][:120]
        reject = None if settings.section_rule == "none" else "no usable section labels"
        return LoadedSong(dataclasses.replace(song, sections=None), reject, info, dropped)
    info["section_bars"] = sum(n for _, n in sections)
    notes_before = _note_count(song)
    song, reject, cut = fit_sections(song, sections, settings)
    info["tail_bars_cut_to_labels"] = cut
    if cut_notes := notes_before - _note_count(song):
        dropped["notes: in tail bars past the section labels"] += cut_notes
    return LoadedSong(song, reject, info, dropped)


def _note_count(song: events.Song) -> int:
    return sum(len(notes) for bar in song.bars for notes in bar.tracks.values())


# ---------------------------------------------------------------------------------------------
# Any folder of MIDI files


def _list_midi_folder(input_dir: str | None, work_dir: str) -> list[SongSource]:
    del work_dir
    if not input_dir or not os.path.isdir(input_dir):
        raise FileNotFoundError(
            f"MIDI folder {input_dir!r} not found: set input_dir (experiments/prepare.py) "
            "or --midi_dir"
        )
    root = pathlib.Path(input_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{input_dir}: no .mid/.midi files found (searched recursively)")
    return [SongSource(str(p.relative_to(root)), str(p)) for p in files]


def _load_midi_file(source: SongSource, settings: DatasetSettings, work_dir: str) -> LoadedSong:
    del work_dir
    song, dropped, info = read_song(source.path, settings, source.name)
    if settings.trim_silent_bars:
        song, lead, tail = trim_silent_bars(song)
        info.update(silent_bars_dropped_start=lead, silent_bars_dropped_end=tail)
    return LoadedSong(song, None, info, dropped)


# ---------------------------------------------------------------------------------------------
# Bach chorales bundled with music21 (no download: the demo's default dataset)


def _list_chorales(input_dir: str | None, work_dir: str) -> list[SongSource]:
    del input_dir, work_dir
    from music21 import corpus  # heavy import, only for this dataset

    paths = corpus.getComposer("bach", fileExtensions=("mxl", "xml"))
    return sorted((SongSource(pathlib.Path(p).stem, str(p)) for p in paths), key=lambda s: s.name)


def _load_chorale(source: SongSource, settings: DatasetSettings, work_dir: str) -> LoadedSong:
    midi_dir = pathlib.Path(work_dir) / "chorale_midi"
    midi_dir.mkdir(parents=True, exist_ok=True)
    # Cached (the export is the slow part); the version names the export's format.
    midi_path = midi_dir / f"{source.name}.v{chorale_export.EXPORT_VERSION}.mid"
    if not midi_path.exists():
        chorale_export.export_chorale_midi(source.path, str(midi_path))
    song, dropped, info = read_song(str(midi_path), settings, source.name)
    info["midi"] = str(midi_path)
    if settings.trim_silent_bars:
        song, lead, tail = trim_silent_bars(song)
        info.update(silent_bars_dropped_start=lead, silent_bars_dropped_end=tail)
    return LoadedSong(song, None, info, dropped)


DATASETS: dict[str, DatasetSpec] = {
    "pop909": DatasetSpec("pop909", 4, _list_pop909, _load_pop909),
    "midi": DatasetSpec("midi", 4, _list_midi_folder, _load_midi_file),
    # Four voices need four phrase slots plus b-1.
    "chorales": DatasetSpec("chorales", 5, _list_chorales, _load_chorale, needs_input_dir=False),
}


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {sorted(DATASETS)}")
    return DATASETS[name]
