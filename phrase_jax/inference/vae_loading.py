"""Load a trained PhraseVAE from its workdir (config.json + checkpoint) for the later stages.

    loaded = load_vae("runs/vae", mesh)          # latest checkpoint; checkpoint="best" for best/
    means = decoding.encode_latents(loaded.model, batch)

The latent extraction and sampling stages both read the VAE this way, so the model they use is
exactly the one the training run saved: its own config.json rebuilds the architecture, and the
EMA weights are used when the run kept an EMA (the same choice as the VAE's own evaluation).
Only those weights are read from the checkpoint.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from flax import nnx
from jax.sharding import Mesh

from phrase_jax import config_lib
from phrase_jax.artifacts import vae_run
from phrase_jax.inference import params
from phrase_jax.models import vae
from phrase_jax.training import sharding


@dataclasses.dataclass(frozen=True)
class LoadedVAE:
    """A restored mode-`vae` PhraseVAE and where it came from.

    model: the PhraseVAE (EMA weights when the run kept an EMA), sharded on the given mesh.
    config: the VAE run's config (from its config.json).
    config_hash: `config_lib.config_hash(config)`, the provenance the latent manifest records.
    checkpoint: which checkpoint (step, latest or best); `used_ema` whether its EMA weights.
    checkpoint_dir: absolute `<workdir>[/best]/checkpoints/<step>`.
    """

    model: vae.PhraseVAE
    config: ml_collections.ConfigDict
    config_hash: str
    checkpoint: vae_run.CheckpointRef
    used_ema: bool
    checkpoint_dir: str

    @property
    def step(self) -> int:
        return self.checkpoint.step


def load_vae(
    vae_workdir: str, mesh: Mesh, *, checkpoint: str = "latest", step: int | None = None
) -> LoadedVAE:
    """Restores the VAE of `vae_workdir` onto `mesh` with that run's own sharding rules.

    `step` picks a checkpoint (e.g. the one a latents manifest names); None = the newest of
    `checkpoint` (`latest`: the run's checkpoints/, `best`: its best/checkpoints/).
    """
    config = vae_run.read_vae_config(vae_workdir)
    ref = vae_run.find_checkpoint(vae_workdir, checkpoint, step)
    model_config = vae.VAEConfig.from_mapping(config.model)
    used_ema = config.ema_decay > 0
    restored = params.restore_model(
        lambda: vae.PhraseVAE(model_config, rngs=nnx.Rngs(config.seed)),
        vae_run.checkpoint_root(vae_workdir, ref.kind),
        ref.step,
        mesh,
        sharding.logical_rules(config.sharding),
        ema=used_ema,
    )
    return LoadedVAE(
        model=restored.model,
        config=config,
        config_hash=config_lib.config_hash(config),
        checkpoint=ref,
        used_ema=used_ema,
        checkpoint_dir=vae_run.checkpoint_dir(vae_workdir, ref),
    )
