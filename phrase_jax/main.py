"""Entry point: parse the experiment config, prepare the workdir, run the stage.

    python -m phrase_jax.main --config experiments/vae.py:runlocal,total_steps=10 \
        --workdir /tmp/vae_run [--config.optim.learning_rate=3e-4]

The workdir is the run's identity: `config.json` is written there and the stage resumes from
the checkpoints it finds there.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
from absl import app, flags, logging

from phrase_jax import config_lib

_CONFIG = config_lib.define_config_flag("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, config.json).")

# Stage name -> importer of its `run(config, workdir)`. Imports are lazy so that main works
# (and reports clearly) before a stage module exists; no module path is ever built from input.


def _train_vae():
    from phrase_jax.stages import train_vae

    return train_vae.run


def _extract_latents():
    from phrase_jax.stages import extract_latents

    return extract_latents.run


def _train_ldm():
    from phrase_jax.stages import train_ldm

    return train_ldm.run


def _sample():
    from phrase_jax.stages import sample

    return sample.run


def _evaluate():
    from phrase_jax.stages import evaluate

    return evaluate.run


STAGE_RUNNERS: dict[str, Callable[[], Callable]] = {
    "train_vae": _train_vae,
    "extract_latents": _extract_latents,
    "train_ldm": _train_ldm,
    "sample": _sample,
    "evaluate": _evaluate,
}


def wants_multi_host(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """True when the environment describes more than one process (explicit JAX coordinator,
    SLURM or Open MPI with several tasks, several TPU workers); jax.distributed.initialize()
    then detects the rest itself."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(key, "1").isdigit() and int(environ.get(key, "1")) > 1:
            return True
    return len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def stage_runner(stage: str) -> Callable:
    """The `run(config, workdir)` of a stage; a clear error for unknown or missing stages."""
    if stage not in STAGE_RUNNERS:
        raise ValueError(
            f"config stage={stage!r} is unknown; choose one of {sorted(STAGE_RUNNERS)}"
        )
    try:
        return STAGE_RUNNERS[stage]()
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("phrase_jax.stages"):
            raise ModuleNotFoundError(
                f"stage {stage!r}: module {error.name} is not available in this checkout"
            ) from error
        raise


def prepare_workdir(config, workdir: str) -> str:
    """Creates the workdir and writes config.json (process 0); returns its absolute path."""
    workdir = os.path.abspath(workdir)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(config))
    return workdir


def run(config, workdir: str) -> None:
    """Validates, prepares the workdir and dispatches on `config.stage`."""
    config_lib.validate(config)
    runner = stage_runner(config.stage)
    workdir = prepare_workdir(config, workdir)
    logging.info(
        "stage %s, config hash %s, workdir %s",
        config.stage,
        config_lib.config_hash(config),
        workdir,
    )
    runner(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("pass --config path/to/experiment.py[:args] and --workdir DIR")
    if wants_multi_host():
        jax.distributed.initialize()
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
