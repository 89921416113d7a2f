"""What a run prints: this repository's INFO lines (stage progress) and every warning, without
the libraries' INFO chatter (orbax logs each checkpoint save in a dozen lines, absl and grain
their own set-up). `phrase_jax.main` and the demo call `show_project_info` once at start-up."""

from __future__ import annotations

import logging as std_logging
import os
import pathlib

from absl import logging

# The packages whose INFO lines a person wants to read; everything else needs WARNING.
REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT_DIRS = tuple(str(REPO / name) + os.sep for name in ("phrase_jax", "data_pipelines"))


class ProjectInfoOnly(std_logging.Filter):
    """Keeps records from PROJECT_DIRS at any level and other records at WARNING or above."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or record.pathname.startswith(PROJECT_DIRS)


def show_project_info(verbose: bool = False) -> None:
    """Logs at INFO through absl's handler; unless `verbose`, library INFO lines are dropped.
    Calling it again adds no second filter."""
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    present = any(isinstance(f, ProjectInfoOnly) for f in handler.filters)
    if verbose:
        for existing in [f for f in handler.filters if isinstance(f, ProjectInfoOnly)]:
            handler.removeFilter(existing)
    elif not present:
        handler.addFilter(ProjectInfoOnly())
