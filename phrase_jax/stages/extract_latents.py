"""Latent extraction (SPEC 3): every slot phrase of every song → its PhraseVAE mean.

    python -m phrase_jax.main --config experiments/extract.py --workdir runs/latents

`run(config, workdir)` reads top to bottom: the VAE run's step and config hash (a finished
extraction with the same provenance is skipped) → every split's `songs` records → the distinct
slot phrases (the `[SEP]`, `[INST]` and `b-1` phrases among them) encoded once each, in fixed-size
batches sharded over the mesh's `data` axis → each song as [max_slots, latent_dim] (slots after
its end hold the `[SEP]` latent) → scale and clip from the train split → npz shards, then
manifest.json, each written to a temporary name and renamed.

The workdir is the latents dir of docs/design.md ("Stage artifacts"; its schema, manifest.json
included, is `phrase_jax/artifacts/latents.py`).
Identical phrases get identical latents because each distinct phrase is encoded once; this also
makes the padding exactly the `[SEP]` latent.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from data_pipelines import sources, transforms
from phrase_jax import config_lib
from phrase_jax.artifacts import latents as latents_artifact
from phrase_jax.artifacts import run_dir, vae_run
from phrase_jax.inference import vae_loading
from phrase_jax.music import layout
from phrase_jax.training import sharding

MANIFEST = latents_artifact.MANIFEST
shard_name = latents_artifact.shard_name


def _write_atomic(path: str, write) -> None:
    """`write(file)` into `path.tmp<pid>`, then rename: readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def make_encoder(model, mesh):
    """Jitted `(state, encoder_ids [B, L], encoder_mask [B, L]) -> means [B, D]`, batch split
    over `data`, the VAE state on its own shardings; returns (encode_fn, state)."""
    graphdef, state = nnx.split(model)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = sharding.batch_sharding(mesh)

    def encode(state, encoder_ids, encoder_mask):
        return nnx.merge(graphdef, state).latent_moments(encoder_ids, encoder_mask)[0]

    encode_fn = jax.jit(
        encode,
        in_shardings=(state_shardings, batch_sharding, batch_sharding),
        out_shardings=batch_sharding,
    )
    return encode_fn, state


