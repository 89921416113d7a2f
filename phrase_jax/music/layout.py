"""Song <-> slot sequence for the LDM (SPEC 1.7, 6).

Each bar becomes `slots_per_bar` slots: its track phrases in serialisation order (at most
`slots_per_bar - 1`), padded with the `[INST]` phrase, then the `b-1` phrase. Songs are padded to
a fixed number of slots with the `[SEP]` phrase. Assembly reads slots back by position: slot
`k * slots_per_bar + j` is track slot j of bar k, whatever a decoded slot claims to be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from phrase_jax.music import tokenizer, vocab
from phrase_jax.music.events import Song

# Lists, as docs/design.md fixes them (so `slot == INST_PHRASE` works on list slots); copy
# before appending to a slot list so the constants are never shared.
INST_PHRASE = [vocab.INST]
BAR_PHRASE = [vocab.BAR_END]
SEP_PHRASE = [vocab.SEP]
DEFAULT_SLOTS_PER_BAR = 4  # 3 track phrases + b-1 (ref)
DEFAULT_MAX_SLOTS = 512  # 128 bars of 4 slots (ref)
# Which tracks a bar keeps when it has more than `slots_per_bar - 1` (the rest are counted in
# `SlotLayout.dropped_tracks`); the kept ones stay in serialisation order:
#   "pitch_order": the first ones in serialisation order, highest average pitch first and drums
#                  last, so drums are the first thing lost (ref);
#   "keep_drums":  drums keep a slot, the other slots as "pitch_order" (the prepare default: a
#                  dataset with drums keeps them; identical to the ref on drum-free data);
#   "most_notes":  the tracks with the most notes (ties: serialisation order).
TRACK_CHOICES = ("pitch_order", "keep_drums", "most_notes")


@dataclasses.dataclass
class SlotLayout:
    """`slots`: slots_per_bar * n_bars phrases (token id lists); `dropped_tracks`: track phrases
    left out because a bar had more tracks than track slots."""

    slots: list[list[int]]
    n_bars: int
    dropped_tracks: int


def _check_slots_per_bar(slots_per_bar: int) -> None:
    if slots_per_bar < 2:
        raise ValueError(f"slots_per_bar must be >= 2 (tracks + b-1), got {slots_per_bar}")


def chosen_programs(bar, track_slots: int, track_choice: str = "pitch_order") -> list[int]:
    """The programs of `bar` that get a slot (see TRACK_CHOICES), in serialisation order."""
    if track_choice not in TRACK_CHOICES:
        raise ValueError(f"track_choice must be one of {TRACK_CHOICES}, got {track_choice!r}")
    order = tokenizer.phrase_order(bar)
    if len(order) <= track_slots:
        return order
    if track_choice == "keep_drums" and order[-1] == vocab.DRUM_PROGRAM:
        return order[: track_slots - 1] + [vocab.DRUM_PROGRAM]
    if track_choice == "most_notes":
        ranked = sorted(order, key=lambda p: (-len(bar.tracks[p]), order.index(p)))
        kept = set(ranked[:track_slots])
        return [p for p in order if p in kept]
    return order[:track_slots]


def song_slots(
    song: Song,
    slots_per_bar: int = DEFAULT_SLOTS_PER_BAR,
    with_velocity: bool = False,
    track_choice: str = "pitch_order",
) -> SlotLayout:
    """Lay a song out as slots. A bar with more tracks than `slots_per_bar - 1` keeps the ones
    `track_choice` names (TRACK_CHOICES) and counts the rest."""
    _check_slots_per_bar(slots_per_bar)
    track_slots = slots_per_bar - 1
    slots: list[list[int]] = []
    dropped = 0
    for bar in song.bars:
        programs = chosen_programs(bar, track_slots, track_choice)
        dropped += len(tokenizer.phrase_order(bar)) - len(programs)
        phrases = [tokenizer.phrase_tokens(p, bar.tracks[p], with_velocity) for p in programs]
        phrases += [list(INST_PHRASE) for _ in range(track_slots - len(phrases))]
        slots += phrases + [list(BAR_PHRASE)]
    return SlotLayout(slots=slots, n_bars=len(song.bars), dropped_tracks=dropped)


def pad_slots(
    slots: Sequence[Sequence[int]], max_slots: int = DEFAULT_MAX_SLOTS
) -> list[list[int]]:
    """Pad with `[SEP]` phrases to `max_slots`; a longer song is an error (cut it upstream)."""
    if len(slots) > max_slots:
        raise ValueError(
            f"song has {len(slots)} slots, more than max_slots={max_slots}; "
            "filter or cut long songs before padding"
        )
    padding = [list(SEP_PHRASE) for _ in range(max_slots - len(slots))]
    return [list(slot) for slot in slots] + padding


@dataclasses.dataclass
class AssemblyStats:
    """How far decoded slots disagree with their positions (SPEC 6 **Beyond**).

    `bar_slot_mismatches`: b-1 positions whose phrase is not exactly `b-1`;
    `misplaced_bar_ends`: track positions decoded as `b-1`; `misplaced_inst`: `[INST]` decoded at
    a b-1 position; `decode`: what the phrase decoder repaired."""

    n_bars: int = 0
    n_slots: int = 0
    bar_slot_mismatches: int = 0
    misplaced_bar_ends: int = 0
    misplaced_inst: int = 0
    decode: tokenizer.DecodeStats = dataclasses.field(default_factory=tokenizer.DecodeStats)

    @property
    def position_disagreements(self) -> int:
        """Slots whose decoded `b-1`/`[INST]` content disagrees with their position."""
        return self.bar_slot_mismatches + self.misplaced_bar_ends


def _content(phrase: Sequence[int]) -> list[int]:
    """The phrase without padding and framing tokens ([BOS], [EOS], [PAD])."""
    framing = {vocab.BOS, vocab.PAD}
    ids = []
    for token in phrase:
        token = int(token)
        if token == vocab.EOS:
            break
        if token not in framing:
            ids.append(token)
    return ids


def assemble_song(
    slot_phrases: Sequence[Sequence[int]],
    slots_per_bar: int = DEFAULT_SLOTS_PER_BAR,
    default_velocity: int = 96,
    name: str = "",
) -> tuple[Song, AssemblyStats]:
    """Rebuild a song from decoded slot phrases by position; stops at the first `[SEP]` slot.

    Each phrase is read up to its `[EOS]`. Track slots are decoded as phrases (an `[INST]` or
    garbage slot adds nothing); the b-1 slot ends the bar whatever it holds. A trailing partial
    bar (fewer than `slots_per_bar` slots before the end) still becomes a bar. Never raises on
    decoded content.
    """
    _check_slots_per_bar(slots_per_bar)
    stats = AssemblyStats()
    phrases = []
    for phrase in slot_phrases:
        content = _content(phrase)
        if content == SEP_PHRASE:
            break
        phrases.append(content)
    stats.n_slots = len(phrases)
    bars = []
    for start in range(0, len(phrases), slots_per_bar):
        group = phrases[start : start + slots_per_bar]
        track_phrases = group[: slots_per_bar - 1]
        for phrase in track_phrases:
            stats.misplaced_bar_ends += phrase == BAR_PHRASE
        if len(group) == slots_per_bar:
            bar_slot = group[-1]
            stats.bar_slot_mismatches += bar_slot != BAR_PHRASE
            stats.misplaced_inst += bar_slot == INST_PHRASE
        bar, bar_stats = tokenizer.bar_from_phrases(
            track_phrases, default_velocity=default_velocity
        )
        stats.decode += bar_stats
        bars.append(bar)
    stats.n_bars = len(bars)
    return Song(bars=bars, name=name), stats
