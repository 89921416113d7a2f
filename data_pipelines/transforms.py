"""Per-record Grain transforms: token records -> fixed-length VAE examples (docs/design.md).

Phrase example (`phrase_example`, stages 2-3), all int32/bool of length `max_len`:
  encoder_ids      [C0] [C1] [C2] [C3] [BOS] phrase [EOS] [PAD]...
  encoder_mask     True on the non-[PAD] encoder positions
  decoder_inputs   [BOS] phrase [PAD]...
  decoder_targets  phrase [EOS] [PAD]...
  decoder_mask     True where the target is real
Span-infill example (`span_infill_example`, stage 1): the same keys, encoder `[BOS] corrupted-bar
[EOS]`, decoder `[BOS] bar` / `bar [EOS]`. A record longer than fits is cut (the cut phrase is
what both encoder and decoder see, still ending in [EOS]); the manifest counts such records.
"""

from __future__ import annotations

import grain
import numpy as np

from data_pipelines import sources
from phrase_jax.music import vocab

PHRASE_PREFIX = (*vocab.COMPRESS_QUERIES, vocab.BOS)  # [C0] [C1] [C2] [C3] [BOS]


def _padded(parts: list, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([np.asarray(p, np.int32).ravel() for p in parts])
    out = np.full(max_len, vocab.PAD, np.int32)
    out[: ids.size] = ids
    mask = np.zeros(max_len, bool)
    mask[: ids.size] = True
    return out, mask


def seq2seq_example(
    encoder_body, clean, encoder_prefix, max_len: int, decoder_len: int | None = None
) -> dict[str, np.ndarray]:
    """Builds the five arrays from an encoder body and the clean target sequence: encoder
    [max_len], decoder [decoder_len] (default max_len)."""
    decoder_len = max_len if decoder_len is None else decoder_len
    encoder_ids, encoder_mask = _padded([encoder_prefix, encoder_body, [vocab.EOS]], max_len)
    decoder_inputs, decoder_mask = _padded([[vocab.BOS], clean], decoder_len)
    decoder_targets, _ = _padded([clean, [vocab.EOS]], decoder_len)
    return {
        "encoder_ids": encoder_ids,
        "encoder_mask": encoder_mask,
        "decoder_inputs": decoder_inputs,
        "decoder_targets": decoder_targets,
        "decoder_mask": decoder_mask,
    }


def span_corrupt(
    tokens: np.ndarray, rng: np.random.Generator, *, ratio: float = 0.3, mean_span: float = 3.0
) -> np.ndarray:
    """Span infilling noise (SPEC 2, stage 1): until `ratio` of the original tokens are gone,
    draw a span length ~ Poisson(mean_span) at a uniform position of the current sequence and
    replace the span by one [MASK] (length 0 inserts one).

    Unlike ref, which added the drawn length even when the span overlapped an earlier [MASK] or
    ran off the end, we count the original tokens actually removed, so `ratio` is what the
    model sees (slightly above it on average: the last span overshoots).
    tokens [L] int -> corrupted [L'] int32.
    """
    sequence = list(range(len(tokens)))  # original indices; -1 stands for [MASK]
    removed, target = 0, ratio * len(tokens)
    while removed < target:
        span = int(rng.poisson(mean_span))
        start = int(rng.integers(0, len(sequence)))
        removed += sum(1 for i in sequence[start : start + span] if i >= 0)
        sequence[start : start + span] = [-1]
    tokens = np.asarray(tokens, np.int32)
    return np.array([tokens[i] if i >= 0 else vocab.MASK for i in sequence], np.int32)


def phrase_example(tokens: np.ndarray, max_len: int, *, short_decoder: bool = False):
    """One phrase [L] -> the five arrays [max_len] (cut to fit, still ending in [EOS]).

    `short_decoder`: the decoder arrays get max_len - 5 positions, all that the phrase can
    fill (the encoder also holds the 4 query tokens and [BOS]); bucketed batches use it."""
    phrase = np.asarray(tokens, np.int32)[: max_len - len(PHRASE_PREFIX) - 1]
    decoder_len = max_len - len(PHRASE_PREFIX) if short_decoder else max_len
    return seq2seq_example(phrase, phrase, PHRASE_PREFIX, max_len, decoder_len)


def span_infill_example(
    tokens: np.ndarray, rng: np.random.Generator, max_len: int, ratio: float, mean_span: float
) -> dict[str, np.ndarray]:
    """One bar [L] -> the five arrays [max_len]: encoder `[BOS] corrupted [EOS]`."""
    bar = np.asarray(tokens, np.int32)[: max_len - 1]
    corrupted = span_corrupt(bar, rng, ratio=ratio, mean_span=mean_span)
    corrupted = corrupted[: max_len - 2]  # rare: zero-length spans made it longer
    return seq2seq_example(corrupted, bar, [vocab.BOS], max_len)


def _stack(examples: list[dict[str, np.ndarray]], real: np.ndarray) -> dict[str, np.ndarray]:
    """Stacks the examples; rows with `real` False (a bucket's fill rows) get no decoder mask,
    so they add no loss, no KL and no token count."""
    batch = {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}
    batch["decoder_mask"] &= np.asarray(real, bool)[:, None]
    return batch


class _BatchReader:
    """Reads a batch of record indices with one ArrayRecord call.

    A single-record read costs ~0.3 ms of per-call overhead in ArrayRecord, a batched read ~4 us
    a record, so the pipeline batches *indices* and reads each batch at once.
    """

    def __init__(self, source, max_len: int, shard: tuple[int, int] = (0, 1)):
        if max_len < len(PHRASE_PREFIX) + 2:
            raise ValueError(f"max_len must be >= {len(PHRASE_PREFIX) + 2}, got {max_len}")
        # shard = (this process, process count): which equal slice of each global batch of
        # indices this process reads.
        self.source, self.max_len, self.shard = source, max_len, shard

    def local(self, global_rows: int) -> slice:
        """This process's rows of a global batch of `global_rows`."""
        index, count = self.shard
        rows = global_rows // count
        return slice(index * rows, (index + 1) * rows)

    def rows(self, element) -> tuple[np.ndarray, np.ndarray, int]:
        """(global record indices [G], real [G], padded length) of a batch element: an index
        array (fixed padding to max_len) or a `length_buckets.BucketPlan` batch."""
        if isinstance(element, dict):
            return np.asarray(element["indices"]), element["real"], int(element["length"])
        return np.asarray(element), np.ones(len(element), bool), self.max_len

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        records = self.source.__getitems__([int(i) for i in np.asarray(indices).ravel()])
        return [sources.decode_tokens(r) for r in records]


class PhraseBatch(_BatchReader, grain.transforms.Map):
    """Record indices [G] (or a bucket plan's batch) -> this process's phrase batch: five
    arrays [B, max_len] (module docstring), or for a bucket of length L encoder [B, L] and
    decoder [B, L - 5]."""

    def map(self, element) -> dict[str, np.ndarray]:
        indices, real, length = self.rows(element)
        local = self.local(len(indices))
        tokens = self.read(indices[local])
        bucketed = isinstance(element, dict)
        examples = [phrase_example(t, length, short_decoder=bucketed) for t in tokens]
        return _stack(examples, real[local])


class SpanInfillBatch(_BatchReader, grain.transforms.RandomMap):
    """Global record indices [G] (or a bucket plan's batch) -> this process's span-infill
    batch [B, L].

    Grain's rng for this batch position draws one seed per *global* row, so a record's
    corruption depends only on the seed and its place in the global batch: the same whatever
    the worker or process count."""

    def __init__(
        self,
        source,
        max_len: int = 128,
        ratio: float = 0.3,
        mean_span: float = 3.0,
        shard: tuple[int, int] = (0, 1),
    ):
        super().__init__(source, max_len, shard)
        if not 0.0 <= ratio <= 1.0 or mean_span < 0:
            raise ValueError(f"need 0 <= ratio <= 1 and mean_span >= 0, got {ratio}, {mean_span}")
        self.ratio, self.mean_span = ratio, mean_span

    def random_map(self, element, rng: np.random.Generator) -> dict[str, np.ndarray]:
        indices, real, length = self.rows(element)
        local = self.local(len(indices))
        seeds = rng.integers(0, 2**63 - 1, size=len(indices))[local]
        tokens = self.read(indices[local])
        return _stack(
            [
                span_infill_example(
                    t, np.random.default_rng(seed), length, self.ratio, self.mean_span
                )
                for t, seed in zip(tokens, seeds, strict=True)
            ],
            real[local],
        )
