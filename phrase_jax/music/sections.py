"""Song-level labels the LDM is conditioned on: the section-type vocabulary and length buckets.

Data only (numpy, no JAX): the prepared songs carry their sections as `[[type, bars], ...]`;
`SectionVocab.encode` turns them into the padded arrays of an LDM batch (`section_types`,
`section_lengths`, `section_mask`), and `models/conditions.py` embeds those.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

LENGTH_BUCKET_BARS = 10  # ref: bucket = floor(n_bars / 10)
SECTION_PAD = "<pad>"
SECTION_UNK = "<unk>"


def length_bucket(n_bars):
    """floor(n_bars / 10), elementwise (int, numpy or jax integers): the ref's length condition.

    The model clips it into its embedding table; evaluation compares buckets of songs.
    """
    return n_bars // LENGTH_BUCKET_BARS


class SectionVocab:
    """Section-type vocabulary, built **sorted** so ids never depend on hashing (ref bug).

    Id 0 is padding, id 1 unknown types, then the types in sorted order.
    """

    def __init__(self, types: Sequence[str]):
        if list(types[:2]) != [SECTION_PAD, SECTION_UNK] or len(set(types)) != len(types):
            raise ValueError(
                f"section vocabulary must start with {SECTION_PAD}, {SECTION_UNK} and hold "
                "unique types: rebuild it with SectionVocab.build"
            )
        self.types = list(types)
        self._ids = {name: i for i, name in enumerate(self.types)}

    @classmethod
    def build(cls, sections_per_song: Iterable[Iterable[Sequence]]) -> SectionVocab:
        """From songs' section lists [[type, bars], ...] (the prepared `songs` records)."""
        found = {str(section[0]) for song in sections_per_song for section in song}
        return cls([SECTION_PAD, SECTION_UNK, *sorted(found - {SECTION_PAD, SECTION_UNK})])

    def __len__(self) -> int:
        return len(self.types)

    def id(self, section_type: str) -> int:
        return self._ids.get(section_type, 1)

    def check_capacity(self, section_vocab_size: int) -> None:
        """Raise if the model's type embedding (config.section_vocab_size) cannot hold us."""
        if len(self) > section_vocab_size:
            raise ValueError(
                f"section vocabulary has {len(self)} types but config.section_vocab_size is "
                f"{section_vocab_size}: raise section_vocab_size"
            )

    def save(self, path: str | pathlib.Path) -> None:
        pathlib.Path(path).write_text(json.dumps({"section_types": self.types}, indent=1))

    @classmethod
    def load(cls, path: str | pathlib.Path) -> SectionVocab:
        try:
            types = json.loads(pathlib.Path(path).read_text())["section_types"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"{path}: not a section vocabulary JSON ({err!r}); write one with SectionVocab.save"
            ) from err
        return cls(types)

    def encode(
        self, sections: Sequence[Sequence], max_sections: int, max_length: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[[type, bars], ...] → (type ids, lengths, mask), each [max_sections].

        Songs with more sections keep their first `max_sections` (ref padded/truncated to 30);
        lengths are clipped into 1..max_length.
        """
        kept = list(sections)[:max_sections]
        type_ids = np.zeros(max_sections, np.int32)
        lengths = np.zeros(max_sections, np.int32)
        mask = np.zeros(max_sections, bool)
        for i, (section_type, bars) in enumerate(kept):
            type_ids[i] = self.id(str(section_type))
            lengths[i] = min(max(int(bars), 1), max_length)
            mask[i] = True
        return type_ids, lengths, mask
