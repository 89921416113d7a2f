"""A train_vae workdir: what it holds, and which of its checkpoints a later stage uses.

    config.json  vocab.json  metrics.jsonl
    checkpoints/<step>/            latest checkpoints (model, optimizer, EMA, data iterator)
    best/checkpoints/<step>/ + best/best.json   the checkpoint with the best valid metric
    eval_metrics.json + eval_config.json        (mode=eval)

A checkpoint is named by `CheckpointRef(step, kind)`, kind "latest" or "best"; its weights are
the EMA's when the run kept one. The latents manifest records this ref, so the sampler decodes
with the very checkpoint that encoded the training data.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from phrase_jax.artifacts import run_dir
from phrase_jax.music.vocab import Vocab

STAGE = "train_vae"
BEST_DIR = "best"
VOCAB_JSON = "vocab.json"
CHECKPOINT_KINDS = ("latest", "best")
HINT = "train the VAE first (experiments/vae.py)"
ROLE = "vae_workdir must be a trained VAE run (experiments/vae.py)"


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """One VAE checkpoint: its step and whether it is under checkpoints/ or best/checkpoints/."""

    step: int
    kind: str = "latest"

    def __post_init__(self):
        if self.kind not in CHECKPOINT_KINDS:
            raise run_dir.WrongArtifact(
                f"config vae_checkpoint={self.kind!r}: choose one of {CHECKPOINT_KINDS}"
            )

    def to_json(self) -> dict:
        return {"step": self.step, "kind": self.kind}


def write_config(config, workdir: str) -> str:
    """config.json of a training run, or eval_config.json for `mode=eval` (never replacing the
    config the run was trained with)."""
    is_eval = config.get("mode", "train") == "eval"
    exists = os.path.exists(os.path.join(workdir, run_dir.CONFIG_JSON))
    name = run_dir.EVAL_CONFIG_JSON if is_eval and exists else run_dir.CONFIG_JSON
    return run_dir.write_config(config, workdir, name=name)


def write_vocab(workdir: str) -> None:
    """vocab.json next to the checkpoints; an existing one must equal this code's table."""
    path = os.path.join(workdir, VOCAB_JSON)
    if os.path.exists(path):
        Vocab.from_json(path)  # raises when the run was made with another vocabulary
    elif jax.process_index() == 0:
        Vocab().to_json(path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config.json of any train_vae run (span infill, autoencoder or VAE)."""
    return run_dir.read_config(workdir, stage=STAGE, hint=ROLE)


def read_vae_config(workdir: str) -> ml_collections.ConfigDict:
    """The config.json of a model.mode='vae' run: the only kind whose latents the LDM uses."""
    config = read_config(workdir)
    mode = config.get("model", {}).get("mode")
    if mode != "vae":
        raise run_dir.WrongArtifact(
            f"{os.path.abspath(workdir)}/config.json: model.mode {mode!r}; latents need a "
            "train_vae run with model.mode='vae' (experiments/vae.py)"
        )
    return config


def checkpoint_root(workdir: str, kind: str = "latest") -> str:
    """The folder whose `checkpoints/` holds checkpoints of `kind`: the workdir or its best/."""
    CheckpointRef(0, kind)  # validates the kind
    root = os.path.abspath(workdir)
    return os.path.join(root, BEST_DIR) if kind == "best" else root


def saved_steps(root: str) -> list[int]:
    folder = os.path.join(root, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def find_checkpoint(workdir: str, kind: str = "latest", step: int | None = None) -> CheckpointRef:
    """The newest checkpoint of `kind` (or `step`, checked to exist), without reading it."""
    root = checkpoint_root(workdir, kind)
    steps = saved_steps(root)
    if step is None:
        if not steps:
            raise run_dir.MissingArtifact(
                f"{root}/checkpoints: no VAE checkpoint there; {HINT}"
                + (" or use vae_checkpoint=latest" if kind == "best" else "")
            )
        step = steps[-1]
    elif step not in steps:
        raise run_dir.MissingArtifact(
            f"{root}/checkpoints/{step}: no such VAE checkpoint (it may have been rotated out; "
            "raise checkpoint.max_to_keep or re-extract the latents)"
        )
    return CheckpointRef(int(step), kind)


def warm_start_source(workdir: str) -> CheckpointRef | None:
    """What a later VAE stage starts from: the run's best checkpoint when it has one, else its
    latest, else None."""
    for kind in ("best", "latest"):
        if saved_steps(checkpoint_root(workdir, kind)):
            return find_checkpoint(workdir, kind)
    return None


def checkpoint_dir(workdir: str, ref: CheckpointRef) -> str:
    return os.path.join(checkpoint_root(workdir, ref.kind), "checkpoints", str(ref.step))


def check_same_model(checkpointer, step: int, config) -> None:
    """Before restoring: the checkpoint's saved config must have this config's model, else a
    one-line error (instead of orbax's shape mismatch deep inside the restore)."""
    step_dir = os.path.join(checkpointer.directory, str(step))
    if not os.path.isdir(os.path.join(step_dir, "config")):
        return  # saved without a config item: the restore itself checks the shapes
    saved = checkpointer.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
    )["config"]
    ours = config.model.to_dict()
    differ = sorted(k for k in set(ours) | set(saved.get("model", {}))
                    if saved.get("model", {}).get(k) != ours.get(k))  # fmt: skip
    if differ:
        raise run_dir.WrongArtifact(
            f"{step_dir} was trained with another model config ({', '.join(differ)} differ); "
            "pass the run's own experiment and variant (e.g. experiments/vae.py:cpu,mode=eval) "
            "or use a fresh workdir"
        )
