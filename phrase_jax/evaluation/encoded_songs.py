"""Real songs encoded with a given VAE, for evaluating a bundle (`make eval MODEL=...`): the
bundle's latent space is its own VAE's, so PhraseFID's reference and held-out latents are
encoded with that VAE from the prepared songs (a trained run reads them from its latents dir).

    reference, names = reference_latents(vae_model, data_dir, count=100, seed=0, max_len=128,
                                         slots_per_bar=4, max_slots=512)
    latents, songs = held_out(vae_model, data_dir, ("valid", "test"), max_len=128,
                              slots_per_bar=4, max_slots=512)

Each distinct phrase is encoded once (a song repeats `[INST]` and `b-1` slots many times), in
fixed-size batches so one compiled encoder serves all; one process (the models are replicated).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines import sources, transforms
from phrase_jax.models import decoding
from phrase_jax.music import layout
from phrase_jax.music.events import Song

ENCODE_BATCH = 256


def encode_slots(
    vae_model, songs: Sequence[dict], *, max_len: int, slots_per_bar: int
) -> list[np.ndarray]:
    """Per prepared song record: its latent means float32 [slots_per_bar * n_bars, D]."""
    unique = sorted({tuple(slot) for song in songs for slot in song["slots"]})
    means = np.zeros((len(unique), vae_model.config.latent_dim), np.float32)
    for start in range(0, len(unique), ENCODE_BATCH):
        chunk = unique[start : start + ENCODE_BATCH]
        padded = chunk + [chunk[0]] * (ENCODE_BATCH - len(chunk))
        examples = [transforms.phrase_example(np.asarray(p), max_len) for p in padded]
        batch = {k: np.stack([e[k] for e in examples]) for k in ("encoder_ids", "encoder_mask")}
        means[start : start + len(chunk)] = np.asarray(decoding.encode_latents(vae_model, batch))[
            : len(chunk)
        ]
    row = {phrase: i for i, phrase in enumerate(unique)}
    return [
        means[[row[tuple(slot)] for slot in song["slots"][: slots_per_bar * song["n_bars"]]]]
        for song in songs
    ]


def read_fitting_songs(data_dir: str, split: str, slots_per_bar: int, max_slots: int) -> list:
    """The prepared songs of `split` that fit the LDM's `max_slots` (the songs latent extraction
    keeps, so a bundle of our run is measured against the songs its run was)."""
    songs = sources.read_songs(data_dir, split)
    return [s for s in songs if s["n_bars"] * slots_per_bar <= max_slots]


def reference_latents(
    vae_model,
    data_dir: str,
    *,
    count: int,
    seed: int,
    max_len: int,
    slots_per_bar: int,
    max_slots: int,
) -> tuple[list[np.ndarray], list[str]]:
    """All slots of `count` training songs of `data_dir` (a seeded choice, in file order)."""
    train = read_fitting_songs(data_dir, "train", slots_per_bar, max_slots)
    if not train:
        raise ValueError(f"{data_dir}: no train songs for the PhraseFID reference")
    rows = np.sort(np.random.default_rng(seed).permutation(len(train))[: min(count, len(train))])
    chosen = [train[i] for i in rows]
    latents = encode_slots(vae_model, chosen, max_len=max_len, slots_per_bar=slots_per_bar)
    return latents, [song["name"] for song in chosen]


def held_out(
    vae_model,
    data_dir: str,
    splits: Sequence[str],
    *,
    max_len: int,
    slots_per_bar: int,
    max_slots: int,
) -> tuple[list[np.ndarray], list[Song]]:
    """(latents, assembled songs) of the prepared songs of `splits` that fit `max_slots`."""
    records = [
        song for split in splits
        for song in read_fitting_songs(data_dir, split, slots_per_bar, max_slots)
    ]  # fmt: skip
    latents = encode_slots(vae_model, records, max_len=max_len, slots_per_bar=slots_per_bar)
    songs = [layout.assemble_song(r["slots"], slots_per_bar, name=r["name"])[0] for r in records]
    return latents, songs
