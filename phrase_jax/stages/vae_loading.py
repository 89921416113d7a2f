"""Load a trained PhraseVAE from its workdir (config.json + checkpoint) for the later stages.

    loaded = load_vae("runs/vae", mesh)          # latest checkpoint; checkpoint="best" for best/
    means = decoding.encode_latents(loaded.model, batch)

The latent extraction and sampling stages both read the VAE this way, so the model they use is
exactly the one the training run saved: its own config.json rebuilds the architecture, and the
EMA weights are used when the run kept an EMA (the same choice as the VAE's own evaluation).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from phrase_jax import config_lib
from phrase_jax.models import vae
from phrase_jax.stages import train_vae
from phrase_jax.training import checkpointing, train_state

CHECKPOINT_CHOICES = ("latest", "best")


@dataclasses.dataclass(frozen=True)
class LoadedVAE:
    """A restored mode-`vae` PhraseVAE and where it came from.

    model: the PhraseVAE (EMA weights when the run kept an EMA), sharded on the given mesh.
    config: the VAE run's config (from its config.json).
    config_hash: `config_lib.config_hash(config)`, the provenance the latent manifest records.
    step: the checkpoint's train step.
    checkpoint_dir: absolute `<workdir>[/best]/checkpoints/<step>`.
    """

    model: vae.PhraseVAE
    config: ml_collections.ConfigDict
    config_hash: str
    step: int
    checkpoint_dir: str


def read_vae_config(vae_workdir: str) -> ml_collections.ConfigDict:
    """The VAE run's config.json, checked to be a mode-`vae` train_vae run."""
    path = os.path.join(os.path.abspath(vae_workdir), "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: vae_workdir must be a trained VAE run (experiments/vae.py)"
        )
    with open(path) as f:
        config = config_lib.from_json(f.read())
    mode = config.get("model", {}).get("mode")
    if config.get("stage") != "train_vae" or mode != "vae":
        raise ValueError(
            f"{path}: stage {config.get('stage')!r}, model.mode {mode!r}; latents need a "
            "train_vae run with model.mode='vae' (experiments/vae.py)"
        )
    return config


def checkpoint_root(vae_workdir: str, checkpoint: str = "latest") -> str:
    """The folder whose `checkpoints/` holds the wanted step: the workdir, or its `best/`."""
    if checkpoint not in CHECKPOINT_CHOICES:
        raise ValueError(
            f"config vae_checkpoint={checkpoint!r}: choose one of {CHECKPOINT_CHOICES}"
        )
    root = os.path.abspath(vae_workdir)
    return os.path.join(root, train_vae.BEST_DIR) if checkpoint == "best" else root


def latest_vae_step(vae_workdir: str, checkpoint: str = "latest") -> int:
    """The step `load_vae` would restore, without restoring anything."""
    root = checkpoint_root(vae_workdir, checkpoint)
    folder = os.path.join(root, "checkpoints")
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    if not steps:
        raise FileNotFoundError(
            f"{folder}: no VAE checkpoint there; train the VAE first (experiments/vae.py)"
            + (" or use vae_checkpoint=latest" if checkpoint == "best" else "")
        )
    return max(steps)


def load_vae(
    vae_workdir: str, mesh: Mesh, *, checkpoint: str = "latest", step: int | None = None
) -> LoadedVAE:
    """Restores the VAE of `vae_workdir` onto `mesh` with that run's own sharding rules.

    `step` picks a checkpoint (e.g. the one a latents manifest names); None = the newest of
    `checkpoint` (`latest`: the run's checkpoints/, `best`: its best/checkpoints/).
    """
    config = read_vae_config(vae_workdir)
    root = checkpoint_root(vae_workdir, checkpoint)
    if step is None:
        step = latest_vae_step(vae_workdir, checkpoint)
    elif not os.path.isdir(os.path.join(root, "checkpoints", str(step))):
        raise FileNotFoundError(
            f"{root}/checkpoints/{step}: no such VAE checkpoint (it may have been rotated out; "
            "raise checkpoint.max_to_keep or re-extract the latents)"
        )
    spec, _, _ = train_vae.build_state_spec(config, mesh)
    checkpointer = checkpointing.Checkpointer(root, async_save=False)
    try:
        restored = checkpointer.restore(step, spec)
    finally:
        checkpointer.close()
    model, _, ema = train_state.unpack(spec, restored.state)
    model = ema if ema is not None else model
    # Drop the optimizer's arrays now: only the model is needed downstream.
    model = nnx.merge(*nnx.split(model))
    jax.block_until_ready(nnx.state(model))
    return LoadedVAE(
        model=model,
        config=config,
        config_hash=config_lib.config_hash(config),
        step=restored.step,
        checkpoint_dir=os.path.join(root, "checkpoints", str(restored.step)),
    )
