"""Which latent slots of a sampled song go to the VAE decoder, and the decode itself.

A song's end is its first slot near the `[SEP]` latent (or the requested length); inside it,
the last slot of each bar is `b-1` by position and track slots near the `[INST]` latent are
padding, so only real track phrases need the (costly) greedy decoder. Latents are unscaled.
"""

from __future__ import annotations

import numpy as np

from phrase_jax.models import decoding
from phrase_jax.music.vocab import BAR_END, EOS, INST, PAD

MIN_DECODE_CHUNK = 64  # smallest decoder batch: few distinct shapes, so few compilations
SPECIAL_NAMES = ("inst", "bar", "sep")  # order of the nearest-special-latent test


def near_special(latents_bnd: np.ndarray, special_latents: dict, name: str) -> np.ndarray:
    """bool [B, N]: slots within half the distance from the `name` latent to the nearest other
    special latent. Nearest-of-the-specials alone is not enough: a real phrase lies far from
    all three, and which of them is least far says nothing (on real POP909 latents it put a
    `[SEP]` in every song's first bars). latents_bnd unscaled."""
    centre = np.asarray(special_latents[name], np.float32)
    others = [np.asarray(special_latents[k], np.float32) for k in SPECIAL_NAMES if k != name]
    radius = 0.5 * min(float(np.linalg.norm(centre - other)) for other in others)
    return np.linalg.norm(latents_bnd - centre, axis=-1) < radius


def song_end_slots(latents_bnd: np.ndarray, special_latents: dict) -> np.ndarray:
    """int [B]: each song's first slot near the `[SEP]` latent (`near_special`), N when there
    is none. latents_bnd unscaled [B, N, D]."""
    is_sep = near_special(latents_bnd, special_latents, "sep")
    return np.where(is_sep.any(axis=1), is_sep.argmax(axis=1), latents_bnd.shape[1])


def slots_to_decode(
    latents_bnd: np.ndarray, ends_b: np.ndarray, special_latents: dict, slots_per_bar: int
) -> np.ndarray:
    """bool [B, N]: the track slots before each song's end that are not `[INST]` padding.

    The last slot of each bar is `b-1` by position. A track slot is padding when it lies within
    half the distance from the `[INST]` latent to the nearest other special latent (real POP909
    phrases lie further away than the specials are from each other). latents_bnd unscaled."""
    is_inst = near_special(latents_bnd, special_latents, "inst")
    position = np.arange(latents_bnd.shape[1])
    in_song = position[None, :] < np.asarray(ends_b)[:, None]
    track_position = (position % slots_per_bar) != slots_per_bar - 1
    return in_song & track_position[None, :] & ~is_inst


def decode_chunk_size(rows: int) -> int:
    """The smallest 2^k or 1.5 * 2^k (k >= 1) that holds `rows` (>= 1) rows."""
    power = 1 << max(rows - 1, 1).bit_length()
    return power * 3 // 4 if rows <= power * 3 // 4 else power


def decode_song_slots(
    vae_model,
    latents_bnd: np.ndarray,
    ends_b: np.ndarray,
    *,
    max_len: int,
    decode_chunk: int,
    decode_mask_bn: np.ndarray | None = None,
    slots_per_bar: int = 4,
) -> list[np.ndarray]:
    """Greedy ids per song, int32 [ends_b[i], max_len]: one decode of the slots before every
    song's end. Rows are padded only up to a chunk of 2^k or 1.5 * 2^k rows, at least
    MIN_DECODE_CHUNK, capped at `decode_chunk`: few shapes compile and under a third of the
    decoded rows are padding (a 128-bar song's 384 track slots decode as 384 rows, not 512).
    With `decode_mask_bn` (`slots_to_decode`) only those slots go to the decoder; the others
    get their phrase by position: `b-1` in each bar's last slot, `[INST]` in track slots."""
    if decode_mask_bn is None:
        decode_mask_bn = np.arange(latents_bnd.shape[1])[None, :] < np.asarray(ends_b)[:, None]
    rows = latents_bnd[decode_mask_bn]
    if len(rows):
        chunk = min(decode_chunk, max(MIN_DECODE_CHUNK, decode_chunk_size(len(rows))))
        ids = decoding.decode_latents(vae_model, rows, max_len=max_len, chunk_size=chunk)
    else:
        ids = np.zeros((0, max_len), np.int32)
    full = np.full(latents_bnd.shape[:2] + (max_len,), PAD, np.int32)
    is_bar = (np.arange(latents_bnd.shape[1]) % slots_per_bar) == slots_per_bar - 1
    full[:, :, :2] = [INST, EOS]
    full[:, is_bar, 0] = BAR_END
    full[decode_mask_bn] = ids
    return [song[:end] for song, end in zip(full, ends_b, strict=True)]
