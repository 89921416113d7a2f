"""Entry point: parse the experiment config, validate it, prepare the workdir, run the stage.

    python -m phrase_jax.main --config experiments/vae.py:runlocal,total_steps=10 \
        --workdir /tmp/vae_run [--config.optim.learning_rate=3e-4] [--verbose]

The workdir is the run's identity: the stage writes `config.json` there (after its checks) and
resumes from the checkpoints it finds there. Before anything is loaded, `config_lib.validate`
checks the keys every stage of its kind needs and the stage's own `validate_config` its own keys
and inputs.

Everyday mistakes (an unknown or mistyped key, a value of the wrong type, a missing run, data
folder or checkpoint: `errors.UserError`, `MidiReadError`, `CheckpointError`, absl flag errors)
print one line on stderr and exit 1; Ctrl-C exits 130 with `interrupted at step N; run the same
command to resume`. `--verbose` adds the traceback and the libraries' INFO logs.

Several processes (README "Multi-host training") run the same command with
`--coordinator_address host:port --num_processes N --process_id i` (or `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; nothing under SLURM / Open MPI; `--multi_host` on a TPU
pod slice) and the same workdir on a filesystem every process sees.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType

import jax
from absl import app, flags, logging

from phrase_jax import config_lib, errors, logs
from phrase_jax.training import distributed

_CONFIG = config_lib.define_config_flag("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, config.json).")
_VERBOSE = flags.DEFINE_boolean(
    "verbose", False, "Show the traceback of an error and the libraries' INFO logs (orbax)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (else $JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (else $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process, 0..num_processes-1 (else $JAX_PROCESS_ID)."
)
_MULTI_HOST = flags.DEFINE_boolean(
    "multi_host", False, "Join a multi-process run that JAX detects (TPU pod slice, SLURM, MPI)."
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds to wait for every process to join."
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "Seconds of silence after which a process counts as dead and the "
    "others stop.",
)  # fmt: skip
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    "shutdown_timeout", 300, "Seconds a finished process waits for the others at exit."
)
_STALL_TIMEOUT = flags.DEFINE_float(
    "stall_timeout", 1800.0, "Multi-process runs exit when no batch was built for this many "
    "seconds (a stuck collective); 0 turns the watchdog off.",
)  # fmt: skip

# Stage name -> importer of its module, which has `validate_config(config)` (its own keys and
# inputs, checked before anything loads) and `run(config, workdir)`. Imports are lazy so that
# main works (and reports clearly) before a stage module exists; no module path is ever built
# from input.


def _prepare():
    from phrase_jax.stages import prepare

    return prepare


def _train_vae():
    from phrase_jax.stages import train_vae

    return train_vae


def _extract_latents():
    from phrase_jax.stages import extract_latents

    return extract_latents


def _train_ldm():
    from phrase_jax.stages import train_ldm

    return train_ldm


def _sample():
    from phrase_jax.stages import sample

    return sample


def _evaluate():
    from phrase_jax.stages import evaluate

    return evaluate


def _export():
    from phrase_jax.stages import export

    return export


def _evaluate_midi():
    from phrase_jax.stages import evaluate_midi

    return evaluate_midi


def _edit():
    from phrase_jax.stages import edit

    return edit


STAGE_MODULES: dict[str, Callable[[], ModuleType]] = {
    "prepare": _prepare,
    "train_vae": _train_vae,
    "extract_latents": _extract_latents,
    "train_ldm": _train_ldm,
    "sample": _sample,
    "evaluate": _evaluate,
    "export": _export,
    "evaluate_midi": _evaluate_midi,
    "edit": _edit,
}


def wants_multi_host(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """True when the environment describes more than one process (see `distributed`)."""
    return distributed.wants_multi_host(environ)


def join_processes(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Initialises the multi-process run that the flags or the environment describe (nothing
    for a single process); then only process 0 logs below WARNING."""
    settings = distributed.resolve_settings(
        environ,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
        multi_host=_MULTI_HOST.value,
        initialization_timeout_s=_INIT_TIMEOUT.value,
        heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value,
        shutdown_timeout_s=_SHUTDOWN_TIMEOUT.value,
        stall_timeout_s=_STALL_TIMEOUT.value,
    )
    if settings is None:
        return
    distributed.initialize(settings)
    distributed.start_stall_watchdog(settings.stall_timeout_s)
    if not distributed.is_main_process():
        logging.set_verbosity(logging.WARNING)  # the run's log is process 0's


