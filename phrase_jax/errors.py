"""Errors a user can act on. `phrase_jax.main` prints them as one line on stderr and exits
non-zero without a traceback (`--verbose` shows it)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a mistyped config key, a missing workdir or checkpoint,
    another model's checkpoint, a missing data folder. `str(error)` is the whole message: one
    line naming the key or file and what to do."""


class Interrupted(Exception):
    """Ctrl-C inside a stage, raised after the stage saved what it could, so that the entry
    point can say where the run stopped and how to resume it."""

    def __init__(self, step: int | None = None):
        self.step = step
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"interrupted{where}; run the same command to resume")
