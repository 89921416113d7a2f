"""What every run folder shares: its config.json, and the errors that name a run's files.

A stage writes config.json only after its own checks (config values, and for a resumed run
that the checkpoints belong to this config) have passed, so a rejected launch never replaces
the config a run was trained with. An evaluation of an existing run writes eval_config.json.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from phrase_jax import config_lib, errors

CONFIG_JSON = "config.json"
EVAL_CONFIG_JSON = "eval_config.json"


class MissingArtifact(errors.UserError, FileNotFoundError):
    """A run file or folder that should exist does not; the message names it and the fix."""


class WrongArtifact(errors.UserError, ValueError):
    """A run file exists but belongs to another kind of run, model or data."""


def write_json_atomic(path: str, content: dict | list) -> None:
    """Process 0 writes `path.tmp<pid>` and renames it: readers never see half a file."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=1)
    os.replace(tmp, path)


def write_config(config, workdir: str, *, name: str = CONFIG_JSON) -> str:
    """Writes the run's config (atomically, process 0); call after the stage's checks passed.
    Returns the path."""
    path = os.path.join(os.path.abspath(workdir), name)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(config_lib.to_json(config))
        os.replace(tmp, path)
    return path


def read_config(workdir: str, *, stage: str, hint: str) -> ml_collections.ConfigDict:
    """The config.json of a `stage` run; `hint` says what the workdir must be (e.g.
    "ldm_workdir must be a train_ldm run (experiments/ldm.py)")."""
    path = os.path.join(os.path.abspath(workdir), CONFIG_JSON)
    if not os.path.exists(path):
        raise MissingArtifact(f"{path} not found: {hint}")
    with open(path) as f:
        config = config_lib.from_json(f.read())
    if config.get("stage") != stage:
        raise WrongArtifact(
            f"{path}: a {config.get('stage')!r} run, not {stage}; pass a {stage} workdir ({hint})"
        )
    return config