def encode_phrases(
    model, mesh, phrases: list[tuple[int, ...]], *, batch_size: int, max_len: int
) -> np.ndarray:
    """Means float32 [len(phrases), latent_dim] of token phrases, in fixed-size global batches.

    The batch is rounded up to a multiple of the `data` axis size and the last one is filled
    with copies of the first phrase, so one compiled function serves every batch.
    """
    data_ways = mesh.shape["data"]
    batch = -(-batch_size // data_ways) * data_ways
    encode_fn, state = make_encoder(model, mesh)
    batch_sharding = sharding.batch_sharding(mesh)

    def global_array(local: np.ndarray) -> jax.Array:
        # Every process holds the whole (small) batch; each supplies its devices' slices.
        return jax.make_array_from_callback(local.shape, batch_sharding, lambda i: local[i])

    means, started = [], time.monotonic()
    n_batches = -(-len(phrases) // batch)
    for b in range(n_batches):
        chunk = phrases[b * batch : (b + 1) * batch]
        chunk = chunk + [phrases[0]] * (batch - len(chunk))
        examples = [transforms.phrase_example(np.asarray(p), max_len) for p in chunk]
        ids = np.stack([e["encoder_ids"] for e in examples])
        mask = np.stack([e["encoder_mask"] for e in examples])
        out = encode_fn(state, global_array(ids), global_array(mask))
        means.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
        if (b + 1) % 50 == 0 or b + 1 == n_batches:
            logging.info(
                "encoded %d/%d phrase batches (%.1f s)",
                b + 1,
                n_batches,
                time.monotonic() - started,
            )
    return np.concatenate(means)[: len(phrases)].astype(np.float32)


def scale_and_clip(
    train_latents: np.ndarray, n_bars: np.ndarray, slots_per_bar: int, percentile: float
) -> tuple[float, float]:
    """(scale, clip) from the train split (SPEC 3).

    train_latents float32 [S, N, D] (unscaled, padded); scale = mean over dims of the std of the
    real slots' latents; clip = `percentile` of |latents / scale| over every slot, padding too,
    because the LDM sees the padding as well.
    """
    real = np.concatenate(
        [song[: slots_per_bar * n] for song, n in zip(train_latents, n_bars, strict=True)]
    )
    scale = float(np.mean(np.std(real.astype(np.float64), axis=0)))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"train latents have scale {scale}: the VAE means are constant or bad")
    clip = float(np.percentile(np.abs(train_latents.astype(np.float64) / scale), percentile))
    return scale, clip


def _provenance(
    config, data_dir: str, vae_workdir: str, vae: vae_run.CheckpointRef, vae_hash: str,
    max_len: int,
) -> dict:  # fmt: skip
    """The manifest's `reuse` fields (artifacts/latents.py): the inputs of the extraction."""
    return {
        "format": latents_artifact.FORMAT_VERSION,
        "vae_workdir": vae_workdir,
        "vae_step": vae.step,
        "vae_config_hash": vae_hash,
        "vae_checkpoint": vae.to_json(),
        "data_dir": data_dir,
        "max_slots": int(config.max_slots),
        "encoder_max_len": max_len,
        "split_names": list(config.splits),
    }


def _collect_songs(data_dir: str, splits, slots_per_bar: int, max_slots: int):
    """(songs by split, skipped [{name, split, reason}]); songs too long for max_slots skip."""
    by_split, skipped = {}, []
    for split in splits:
        kept = []
        for song in sources.read_songs(data_dir, split):
            n_slots = slots_per_bar * song["n_bars"]
            if len(song["slots"]) != n_slots:
                raise run_dir.WrongArtifact(
                    f"{data_dir}: song {song['name']} has {len(song['slots'])} slots for "
                    f"{song['n_bars']} bars x {slots_per_bar}; re-run prepare"
                )
            if n_slots > max_slots:
                skipped.append(
                    {
                        "name": song["name"],
                        "split": split,
                        "reason": f"{n_slots} slots > max_slots {max_slots}",
                    }
                )
                continue
            kept.append(song)
        by_split[split] = kept
    if not by_split.get("train"):
        raise run_dir.WrongArtifact(
            f"{data_dir}: no train songs to extract; the scale needs the train split"
        )
    return by_split, skipped


def validate_config(config) -> None:
    """This stage's own keys and inputs, before anything is loaded (main calls it before the
    workdir is touched, `run` again at its top)."""
    config_lib.require(
        config, "vae_checkpoint", lambda v: v in vae_run.CHECKPOINT_KINDS,
        f"choose one of {vae_run.CHECKPOINT_KINDS}",
    )  # fmt: skip
    config_lib.require(config, "splits", lambda v: "train" in v, "must include train (the scale)")
    for key in ("batch_size", "max_slots", "songs_per_shard"):
        config_lib.require(config, key, lambda v: v >= 1, "must be >= 1")
    config_lib.require(config, "clip_percentile", lambda v: 0 < v <= 100, "in (0, 100]")
    config_lib.require_file(
        config, "data.dir", "manifest.json",
        "prepare the data first (make data, or the prepare stage) or set data.dir",
    )  # fmt: skip
    config_lib.require_file(
        config, "vae_workdir", "config.json",
        "train the VAE first (make train-vae) or set vae_workdir to a train_vae run",
    )  # fmt: skip


def run(config, workdir: str) -> dict:
    """Extracts (or, when up to date, reuses) the latents of `config.vae_workdir`; returns the
    manifest dict."""
    validate_config(config)
    started = time.monotonic()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    data_dir = os.path.abspath(config.data.dir)
    data_manifest = sources.read_manifest(data_dir)
    slots_per_bar = int(data_manifest["settings"]["slots_per_bar"])
    vae_workdir = os.path.abspath(config.vae_workdir)
    vae_config = vae_run.read_vae_config(vae_workdir)
    vae_ref = vae_run.find_checkpoint(vae_workdir, config.vae_checkpoint)
    vae_step = vae_ref.step
    max_len = int(config.data.max_len or vae_config.data.max_len)
    provenance = _provenance(
        config, data_dir, vae_workdir, vae_ref, config_lib.config_hash(vae_config), max_len
    )
    run_dir.write_config(config, workdir)
    previous = latents_artifact.existing(workdir, provenance)
    if previous is not None:
        logging.info(
            "%s: latents up to date (VAE step %d, hash %s); skipping",
            workdir,
            vae_step,
            provenance["vae_config_hash"],
        )
        return previous

    by_split, skipped = _collect_songs(data_dir, config.splits, slots_per_bar, config.max_slots)
    special = {
        "sep": tuple(layout.SEP_PHRASE),
        "inst": tuple(layout.INST_PHRASE),
        "bar": tuple(layout.BAR_PHRASE),
    }
    phrase_index: dict[tuple[int, ...], int] = {p: i for i, p in enumerate(special.values())}
    slot_ids = {}
    for split, songs in by_split.items():
        ids = np.full((len(songs), config.max_slots), phrase_index[special["sep"]], np.int64)
        for s, song in enumerate(songs):
            for j, slot in enumerate(song["slots"]):
                ids[s, j] = phrase_index.setdefault(tuple(slot), len(phrase_index))
        slot_ids[split] = ids
    phrases = list(phrase_index)
    limit = max_len - len(transforms.PHRASE_PREFIX) - 1
    truncated = sum(len(p) > limit for p in phrases)
    logging.info(
        "%d songs, %d distinct phrases (%d truncated to %d tokens)",
        sum(map(len, by_split.values())),
        len(phrases),
        truncated,
        limit,
    )

    mesh = sharding.make_mesh(config.mesh)
    # The step checked above, even if a VAE run still training has saved a newer one since.
    loaded = vae_loading.load_vae(
        vae_workdir, mesh, checkpoint=config.vae_checkpoint, step=vae_step
    )
    means = encode_phrases(
        loaded.model, mesh, phrases, batch_size=config.batch_size, max_len=max_len
    )
    latents = {split: means[ids] for split, ids in slot_ids.items()}
    n_bars = {s: np.array([x["n_bars"] for x in songs], np.int32) for s, songs in by_split.items()}
    scale, clip = scale_and_clip(
        latents["train"], n_bars["train"], slots_per_bar, config.clip_percentile
    )

    manifest = dict(
        provenance,
        slots_per_bar=slots_per_bar,
        latent_dim=int(means.shape[1]),
        scale=scale,
        clip=clip,
        clip_percentile=float(config.clip_percentile),
    )
    manifest["special_latents"] = {k: means[phrase_index[p]].tolist() for k, p in special.items()}
    manifest.update(
        songs=[],
        shards={},
        skipped=skipped,
        distinct_phrases=len(phrases),
        truncated_phrases=int(truncated),
    )
    manifest["splits"] = {split: len(songs) for split, songs in by_split.items()}
    if jax.process_index() == 0:
        _write_shards(workdir, config.songs_per_shard, by_split, latents, n_bars, manifest)
    manifest["seconds"] = round(time.monotonic() - started, 2)
    latents_artifact.write(workdir, manifest)
    logging.info(
        "latents: %s; scale %.4f, clip %.3f, %.1f s",
        manifest["splits"],
        scale,
        clip,
        manifest["seconds"],
    )
    return manifest


def _write_shards(workdir, songs_per_shard, by_split, latents, n_bars, manifest) -> None:
    """npz shards of every split; fills manifest["songs"] and manifest["shards"]; removes shard
    files of an earlier extraction that the new manifest does not list."""
    stale_manifest = os.path.join(workdir, MANIFEST)
    if os.path.exists(stale_manifest):
        os.remove(stale_manifest)  # a crash from here on must not leave a valid-looking dir
    for split, songs in by_split.items():
        count = max(1, -(-len(songs) // songs_per_shard))
        manifest["shards"][split] = []
        for i in range(count):
            rows = slice(i * songs_per_shard, (i + 1) * songs_per_shard)
            name = shard_name(split, i, count)
            arrays = {
                "latents": latents[split][rows].astype(np.float32),
                "n_bars": n_bars[split][rows],
                "names": np.array([s["name"] for s in songs[rows]], dtype=str),
            }
            _write_atomic(os.path.join(workdir, name), lambda f, a=arrays: np.savez(f, **a))
            manifest["shards"][split].append(name)
            for index, song in enumerate(songs[rows]):
                manifest["songs"].append(
                    {
                        "name": song["name"],
                        "split": split,
                        "n_bars": song["n_bars"],
                        "sections": song["sections"],
                        "shard": name,
                        "index": index,
                    }
                )
    listed = {n for names in manifest["shards"].values() for n in names}
    for name in os.listdir(workdir):
        if name.startswith("latents-") and name.endswith(".npz") and name not in listed:
            os.remove(os.path.join(workdir, name))
