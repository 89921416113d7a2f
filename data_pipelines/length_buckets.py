"""Length-bucketed VAE batches: a few padded lengths, each with its own batch size.

    plan = BucketPlan.build(lengths, "phrases", buckets=(16, 24, 32, 48, 64, 128),
                            tokens_per_batch=16384, batch_multiple=8, seed=42,
                            special_rate=0.05)
    plan[i]   # batch i: {"indices": int64 [G], "real": bool [G], "length": int}

Batch shapes: phrases encoder [G, L] and decoder [G, L - 5] (the decoder has no room to fill
for the 4 query tokens and [BOS] the encoder holds); bars [G, L] for both.

Padding every phrase to `max_len` (128 positions at paper size) wastes most of the compute: the
median POP909 phrase is 22 tokens. A record goes to the shortest bucket that holds its encoder
sequence (`[C0..C3] [BOS] phrase [EOS]`, or `[BOS] bar [EOS]` for span infill); a bucket of
length L gets `G = tokens_per_batch // L` rows (rounded down to `batch_multiple`, the data-axis
size, so every global batch splits over the devices), so every batch costs about the same
number of positions and the train step compiles once per bucket.

One-token phrases (`[INST]`, `b-1`, `[SEP]`: 45% of the POP909 phrase corpus, only three
distinct sequences) are sampled at `special_rate` of each epoch's phrases instead of their
corpus share: a rotating, seeded subset, so every one is seen over the epochs. A rate at or
above their corpus share keeps them all. Evaluation does not use this plan: it keeps every
phrase at its corpus share.

Epoch `e` of the plan depends only on (seed, e): records are shuffled within their bucket and
cut into batches; the last batch of a bucket is filled up with rows that repeat the bucket's
first records with `real` False (the pipeline masks their decoder: they add no loss and no
token count), so every record of the epoch is trained on exactly once; then the batches of all
buckets are shuffled together. Every epoch has the same number of batches, so batch `i` is a
pure function of `i` and the Grain iterator state (a position) resumes exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np

from data_pipelines import corpus_stats, transforms

READ_CHUNK = 4096  # records a batched ArrayRecord read fetches while measuring lengths


@dataclasses.dataclass(frozen=True)
class Bucketing:
    """How a VAE training pipeline buckets (the trainer's `data.*` keys of the same meaning).

    lengths: padded lengths, increasing, the last = max_len; tokens_per_batch: global
    positions a batch aims at (rows x length); batch_multiple: every global batch size is a
    multiple of it (the data-axis size); special_rate: share of one-token phrases per epoch.
    """

    lengths: tuple[int, ...]
    tokens_per_batch: int
    batch_multiple: int = 1
    special_rate: float = 1.0


def record_lengths(source) -> np.ndarray:
    """Token count of every record of an ArrayRecord token source, int64 [N] (int16 tokens)."""
    lengths = np.empty(len(source), np.int64)
    for start in range(0, len(source), READ_CHUNK):
        stop = min(start + READ_CHUNK, len(source))
        records = source.__getitems__(list(range(start, stop)))
        lengths[start:stop] = [len(r) // 2 for r in records]
    return lengths


def encoder_lengths(lengths: np.ndarray, kind: str) -> np.ndarray:
    """Positions each record needs in a VAE batch: its encoder sequence (the longest of the
    five arrays; span corruption mostly shortens a bar, the transform cuts the rare excess)."""
    return lengths + corpus_stats.EXTRA_ENCODER_TOKENS[kind]


def bucket_batch_sizes(buckets, tokens_per_batch: int, batch_multiple: int) -> tuple[int, ...]:
    """Global rows per bucket: `tokens_per_batch // length` rounded down to `batch_multiple`
    (at least one multiple)."""
    return tuple(
        max(batch_multiple, tokens_per_batch // length // batch_multiple * batch_multiple)
        for length in buckets
    )


@dataclasses.dataclass(frozen=True)
class EpochLayout:
    """What every epoch holds: per bucket, its records and global batch size."""

    buckets: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    members: tuple[np.ndarray, ...]  # regular record indices of each bucket
    specials: np.ndarray  # one-token phrase indices (all in the first bucket)
    specials_per_epoch: int

    def records_per_bucket(self) -> list[int]:
        counts = [len(m) for m in self.members]
        counts[0] += self.specials_per_epoch
        return counts

    def batches_per_bucket(self) -> list[int]:
        return [
            -(-n // g) for n, g in zip(self.records_per_bucket(), self.batch_sizes, strict=True)
        ]


class BucketPlan:
    """Random access to the bucketed batches of `num_epochs` epochs (None: without end).

    A Grain data source: `len(plan)`, `plan[i]` (module docstring). Build with `build`."""

    def __init__(self, layout: EpochLayout, seed: int, num_epochs: int | None):
        self.layout, self.seed, self.num_epochs = layout, seed, num_epochs
        self.batches_per_epoch = sum(layout.batches_per_bucket())
        if self.batches_per_epoch == 0:
            raise ValueError("the bucket plan has no batch: the split is empty")

    @classmethod
    def build(
        cls,
        lengths: np.ndarray,
        kind: str,
        *,
        buckets,
        tokens_per_batch: int,
        batch_multiple: int,
        seed: int,
        special_rate: float = 1.0,
        num_epochs: int | None = None,
    ) -> BucketPlan:
        """The plan of records with token counts `lengths` [N] (see `record_lengths`)."""
        buckets = tuple(int(b) for b in buckets)
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"length buckets must be strictly increasing, got {buckets}")
        if not 0.0 <= special_rate <= 1.0:
            raise ValueError(f"special_rate must be in [0, 1], got {special_rate}")
        needed = encoder_lengths(np.asarray(lengths, np.int64), kind)
        # Longer records than the last bucket go there and are cut, as with fixed padding.
        which = np.minimum(np.searchsorted(buckets, needed), len(buckets) - 1)
        is_special = np.asarray(lengths) == 1 if kind == "phrases" else np.zeros(len(which), bool)
        members = tuple(np.flatnonzero((which == b) & ~is_special) for b in range(len(buckets)))
        specials = np.flatnonzero(is_special)
        if len(specials) and which[specials[0]] != 0:
            raise ValueError(f"the first length bucket {buckets[0]} must hold a one-token phrase")
        n_regular = sum(len(m) for m in members)
        if special_rate >= 1.0:
            per_epoch = len(specials)
        else:
            wanted = round(special_rate / (1.0 - special_rate) * n_regular)
            per_epoch = min(len(specials), wanted)
        layout = EpochLayout(
            buckets,
            bucket_batch_sizes(buckets, tokens_per_batch, batch_multiple),
            members,
            specials,
            per_epoch,
        )
        return cls(layout, seed, num_epochs)

    def __len__(self) -> int:
        if self.num_epochs is None:
            return sys.maxsize  # as Grain's repeat(None)
        return self.batches_per_epoch * self.num_epochs

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)})")
        epoch, position = divmod(int(index), self.batches_per_epoch)
        return self.epoch_batches(epoch)[position]

    @functools.lru_cache(maxsize=2)  # noqa: B019 (a plan lives as long as its pipeline)
    def epoch_batches(self, epoch: int) -> list[dict]:
        """Every batch of epoch `epoch`, in training order."""
        layout = self.layout
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for b, (length, size) in enumerate(zip(layout.buckets, layout.batch_sizes, strict=True)):
            records = rng.permutation(layout.members[b])
            if b == 0 and layout.specials_per_epoch:
                # A rotating window over one fixed shuffle: each special phrase once per
                # len(specials) / specials_per_epoch epochs.
                order = np.random.default_rng([self.seed]).permutation(layout.specials)
                start = epoch * layout.specials_per_epoch
                window = np.take(order, np.arange(start, start + layout.specials_per_epoch),
                                 mode="wrap")  # fmt: skip
                records = rng.permutation(np.concatenate([records, window]))
            if len(records) == 0:
                continue
            n_batches = -(-len(records) // size)
            fill = n_batches * size - len(records)
            real = np.concatenate([np.ones(len(records), bool), np.zeros(fill, bool)])
            records = np.concatenate([records, np.resize(records, fill)])
            for start in range(0, len(records), size):
                rows = slice(start, start + size)
                batches.append({"indices": records[rows], "real": real[rows], "length": length})
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def shapes(self) -> list[tuple[int, int]]:
        """(global rows, length) of every bucket that has batches: the compiled step shapes."""
        layout = self.layout
        return [
            (size, length)
            for length, size, n in zip(
                layout.buckets, layout.batch_sizes, layout.batches_per_bucket(), strict=True
            )
            if n
        ]


def padding_fraction(
    plan: BucketPlan | None, lengths: np.ndarray, kind: str, max_len: int
) -> float:
    """Share of the computed positions (encoder + decoder, every row of an epoch's batches)
    that hold no real token, for `plan` or, with `plan` None, for fixed padding to `max_len`."""
    lengths = np.asarray(lengths, np.int64)
    if plan is None:
        used = lengths
        computed = 2 * max_len * len(lengths)  # fixed padding: decoder as long as the encoder
    else:
        layout = plan.layout
        used_index = np.concatenate([*layout.members, layout.specials[: layout.specials_per_epoch]])
        used = lengths[used_index]
        computed = sum(
            (length + decoder_length(length, kind)) * size * n
            for length, size, n in zip(
                layout.buckets, layout.batch_sizes, layout.batches_per_bucket(), strict=True
            )
        )
    real = real_positions(used, kind, max_len)
    return 1.0 - float(real) / computed


def decoder_length(length: int, kind: str) -> int:
    """Decoder positions of a bucket of `length`: a phrase fills at most length - 5 (the
    encoder also holds [C0..C3] [BOS]); a bar's decoder is as long as its encoder, which span
    corruption mostly shortens."""
    return length - len(transforms.PHRASE_PREFIX) if kind == "phrases" else length


def real_positions(lengths: np.ndarray, kind: str, max_len: int) -> int:
    """Non-pad positions of records with `lengths` in the encoder plus the decoder (the
    decoder holds `[BOS] tokens` / `tokens [EOS]`), after the cut at `max_len`. For bars the
    encoder counts the clean bar: an upper bound, as span corruption shortens it."""
    encoder = np.minimum(encoder_lengths(lengths, kind), max_len)
    # A cut phrase keeps max_len - 6 tokens (+1 in the decoder); a cut bar max_len - 1.
    decoder = np.minimum(lengths + 1, max_len - 5 if kind == "phrases" else max_len)
    return int(encoder.sum() + decoder.sum())
