"""Random-access sources over prepared data (docs/design.md, "Prepared data").

`token_source` gives Grain an ArrayRecord data source of raw `np.int16` token records for one
kind (`phrases`, `bars`) and split; `read_songs` decodes the `songs` records (JSON) for the
latent extraction and LDM stages.
"""

from __future__ import annotations

import json
import pathlib

import grain
import numpy as np

from data_pipelines import corpus_stats
from phrase_jax.music import vocab

TOKEN_KINDS = ("phrases", "bars")
KINDS = (*TOKEN_KINDS, "songs")
SPLITS = ("train", "valid", "test")


def read_manifest(data_dir: str | pathlib.Path) -> dict:
    """The prepared folder's manifest, checked against this code's vocabulary."""
    path = pathlib.Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: prepare the data first (python -m data_pipelines.prepare)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("vocab_sha256") != vocab.Vocab().sha256:
        raise ValueError(
            f"{path}: prepared with another vocabulary (sha256 differs); re-run prepare"
        )
    return manifest


def shard_paths(data_dir: str | pathlib.Path, kind: str, split: str) -> list[str]:
    """Absolute shard paths of `kind` and `split`, in order."""
    if kind not in KINDS or split not in SPLITS:
        raise ValueError(
            f"kind must be one of {KINDS} and split one of {SPLITS}, got {kind!r}, {split!r}"
        )
    manifest = read_manifest(data_dir)
    names = manifest["shards"][kind][split]
    paths = [str((pathlib.Path(data_dir) / name).resolve()) for name in names]
    missing = [p for p in paths if not pathlib.Path(p).exists()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]}: shard listed in manifest.json is missing; re-run prepare"
        )
    return paths


def token_source(data_dir: str | pathlib.Path, kind: str, split: str):
    """ArrayRecord source of one kind/split; each record is `np.int16` token ids as bytes."""
    if kind not in TOKEN_KINDS:
        raise ValueError(f"token_source reads {TOKEN_KINDS}, got {kind!r}; use read_songs")
    source = grain.sources.ArrayRecordDataSource(shard_paths(data_dir, kind, split))
    if len(source) == 0:
        raise ValueError(
            f"{data_dir}: no {kind} records in split {split!r}; the split is empty "
            "(prepare more songs or change --valid_fraction/--test_fraction)"
        )
    return source


def decode_tokens(record: bytes) -> np.ndarray:
    """One record -> int32 token ids [L]."""
    return np.frombuffer(record, dtype=np.int16).astype(np.int32)


def read_songs(data_dir: str | pathlib.Path, split: str) -> list[dict]:
    """Every `songs` record of a split: {name, split, n_bars, sections, slots, dropped_tracks}."""
    source = grain.sources.ArrayRecordDataSource(shard_paths(data_dir, "songs", split))
    return [json.loads(source[i]) for i in range(len(source))]


def truncation_count(data_dir: str | pathlib.Path, kind: str, split: str, max_len: int) -> int:
    """Records of kind/split that a VAE batch of `max_len` positions truncates (from the
    manifest's length histograms, without reading the shards)."""
    histogram = read_manifest(data_dir)["length_histograms"][split][kind]
    return corpus_stats.truncated_count(histogram, kind, max_len)
