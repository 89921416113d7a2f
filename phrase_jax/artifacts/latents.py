"""A latents dir (extract_latents' workdir): manifest.json and the npz shards it lists.

    latents-{split}-{i:05d}-of-{n:05d}.npz  latents float32 [S, max_slots, D] (unscaled means),
                                            n_bars int32 [S], names [S]
    manifest.json                           written last (atomically): the fields below

`FIELDS` is the one list of what the manifest holds, each field tagged with who relies on it:
  reuse   same values -> the extraction is up to date and is skipped
  train   an LDM run records these; other values mean other training data
  space   two LDMs compare (or share a VAE decode) only when these match
  decode  sampling needs these: the specials, the clip and which VAE checkpoint to decode with
  read    the data pipeline needs these to load the shards
`vae_checkpoint` names the VAE checkpoint as {"step", "kind"} (latest or best; its EMA weights
when the VAE run kept one), so nothing has to recover it from a path.
"""

from __future__ import annotations

import json
import os

from phrase_jax.artifacts import run_dir, vae_run

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: vae_checkpoint is {"step", "kind"} (1: a path)
FIELDS = {
    "format": "reuse",
    "vae_workdir": "reuse train decode",
    "vae_step": "reuse train space decode",
    "vae_config_hash": "reuse train space decode",
    "vae_checkpoint": "reuse decode",
    "data_dir": "reuse",
    "max_slots": "reuse train read",
    "encoder_max_len": "reuse",
    "split_names": "reuse",
    "slots_per_bar": "space decode",
    "latent_dim": "train space read",
    "scale": "train read",
    "clip": "decode",
    "special_latents": "decode",
    "shards": "read",
    "songs": "read",
}
# Recorded by an LDM run but allowed to differ at sampling time: the VAE run may have moved.
MOVABLE = ("vae_workdir",)


def keys(role: str) -> tuple[str, ...]:
    """The manifest fields that `role` (reuse, train, space, decode, read) relies on."""
    return tuple(k for k, roles in FIELDS.items() if role in roles.split())


def shard_name(split: str, index: int, count: int) -> str:
    return f"latents-{split}-{index:05d}-of-{count:05d}.npz"


def path(latents_dir: str) -> str:
    return os.path.join(os.path.abspath(latents_dir), MANIFEST)


def write(latents_dir: str, manifest: dict) -> None:
    """manifest.json, atomically (process 0); written after every shard it lists."""
    missing = [k for k in keys("reuse") + keys("decode") + keys("read") if k not in manifest]
    if missing:
        raise ValueError(f"latents manifest lacks {missing}: the extraction is incomplete")
    run_dir.write_json_atomic(path(latents_dir), manifest)


def read(latents_dir: str, *, hint: str = "") -> dict:
    """The manifest, checked to hold what the data pipeline reads."""
    file = path(latents_dir)
    if not os.path.exists(file):
        raise run_dir.MissingArtifact(
            f"{file} not found: "
            + (hint or "extract the latents first (python -m phrase_jax.main --config "
               "experiments/extract.py --workdir DIR)")
        )  # fmt: skip
    with open(file) as f:
        manifest = json.load(f)
    for key in keys("read"):
        if key not in manifest:
            raise run_dir.WrongArtifact(f"{file}: no {key!r}; re-run the latent extraction")
    return manifest


def existing(latents_dir: str, inputs: dict) -> dict | None:
    """The dir's manifest when its `reuse` fields equal `inputs` and all its shards exist."""
    file = path(latents_dir)
    if not os.path.exists(file):
        return None
    with open(file) as f:
        manifest = json.load(f)
    if any(manifest.get(k) != inputs[k] for k in keys("reuse")):
        return None
    names = [name for names in manifest.get("shards", {}).values() for name in names]
    exists = all(os.path.exists(os.path.join(latents_dir, n)) for n in names)
    return manifest if exists else None


def training_data(manifest: dict) -> dict:
    """What an LDM run records about the latents it trains on (checkpoint `extra.latents`)."""
    return {key: manifest[key] for key in keys("train")}


def check_training_data(
    recorded: dict | None, manifest: dict, *, latents_dir: str, run: str, fix: str,
    ignore: tuple[str, ...] = (),
) -> None:  # fmt: skip
    """Raises when the latents LDM run `run` recorded differ from `manifest` (keys in `ignore`
    excepted); `fix` says what to do."""
    for key in keys("train"):
        if recorded and key in recorded and key not in ignore and recorded[key] != manifest[key]:
            raise run_dir.WrongArtifact(
                f"{latents_dir}: {key}={manifest[key]!r} but {run} trained on "
                f"{recorded[key]!r}, i.e. it was trained on other latents; {fix}"
            )


def check_same_space(manifest: dict, other: dict, *, what: str) -> None:
    """Two latent sets are comparable only when the same VAE encoded them."""
    for key in keys("space"):
        if manifest.get(key) != other.get(key):
            raise run_dir.WrongArtifact(
                f"{what}: its latents have {key}={other.get(key)!r}, the evaluated LDM's "
                f"{manifest.get(key)!r}; compare LDMs trained on the same VAE"
            )


def vae_checkpoint(manifest: dict, latents_dir: str) -> vae_run.CheckpointRef:
    """The VAE checkpoint that encoded these latents; checks every `decode` field is there."""
    for key in keys("decode"):
        if key not in manifest:
            raise run_dir.WrongArtifact(f"{path(latents_dir)}: no {key!r}; re-run the extraction")
    ref = manifest["vae_checkpoint"]
    if not isinstance(ref, dict):
        raise run_dir.WrongArtifact(
            f"{path(latents_dir)}: written by an older extraction (format "
            f"{manifest.get('format', 1)}); re-run the extraction (same latents, new manifest)"
        )
    return vae_run.CheckpointRef(int(ref["step"]), ref["kind"])
