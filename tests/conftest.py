"""Test setup: 8 simulated CPU devices, absl flags parsed, dataset locations and prepared data
as fixtures: every stage's end-to-end tests run on Bach chorales (shipped with music21) always,
and on POP909 as well when POP909_DIR holds it."""

import os

# Must be set before JAX initialises its backends: every sharding path runs on 8 fake devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402
from stage_fixtures import DATASET_PARAMS, Prepared  # noqa: E402

from data_pipelines import prepare  # noqa: E402

# Grain worker processes and library code may touch absl flags; tests never parse argv.
flags.FLAGS.mark_as_parsed()

# The longest test files first (from `--durations`, 2026-12-02). `make test` runs two xdist
# workers that take one file at a time in collection order: starting with the long files lets
# the short ones fill the gaps at the end instead of one worker finishing a chain alone.
LONGEST_FIRST = (
    "test_keys.py", "test_gpu_run.py", "test_train_vae.py", "test_edit.py", "test_demo.py",
    "test_diffusion.py", "test_multihost.py", "test_train_ldm.py", "test_bundle.py",
    "test_evaluate.py", "test_bench_vae.py", "test_dit.py", "test_extract_latents.py",
    "test_official_import.py", "test_sample.py", "test_export.py", "test_colab.py",
    "test_bench_ldm.py", "test_midi_io.py", "test_prepare_fuzz.py", "test_prepare_stage.py",
)  # fmt: skip


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep order


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


PREPARED_SONGS = 5  # 3 train, 1 valid, 1 test: every split a stage reads has a song


def _prepare(dataset: str, tmp_path_factory, input_dir: str | None = None) -> str:
    out = tmp_path_factory.mktemp("prepared") / dataset
    prepare.prepare(
        dataset, out, input_dir=input_dir, workers=1, limit=PREPARED_SONGS, log=lambda _: 0
    )
    return str(out)


@pytest.fixture(scope="session")
def chorales_data(tmp_path_factory) -> str:
    """The first 5 Bach chorales prepared once (5 slots a bar); needs no download."""
    return _prepare("chorales", tmp_path_factory)


@pytest.fixture(scope="session")
def pop909_data(pop909_dir, tmp_path_factory) -> str:
    """The first 5 POP909 songs prepared once (4 slots a bar); skips without POP909."""
    return _prepare("pop909", tmp_path_factory, input_dir=str(pop909_dir))


@pytest.fixture(scope="module", params=DATASET_PARAMS)
def prepared(request) -> Prepared:
    """A module's stage chain on each dataset: the chorales always, POP909 when present."""
    return Prepared(request.param, request.getfixturevalue(f"{request.param}_data"))


@pytest.fixture(scope="module")
def persistent_compilation_cache(tmp_path_factory):
    """A persistent compilation cache for the module that asks for it: a resumed run, or the
    same chain on another dataset, compiles the very programs of the first run, so its
    compiles become disk reads (about 40 s less per resumed LDM run on 2 cores)."""
    keys = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    previous = {key: getattr(jax.config, key) for key in keys}
    new = (str(tmp_path_factory.mktemp("jax_cache")), 0.0, 0)
    for key, value in zip(keys, new, strict=True):
        jax.config.update(key, value)
    compilation_cache.reset_cache()  # the cache is set up once per process otherwise
    yield
    for key, value in previous.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()
