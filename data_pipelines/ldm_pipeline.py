"""Grain pipeline of PhraseLDM batches over an extracted latents dir (docs/design.md).

    it = make_ldm_loader("runs/latents", "train", batch_size=128, seed=42,
                         section_vocab=sections.SectionVocab.load(".../section_vocab.json"))
    batch = next(it)   # dict of numpy arrays, local to this process:
      latents float32 [B, N, D]     latents / manifest scale, padding slots included
      n_bars int32 [B]              song length in bars
      section_types int32 [B, S]    sorted-vocabulary ids (S = max_sections, default 30)
      section_lengths int32 [B, S]  bars per section, clipped into 1..max_bars
      section_mask bool [B, S]      True on real sections (all False: the song has no labels)
    state = it.get_state(); ...; it.set_state(state)   # the same next batch after restore

The section keys are present only when a `section_vocab` (an object with
`encode(sections, max_sections, max_length)`, i.e. `phrase_jax.music.sections.SectionVocab`)
is given; it is passed in so that this package needs no JAX. A split is small (a few hundred
songs of 512 x 64 floats), so it is read once into memory and scaled there. Order: seeded
shuffle of all songs, reshuffled every epoch -> repeat -> global batches of song indices (B x
process count) -> this process's rows -> one gather per batch.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import grain
import numpy as np

from phrase_jax.artifacts import latents as latents_artifact

MANIFEST = latents_artifact.MANIFEST
MAX_SECTIONS = 30  # ref: section lists padded or cut to 30
MAX_BARS = 128


def read_manifest(latents_dir: str | pathlib.Path) -> dict:
    """The latents dir's manifest.json, checked where its schema lives (artifacts/latents.py)."""
    return latents_artifact.read(str(latents_dir))


@dataclasses.dataclass
class LatentSplit:
    """One split in memory, songs in shard order.

    latents float32 [S, N, D] (unscaled VAE means), n_bars int32 [S], names [S] str,
    sections: per song [[type, bars], ...] or None.
    """

    latents: np.ndarray
    n_bars: np.ndarray
    names: list[str]
    sections: list[Any]


def load_split(latents_dir: str | pathlib.Path, split: str, manifest: dict | None = None):
    """Every song of `split` from the npz shards the manifest lists (checked against it)."""
    manifest = manifest or read_manifest(latents_dir)
    if split not in manifest["shards"]:
        raise ValueError(
            f"{latents_dir}: split {split!r} was not extracted; have {sorted(manifest['shards'])}"
        )
    songs = {(s["split"], s["name"]): s for s in manifest["songs"]}
    latents, n_bars, names = [], [], []
    for name in manifest["shards"][split]:
        path = pathlib.Path(latents_dir) / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: listed in manifest.json but missing; re-extract")
        with np.load(path) as shard:
            latents.append(shard["latents"])
            n_bars.append(shard["n_bars"])
            names.extend(str(n) for n in shard["names"])
    width = (manifest["max_slots"], manifest["latent_dim"])
    latents = np.concatenate(latents) if latents else np.zeros((0, *width), np.float32)
    n_bars = np.concatenate(n_bars).astype(np.int32) if n_bars else np.zeros(0, np.int32)
    sections = []
    for name, bars in zip(names, n_bars, strict=True):
        entry = songs.get((split, name))
        if entry is None or entry["n_bars"] != bars:
            raise ValueError(f"{latents_dir}: song {name} of {split} disagrees with the manifest")
        sections.append(entry["sections"])
    if latents.shape[1:] != width:
        raise ValueError(
            f"{latents_dir}: {split} latents have shape {latents.shape}, not [S, {width}]"
        )
    return LatentSplit(latents.astype(np.float32), n_bars, names, sections)


