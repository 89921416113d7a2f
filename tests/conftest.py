"""Test setup: 8 simulated CPU devices, absl flags parsed, dataset locations as fixtures."""

import os

# Must be set before JAX initialises its backends: every sharding path runs on 8 fake devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain worker processes and library code may touch absl flags; tests never parse argv.
flags.FLAGS.mark_as_parsed()


def _pop909_dir() -> pathlib.Path | None:
    path = os.environ.get("POP909_DIR")
    if path and (pathlib.Path(path) / "001" / "001.mid").exists():
        return pathlib.Path(path).resolve()
    return None


@pytest.fixture(scope="session")
def pop909_dir() -> pathlib.Path:
    """POP909 root; skips (or fails under PHRASE_JAX_REQUIRE_POP909=1, as in CI) when absent."""
    path = _pop909_dir()
    if path is None:
        reason = "POP909 not found: set POP909_DIR to the folder holding 001/ .. 909/"
        if os.environ.get("PHRASE_JAX_REQUIRE_POP909") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
