"""The prepare stage: a dataset's songs -> prepared data folder (the workdir).

`run(config, workdir)` (config: experiments/prepare.py) checks its keys, then hands them to
`data_pipelines.prepare.prepare`, which reads every file in an isolated worker process and
writes shards + manifest.json. Raises `errors.UserError` for a missing or empty input folder,
an invalid setting, or when no song loads.
"""

from __future__ import annotations

import os

from data_pipelines import datasets, isolated_workers
from data_pipelines import prepare as prepare_lib
from phrase_jax import errors
from phrase_jax.artifacts import run_dir
from phrase_jax.music import midi_limits


def settings_from_config(config) -> dict:
    """The keyword arguments of `prepare_lib.prepare` that `config` describes; UserError for an
    unknown dataset or an invalid value (before anything is read)."""
    if config.dataset not in datasets.DATASETS:
        raise errors.UserError(
            f"config dataset={config.dataset!r}: choose one of {sorted(datasets.DATASETS)}"
        )
    spec = datasets.get_dataset(config.dataset)
    input_dir = config.input_dir or None
    if spec.needs_input_dir and not input_dir:
        raise errors.UserError(
            f"config input_dir is empty: dataset {config.dataset} needs its folder "
            f"(e.g. --config experiments/prepare.py:{config.dataset},input_dir=/path)"
        )
    if input_dir and not os.path.isdir(input_dir):
        raise errors.UserError(f"config input_dir={input_dir!r}: no such folder")
    values = config.settings.to_dict()
    values["slots_per_bar"] = values["slots_per_bar"] or spec.default_slots_per_bar
    try:
        settings = datasets.DatasetSettings(
            **values, read_limits=midi_limits.ReadLimits(**config.read_limits.to_dict())
        )
        settings.validate()
        job_limits = isolated_workers.JobLimits(**config.job_limits.to_dict())
        job_limits.validate()
        output = prepare_lib.OutputSettings(**config.output.to_dict())
    except (TypeError, ValueError) as err:
        raise errors.UserError(f"config: {err}") from None
    if config.workers < 0 or config.limit < 0:
        raise errors.UserError("config workers and limit must be >= 0 (0 = all)")
    return dict(
        dataset=config.dataset,
        input_dir=os.path.abspath(input_dir) if input_dir else None,
        settings=settings,
        output=output,
        workers=config.workers,
        limit=config.limit or None,
        songs=[s for s in config.songs.split(",") if s],
        job_limits=job_limits,
    )


def validate_config(config) -> None:
    """Checks every key and the input folder before anything is read (UserError)."""
    settings_from_config(config)


def run(config, workdir: str) -> dict:
    """Prepares `config.dataset` into `workdir`; returns the manifest."""
    kwargs = settings_from_config(config)
    run_dir.write_config(config, workdir)  # after the checks: a rejected launch writes nothing
    try:
        return prepare_lib.prepare(out_dir=workdir, **kwargs)
    except (FileNotFoundError, ValueError) as err:  # a folder without songs, unknown names
        raise errors.UserError(str(err).splitlines()[0]) from None