class LDMBatch(grain.transforms.Map):
    """Global song indices [G] -> this process's LDM batch (module docstring), gathered from
    in-memory arrays; `local` picks this process's rows of the global batch."""

    def __init__(self, arrays: dict[str, np.ndarray], local: slice = slice(None)):
        self.arrays, self.local = arrays, local

    def map(self, element: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(element, np.int64).ravel()[self.local]
        return {key: value[indices] for key, value in self.arrays.items()}


def batch_arrays(
    data: LatentSplit,
    scale: float,
    section_vocab=None,
    *,
    max_sections: int = MAX_SECTIONS,
    max_bars: int = MAX_BARS,
) -> dict:
    """The per-song arrays a batch is gathered from: scaled latents, n_bars, sections."""
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"latent scale {scale}: must be a positive number (see manifest.json)")
    arrays = {
        "latents": (data.latents / np.float32(scale)).astype(np.float32),
        "n_bars": data.n_bars.astype(np.int32),
    }
    if section_vocab is not None:
        encoded = [section_vocab.encode(s or [], max_sections, max_bars) for s in data.sections]
        empty = (np.zeros((0, max_sections), np.int32),) * 2 + (np.zeros((0, max_sections), bool),)
        parts = [np.stack(p) for p in zip(*encoded, strict=True)] if encoded else list(empty)
        arrays.update(section_types=parts[0], section_lengths=parts[1], section_mask=parts[2])
    return arrays


def make_ldm_dataset(
    latents_dir: str | pathlib.Path,
    split: str,
    *,
    batch_size: int,
    seed: int,
    section_vocab=None,
    max_sections: int = MAX_SECTIONS,
    max_bars: int = MAX_BARS,
    shard_index: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """The batched MapDataset (`ds[i]` is batch i). `num_epochs` None repeats forever, which
    also lets a split smaller than one batch fill batches from several epochs."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}/{shard_count}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    manifest = read_manifest(latents_dir)
    data = load_split(latents_dir, split, manifest)
    arrays = batch_arrays(
        data, manifest["scale"], section_vocab, max_sections=max_sections, max_bars=max_bars
    )
    # Global batches of song indices, then this process's rows: the global batch never depends
    # on the process count.
    ds = grain.MapDataset.range(len(data.names))
    global_batch = batch_size * shard_count
    if len(ds) == 0 or (num_epochs is not None and len(ds) * num_epochs < global_batch):
        raise ValueError(
            f"{latents_dir}: split {split!r} has {len(ds)} songs, too few for one global batch "
            f"of {global_batch} ({shard_count} processes x {batch_size})"
        )
    ds = ds.seed(seed)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs).batch(global_batch, drop_remainder=True)
    local = slice(shard_index * batch_size, (shard_index + 1) * batch_size)
    return ds.map(LDMBatch(arrays, local))


def make_ldm_loader(
    latents_dir: str | pathlib.Path,
    split: str,
    batch_size: int,
    seed: int,
    *,
    section_vocab=None,
    max_sections: int = MAX_SECTIONS,
    max_bars: int = MAX_BARS,
    shard_index: int | None = None,
    shard_count: int | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    num_workers: int = 0,
    num_threads: int = 2,
) -> grain.DatasetIterator:
    """A checkpointable iterator of per-process batches (shapes in the module docstring).

    `shard_index`/`shard_count` default to `jax.process_index()`/`jax.process_count()`;
    `num_workers` > 0 prefetches in that many processes.
    """
    if shard_index is None or shard_count is None:
        import jax  # only here: the data package must not need JAX otherwise

        shard_index, shard_count = jax.process_index(), jax.process_count()
    ds = make_ldm_dataset(
        latents_dir,
        split,
        batch_size=batch_size,
        seed=seed,
        section_vocab=section_vocab,
        max_sections=max_sections,
        max_bars=max_bars,
        shard_index=shard_index,
        shard_count=shard_count,
        shuffle=shuffle,
        num_epochs=num_epochs,
    )
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    )
    if num_workers > 0:
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iter_ds)
