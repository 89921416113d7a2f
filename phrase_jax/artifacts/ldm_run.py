"""A train_ldm workdir: what it holds and what must agree inside it.

    config.json  section_vocab.json  metrics.jsonl
    checkpoints/<step>/   model, optimizer, EMA, data iterator; `config` and `extra` JSON items:
                          extra = {"latents": the manifest's `train` fields, "section_vocab"}

section_vocab.json fixes the section ids for the run's whole life (resumes and sampling);
the checkpoint's `extra.latents` names the latents it was trained on (artifacts/latents.py).
"""

from __future__ import annotations

import os

import jax
import ml_collections

from phrase_jax import config_lib
from phrase_jax.artifacts import run_dir
from phrase_jax.music import sections

STAGE = "train_ldm"
SECTION_VOCAB = "section_vocab.json"
ROLE = "ldm_workdir must be a train_ldm run (experiments/ldm.py)"
# Model config keys that change how it runs, not its weights: a run may resume with others.
RUNTIME_MODEL_KEYS = ("remat",)


def write_config(config, workdir: str) -> str:
    return run_dir.write_config(config, workdir)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    return run_dir.read_config(workdir, stage=STAGE, hint=ROLE)


def save_or_check_section_vocab(vocab: sections.SectionVocab, workdir: str, *, source: str):
    """Saves the run's section vocabulary, or checks it equals the saved one (a resumed run
    and the sampler must use the same ids). `source` names where `vocab` came from."""
    path = os.path.join(workdir, SECTION_VOCAB)
    if os.path.exists(path):
        saved = sections.SectionVocab.load(path)
        if saved.types != vocab.types:
            raise run_dir.WrongArtifact(
                f"{path}: differs from the vocabulary of {source}'s train songs; the latents "
                "changed since this run started: use a fresh workdir"
            )
    elif jax.process_index() == 0:
        vocab.save(path)


def read_section_vocab(workdir: str, checkpoint_json: dict) -> sections.SectionVocab:
    """section_vocab.json, checked against the one the checkpoint recorded."""
    path = os.path.join(workdir, SECTION_VOCAB)
    if not os.path.exists(path):
        raise run_dir.MissingArtifact(f"{path} not found: {ROLE}")
    vocab = sections.SectionVocab.load(path)
    saved = checkpoint_json.get("extra", {}).get("section_vocab")
    if saved is not None and list(saved) != vocab.types:
        raise run_dir.WrongArtifact(f"{path}: differs from its checkpoint's")
    return vocab


def checkpoint_extra(latents_provenance: dict, vocab: sections.SectionVocab) -> dict:
    """The `extra` JSON item every checkpoint of the run carries."""
    return {"latents": latents_provenance, "section_vocab": vocab.types}


def recorded_latents(checkpoint_json: dict) -> dict | None:
    """The latents' `train` fields a checkpoint recorded (None for checkpoints without it)."""
    return checkpoint_json.get("extra", {}).get("latents")


def config_lists(mapping) -> dict:
    """A config mapping as plain JSON-comparable values (tuples as lists), without the
    runtime-only keys."""
    to_dict = getattr(mapping, "to_dict", None)
    values = to_dict() if to_dict else dict(mapping)
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in values.items()
        if k not in RUNTIME_MODEL_KEYS
    }


def check_same_model(checkpoint_json: dict, config, workdir: str) -> None:
    """A resumed run's checkpoints must have been trained with this model config."""
    saved_model = checkpoint_json.get("config", {}).get("model")
    if saved_model is not None and config_lists(saved_model) != config_lists(config.model):
        raise run_dir.WrongArtifact(
            f"{workdir}: its checkpoints were trained with another model config; use a fresh "
            "workdir or the run's own config"
        )


def require(config, key: str = "ldm_workdir") -> None:
    """The LDM run that config `key` names exists (its config.json), checked before anything
    is loaded."""
    config_lib.require_file(
        config, key, run_dir.CONFIG_JSON,
        f"train that LDM first (make train-ldm) or set {key} to a train_ldm run",
    )  # fmt: skip