def stage_module(stage: str) -> ModuleType:
    """The module of a stage (`validate_config`, `run`); a clear error for unknown or missing
    stages."""
    if stage not in STAGE_MODULES:
        raise config_lib.ConfigError(
            f"config stage={stage!r} is unknown; choose one of {sorted(STAGE_MODULES)}"
        )
    try:
        return STAGE_MODULES[stage]()
    # `from phrase_jax.stages import x` with x missing raises a plain ImportError naming the
    # package, `import phrase_jax.stages.x` a ModuleNotFoundError naming the module.
    except ImportError as error:
        if error.name and error.name.startswith("phrase_jax.stages"):
            raise ModuleNotFoundError(
                f"stage {stage!r}: module {error.name} is not available in this checkout"
            ) from error
        raise


def validate(config) -> ModuleType:
    """Every check that needs no checkpoint: the keys of the stage's kind (config_lib), then the
    stage's own keys and inputs. Returns the stage module."""
    config_lib.validate(config)
    module = stage_module(config.stage)
    module.validate_config(config)
    return module


def prepare_workdir(config, workdir: str) -> str:
    """Creates the workdir (process 0); returns its absolute path. The stage writes config.json
    itself once its checks pass (phrase_jax/artifacts/), so a rejected launch never replaces
    the config a run was trained with."""
    del config  # the stage writes it
    workdir = os.path.abspath(workdir)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
    return workdir


def run(config, workdir: str) -> None:
    """Validates, prepares the workdir and dispatches on `config.stage`."""
    module = validate(config)
    workdir = prepare_workdir(config, workdir)
    logging.info(
        "stage %s, config hash %s, workdir %s",
        config.stage,
        config_lib.config_hash(config),
        workdir,
    )
    module.run(config, workdir)


# Library errors whose one-line message already names the file and the fix.
LIBRARY_USER_ERRORS = (
    ("phrase_jax.music.midi_io", "MidiReadError"),
    ("phrase_jax.training.checkpointing", "CheckpointError"),
)


def one_line(error: BaseException) -> tuple[str, int] | None:
    """(the line to print, the exit code) for a mistake a user can fix or an interruption;
    None for anything else (a bug: its traceback is the useful report)."""
    if isinstance(error, errors.Interrupted):
        return str(error), 130
    if isinstance(error, KeyboardInterrupt):  # Ctrl-C outside a trainer's own handling
        return str(errors.Interrupted()), 130
    known = [errors.UserError, flags.Error]
    # Errors of modules that were never imported cannot have been raised: no orbax import here.
    for module_name, class_name in LIBRARY_USER_ERRORS:
        if module_name in sys.modules:
            known.append(getattr(sys.modules[module_name], class_name))
    if not isinstance(error, tuple(known)):
        return None
    if isinstance(error, flags.Error) and isinstance(error.__context__, errors.UserError):
        error = error.__context__  # raised while --config was parsed: its own words suffice
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "error: " + "; ".join(lines), 1


def exit_on_known_error(error: BaseException, verbose: bool) -> None:
    """Prints `one_line(error)` on stderr (after the traceback when `verbose`) and exits with
    its code; returns for errors that are not known, so the caller re-raises them."""
    described = one_line(error)
    if described is None:
        return
    if verbose:
        traceback.print_exception(error)
    message, code = described
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(code)


def _wants_verbose(argv: list[str]) -> bool:
    """--verbose before the flags are parsed (a config error happens while parsing them)."""
    return any(arg in ("--verbose", "-verbose", "--verbose=true", "--verbose=1") for arg in argv)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag, an unknown config key or a wrong value type (found
    while --config is parsed) reported as one line instead of absl's two or a traceback."""
    try:
        return flags.FLAGS(argv)
    except (Exception, KeyboardInterrupt) as error:
        exit_on_known_error(error, _wants_verbose(argv))
        raise


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("pass --config path/to/experiment.py[:args] and --workdir DIR")
    logs.show_project_info(verbose=_VERBOSE.value)
    try:
        join_processes()
    except ValueError as error:  # a bad flag or variable: one line, no traceback
        raise app.UsageError(str(error)) from None
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (Exception, KeyboardInterrupt) as error:
        exit_on_known_error(error, _VERBOSE.value)
        raise


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
