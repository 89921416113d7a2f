"""Grain pipelines of VAE batches: phrases (stages 2-3) and span-infill bars (stage 1).

    it = make_vae_loader("data/pop909", "train", "phrases", batch_size=128, seed=42)
    batch = next(it)   # dict of numpy arrays, local to this process:
      encoder_ids int32 [B, L], encoder_mask bool [B, L], decoder_inputs int32 [B, L],
      decoder_targets int32 [B, L], decoder_mask bool [B, L]          (L = max_len, default 128)
    state = it.get_state(); ...; it.set_state(state)   # the same next batch after restore

Order of operations: seeded shuffle of all records, reshuffled every epoch -> repeat -> global
batches of record indices (B x shard_count, remainder dropped: fixed shapes) -> this process's
rows `[shard_index*B, (shard_index+1)*B)` -> one ArrayRecord read of those rows and the
per-record transforms (span corruption seeds each global row from Grain's rng for that batch
position) -> optional multiprocess prefetch. So the global batch depends only on the seed and
its position: never on the worker or process count, and every process runs the same number
of batches. B is the per-process batch; the trainer assembles
the global array (`jax.make_array_from_process_local_data`).

With `bucketing` (a `length_buckets.Bucketing`; the trainer's default at paper and cpu scale)
the batches come from a `length_buckets.BucketPlan` instead: L is one of a few bucket lengths,
the global batch size depends on L (about `tokens_per_batch` positions a batch), one-token
phrases are sampled at `special_rate`; `batch_size` is then unused. The rest (process slices,
per-row corruption seeds, checkpointable position) is the same.
"""

from __future__ import annotations

import math

import grain
from absl import logging

from data_pipelines import length_buckets, sources, transforms


def make_vae_dataset(
    data_dir: str,
    split: str,
    kind: str,
    *,
    batch_size: int,
    seed: int,
    max_len: int = 128,
    shard_index: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
    num_epochs: int | None = None,
    mask_ratio: float = 0.3,
    mean_span: float = 3.0,
    bucketing: length_buckets.Bucketing | None = None,
) -> grain.MapDataset:
    """The batched MapDataset (random access: `ds[i]` is batch i). `num_epochs` None repeats
    forever; `kind` is `phrases` (PhraseBatch) or `bars` (SpanInfillBatch)."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}/{shard_count}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = sources.token_source(data_dir, kind, split)
    shard = (shard_index, shard_count)
    if bucketing is not None:
        if not shuffle:
            raise ValueError("length-bucketed batches are always shuffled; pass shuffle=True")
        plan = bucket_plan(source, kind, bucketing, max_len, seed, shard_count, num_epochs)
        ds = grain.MapDataset.source(plan).seed(seed)  # the seed: span corruption's
        return _batched(ds, kind, source, max_len, mask_ratio, mean_span, shard)
    # The pipeline runs over record *indices*; each batch of indices is read in one call.
    ds = grain.MapDataset.range(len(source))
    global_batch = batch_size * shard_count
    if len(ds) < global_batch:
        raise ValueError(
            f"{data_dir}: {kind}/{split} has {len(ds)} records, fewer than the global batch "
            f"{global_batch} ({shard_count} processes x {batch_size}); lower batch_size"
        )
    ds = ds.seed(seed)  # derives the shuffle and span-corruption seeds
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs).batch(global_batch, drop_remainder=True)
    return _batched(ds, kind, source, max_len, mask_ratio, mean_span, shard)


def _batched(ds, kind, source, max_len, mask_ratio, mean_span, shard) -> grain.MapDataset:
    """`ds` of global index batches -> this process's VAE batches."""
    if kind == "phrases":
        return ds.map(transforms.PhraseBatch(source, max_len, shard))
    return ds.random_map(transforms.SpanInfillBatch(source, max_len, mask_ratio, mean_span, shard))


def bucket_plan(
    source, kind, bucketing, max_len, seed, shard_count, num_epochs
) -> length_buckets.BucketPlan:
    """The BucketPlan of `source`'s records; every global batch splits over the processes."""
    if bucketing.lengths[-1] != max_len:
        raise ValueError(
            f"the last length bucket must be max_len={max_len}, got {bucketing.lengths}"
        )
    lengths = length_buckets.record_lengths(source)
    plan = length_buckets.BucketPlan.build(
        lengths,
        kind,
        buckets=bucketing.lengths,
        tokens_per_batch=bucketing.tokens_per_batch,
        batch_multiple=math.lcm(bucketing.batch_multiple, shard_count),
        seed=seed,
        special_rate=bucketing.special_rate,
        num_epochs=num_epochs,
    )
    logging.info(
        "%s: %d length buckets (global rows x length) %s, %d batches an epoch, %.1f%% of the "
        "computed positions padding (%.1f%% padded to max_len %d)",
        kind,
        len(plan.shapes()),
        plan.shapes(),
        plan.batches_per_epoch,
        100 * length_buckets.padding_fraction(plan, lengths, kind, max_len),
        100 * length_buckets.padding_fraction(None, lengths, kind, max_len),
        max_len,
    )
    return plan


def make_vae_loader(
    data_dir: str,
    split: str,
    kind: str,
    batch_size: int,
    seed: int,
    max_len: int = 128,
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    *,
    shuffle: bool = True,
    num_epochs: int | None = None,
    mask_ratio: float = 0.3,
    mean_span: float = 3.0,
    num_threads: int = 4,
    worker_buffer_size: int = 2,
    bucketing: length_buckets.Bucketing | None = None,
) -> grain.DatasetIterator:
    """A checkpointable iterator of per-process batches (shapes in the module docstring).

    `shard_index`/`shard_count` default to `jax.process_index()`/`jax.process_count()`;
    `num_workers` > 0 prefetches in that many processes (0 in tests); `num_threads` read
    threads in the (main or worker) process. The iterator has `get_state()`/`set_state()`.
    """
    if shard_index is None or shard_count is None:
        import jax  # only here: the data package must not need JAX otherwise

        shard_index, shard_count = jax.process_index(), jax.process_count()
    ds = make_vae_dataset(
        data_dir,
        split,
        kind,
        batch_size=batch_size,
        seed=seed,
        max_len=max_len,
        shard_index=shard_index,
        shard_count=shard_count,
        shuffle=shuffle,
        num_epochs=num_epochs,
        mask_ratio=mask_ratio,
        mean_span=mean_span,
        bucketing=bucketing,
    )
    truncated = sources.truncation_count(data_dir, kind, split, max_len)
    if truncated:
        logging.info(
            "%s/%s: %d records longer than max_len %d are truncated",
            kind,
            split,
            truncated,
            max_len,
        )
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    )
    if num_workers > 0:
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=num_workers, per_worker_buffer_size=worker_buffer_size
            )
        )
    return iter(iter_ds)
