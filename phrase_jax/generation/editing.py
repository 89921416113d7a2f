"""What an edit keeps and what it writes (issue 14), without a model: the request, its plan over
the LDM's slots, and the merge of written phrases with the kept notes.

    request = EditRequest(task="infill", bars="5-8")
    plan = plan_edit(request, song, slots_per_bar=4, model_bars=128, track_choice="keep_drums")
    edited, stats = merge(song, plan, written_bars)      # written_bars: decoded, normalised key

Tasks (bars are numbered from 1, inclusive):
- `continue`: keep bars 1..keep_bars (0: all of them), write bars up to `bars` in total;
- `infill`: rewrite `bars` "a-b", or the bars of `section` ("B" the first B section, "B2" the
  second) of a song with section labels;
- `accompany`: keep the `tracks` ("MELODY", "13,0": names or programs), write the others;
- `retrack`: rewrite the one `track` in the whole song, keep the others.

Slots follow `layout.song_slots`: in a kept bar every slot is known; a bar's track slots are
written where the task writes; `b-1` slots and the `[SEP]` padding after the song are always
known (the song's bars and length are fixed). In `accompany` the kept tracks' slots stay known
and the other track slots of the bar (free `[INST]` slots included) are written; in `retrack`
the track's slots and the free slots are. Kept notes come from the input as read, never from a
decoder; a written phrase for an instrument the bar keeps (or, in `retrack`, for any other
instrument than the track) is dropped, so it never doubles or overwrites a kept track.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from phrase_jax import errors
from phrase_jax.generation.edit_input import EditInput, resolve_track
from phrase_jax.music import keys, layout
from phrase_jax.music.events import Bar, Song

TASKS = ("continue", "infill", "accompany", "retrack")


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """One task and its arguments as the config gives them (see the module docstring)."""

    task: str
    bars: str = ""  # infill: "a-b"
    section: str = ""  # infill: a section label, "B" or "B2"
    tracks: str = ""  # accompany: names or programs, comma-separated
    track: str = ""  # retrack: one name or program
    keep_bars: int = 0  # continue: bars kept from the start (0 = the whole input)
    total_bars: int = 0  # continue: bars of the result

    def check(self) -> None:
        """What needs no song: the task and that it has its arguments."""
        if self.task not in TASKS:
            raise errors.UserError(f"config task={self.task!r}: one of {TASKS}")
        needs = {
            "infill": bool(self.bars) != bool(self.section),
            "accompany": bool(self.tracks.strip()),
            "retrack": bool(self.track.strip()),
            "continue": self.total_bars > 0 and self.keep_bars >= 0,
        }
        if not needs[self.task]:
            hint = {
                "infill": "give bars=a-b or section=LABEL (one of them)",
                "accompany": "give tracks=NAME_OR_PROGRAM[,...] (the tracks to keep)",
                "retrack": "give track=NAME_OR_PROGRAM (the track to rewrite)",
                "continue": "give bars=N (bars in total) and keep_bars=K >= 0 (0: all)",
            }[self.task]
            raise errors.UserError(f"config task={self.task}: {hint}")


@dataclasses.dataclass
class EditPlan:
    """`n_bars`: bars of the result; `keep_slots` bool [model slots]: known slots;
    `write_slots` bool [model slots]: the track slots the model writes (decoded);
    `kept_programs[k]`: the programs whose input notes bar k keeps; `only_program`: in
    `retrack`, the one program a written phrase may have; `sections`: the result's sections
    (None when unknown); `summary`: what edit.json records about the request."""

    n_bars: int
    keep_slots: np.ndarray
    write_slots: np.ndarray
    kept_programs: list[frozenset[int]]
    only_program: int | None
    sections: list[tuple[str, int]] | None
    summary: dict
    slots_per_bar: int = layout.DEFAULT_SLOTS_PER_BAR

    @property
    def written_bars(self) -> list[int]:
        """0-based bars with at least one written slot."""
        return sorted({int(s) // self.slots_per_bar for s in np.flatnonzero(self.write_slots)})


def parse_bar_range(text: str, n_bars: int) -> tuple[int, int]:
    """ "5-8" -> (4, 8): 0-based start, end exclusive; "5" is one bar. Bars must lie in the song."""
    try:
        parts = [int(p) for p in text.replace(" ", "").split("-")]
        first, last = (parts[0], parts[-1]) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        first, last = 0, -1
    if not 1 <= first <= last:
        raise errors.UserError(f"config bars={text!r}: want a-b with 1 <= a <= b, e.g. 5-8")
    if last > n_bars:
        raise errors.UserError(
            f"config bars={text!r}: the song has {n_bars} bars (counted from its first note)"
        )
    return first - 1, last


def section_bars(sections: list[tuple[str, int]] | None, label: str) -> tuple[int, int]:
    """The bars [start, end) of section `label` ("B": the first B, "B2": the second)."""
    if not sections:
        raise errors.UserError(
            f"config section={label!r}: the song has no section labels; give sections=... "
            "(e.g. i4A8B8o4) or use bars=a-b"
        )
    kind, count = label[:1], label[1:]
    occurrence = int(count) if count.isdigit() else 1 if not count else 0
    start, seen = 0, 0
    for section_kind, length in sections:
        if section_kind == kind:
            seen += 1
            if seen == occurrence:
                return start, start + length
        start += length
    found = "".join(f"{k}{n}" for k, n in sections)
    raise errors.UserError(f"config section={label!r}: no such section in {found}")


def _bar_slots(song: Song, slots_per_bar: int, track_choice: str) -> list[list[int | None]]:
    """Per bar, the program each track slot holds (None: a free `[INST]` slot)."""
    track_slots = slots_per_bar - 1
    rows = []
    for bar in song.bars:
        programs: list[int | None] = list(layout.chosen_programs(bar, track_slots, track_choice))
        rows.append(programs + [None] * (track_slots - len(programs)))
    return rows


def plan_edit(
    request: EditRequest,
    song: EditInput,
    *,
    slots_per_bar: int,
    model_bars: int,
    track_choice: str,
    sections: list[tuple[str, int]] | None = None,
) -> EditPlan:
    """The slots to keep and to write for `request` on `song`; UserError for a request the song
    or the model cannot take (bars outside the song, an unknown track, a song longer than the
    model's bars). `sections`: the song's labels (the input's own when None)."""
    request.check()
    sections = sections if sections is not None else song.original.sections
    n_in = song.n_bars
    n_bars = request.total_bars if request.task == "continue" else n_in
    if n_bars > model_bars:
        what = "bars" if request.task == "continue" else f"the song ({song.path}) has"
        raise errors.UserError(
            f"config {what}={n_bars}: more bars than the model's {model_bars}"
            if request.task == "continue"
            else f"{what} {n_bars} bars, more than the model's {model_bars}; cut it first"
        )
    layout_rows = _bar_slots(song.normalized, slots_per_bar, track_choice)
    everything = frozenset(range(129))
    write = np.zeros((model_bars, slots_per_bar), bool)  # track slots only; b-1 stays known
    kept = [everything] * n_bars
    only_program = None
    summary: dict = {"task": request.task}
    if request.task == "continue":
        keep_bars = request.keep_bars or n_in
        if keep_bars > n_in or keep_bars >= n_bars:
            raise errors.UserError(
                f"config keep_bars={request.keep_bars}, bars={n_bars}: keep at most the song's "
                f"{n_in} bars and fewer than bars"
            )
        write[keep_bars:n_bars, :-1] = True
        kept = [everything] * keep_bars + [frozenset()] * (n_bars - keep_bars)
        summary.update(kept_bars=[1, keep_bars], written_bars=[keep_bars + 1, n_bars])
    elif request.task == "infill":
        if request.bars:
            start, end = parse_bar_range(request.bars, n_in)
        else:
            start, end = section_bars(sections, request.section.strip())
            summary["section"] = request.section.strip()
        write[start:end, :-1] = True
        kept = [frozenset() if start <= k < end else everything for k in range(n_bars)]
        summary.update(written_bars=[start + 1, end])
    else:
        if request.task == "accompany":
            names = [t for t in request.tracks.split(",") if t.strip()]
            keep_programs = frozenset(resolve_track(song, t, "tracks") for t in names)
        else:
            only_program = resolve_track(song, request.track, "track")
            keep_programs = everything - {only_program}
        for k, row in enumerate(layout_rows):
            for j, program in enumerate(row):
                write[k, j] = program is None or program not in keep_programs
        kept = [keep_programs] * n_bars
        key = "kept_tracks" if request.task == "accompany" else "rewritten_track"
        summary[key] = sorted(keep_programs) if request.task == "accompany" else only_program
    write = write.reshape(-1)
    keep = ~write
    return EditPlan(
        n_bars=n_bars,
        keep_slots=keep,
        write_slots=write,
        kept_programs=kept,
        only_program=only_program,
        sections=sections,
        summary=summary,
        slots_per_bar=slots_per_bar,
    )


@dataclasses.dataclass
class MergeStats:
    """Written phrases dropped by the merge: for a kept instrument (`doubling_kept`), for
    another instrument than a retrack's (`other_program`); notes past their bar's end."""

    written_notes: int = 0
    doubling_kept: int = 0
    other_program: int = 0
    notes_past_bar_end: int = 0


def _one_note_per_onset(notes) -> list:
    """Two slots that wrote one instrument may repeat a note; a track holds one note per onset
    and pitch (the longest), as MIDI reading resolves it (`midi_io`)."""
    longest = {}
    for note in notes:
        key = (note.onset, note.pitch)
        if key not in longest or note.duration > longest[key].duration:
            longest[key] = note
    return sorted(longest.values(), key=lambda n: (n.onset, -n.pitch))


def merge(song: EditInput, plan: EditPlan, written: Song) -> tuple[Song, MergeStats]:
    """The edited song in the input's key: kept notes as read, written notes (decoded in the
    normalised key, `written.bars[k]` for bar k) moved back by the key shift. Bars past the
    input (a continuation) take the last input bar's tempo and time signature."""
    stats = MergeStats()
    back = keys.transpose(written, -song.key_shift)
    last = song.original.bars[-1]
    bars = []
    for k in range(plan.n_bars):
        source = song.original.bars[k] if k < song.n_bars else None
        template = source or last
        tracks = {
            program: list(notes)
            for program, notes in (source.tracks.items() if source else ())
            if program in plan.kept_programs[k] and notes
        }
        written_bar = back.bars[k] if k < len(back.bars) else Bar()
        for program, notes in written_bar.tracks.items():
            if plan.only_program is not None and program != plan.only_program:
                stats.other_program += 1
                continue
            if program in tracks or program in plan.kept_programs[k]:
                stats.doubling_kept += 1
                continue
            inside = _one_note_per_onset(n for n in notes if n.onset < template.length)
            stats.notes_past_bar_end += sum(n.onset >= template.length for n in notes)
            if inside:
                tracks[program] = inside
                stats.written_notes += len(inside)
        bars.append(
            Bar(tracks=tracks, time_signature=template.time_signature, tempo=template.tempo)
        )
    name = f"{song.original.name}_edited" if song.original.name else "edited"
    return Song(bars=bars, name=name, sections=plan.sections), stats


def written_regions(plan: EditPlan) -> list[frozenset[int]]:
    """Per result bar, the programs whose notes there were written (the piano roll's marks):
    none in a bar without written slots, every program the bar does not keep otherwise."""
    written = set(plan.written_bars)
    everything = frozenset(range(129))
    return [
        everything - plan.kept_programs[k] if k in written else frozenset()
        for k in range(plan.n_bars)
    ]
