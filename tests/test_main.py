"""`python -m phrase_jax.main` as a user meets it: everyday mistakes print exactly one line on
stderr and exit non-zero, before the workdir or any checkpoint is touched; `--verbose` adds the
traceback; an interruption exits 130 with the line that says how to resume."""

import logging as std_logging
import os
import pathlib
import subprocess
import sys

import pytest

from phrase_jax import errors, logs, main

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args: str, workdir: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "phrase_jax.main", f"--workdir={workdir}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode != 0, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def fake_ldm_run(tmp_path):
    """An LDM workdir whose config.json cannot be loaded: any attempt to load it would fail
    with another error than the one under test."""
    run = tmp_path / "ldm"
    run.mkdir()
    (run / "config.json").write_text("not json")
    return run


def test_mistyped_key_names_the_closest_key(tmp_path):
    workdir = tmp_path / "out"
    result = run_main("--config=experiments/sample.py:runlocal,samplr=ddim", workdir=workdir)
    assert_one_line(result, "unknown config key 'samplr'", "closest: sampler")
    result = run_main("--config=experiments/sample.py:runlocal", "--config.num_song=3",
                      workdir=workdir)  # fmt: skip
    assert_one_line(result, "unknown config key 'num_song'", "closest: num_songs")
    assert not workdir.exists()


def test_wrong_value_type_names_the_key(tmp_path):
    result = run_main("--config=experiments/vae.py:runlocal,total_steps=ten", workdir=tmp_path)
    assert_one_line(result, "total_steps='ten'", "expected an int")


def test_missing_data_folder_says_what_to_do(tmp_path):
    workdir = tmp_path / "out"
    result = run_main(
        f"--config=experiments/vae_pretrain.py:runlocal,data.dir={tmp_path / 'nodata'}",
        workdir=workdir,
    )
    assert_one_line(result, "nodata/manifest.json not found", "data.dir", "prepare the data")
    assert not workdir.exists()  # nothing written before validation passed


def test_misspelt_sampler_fails_before_anything_loads(tmp_path, fake_ldm_run):
    workdir = tmp_path / "out"
    args = f"--config=experiments/sample.py:runlocal,ldm_workdir={fake_ldm_run},sampler=eulr"
    assert_one_line(run_main(args, workdir=workdir), "sampler='eulr'", "dpm_solver_pp")
    assert not workdir.exists()
    # With a valid sampler the stage goes on to load that run, which then fails differently.
    result = run_main(args.replace("eulr", "ddim"), workdir=workdir)
    assert result.returncode != 0 and "sampler=" not in result.stderr


def test_verbose_shows_the_traceback(tmp_path):
    result = run_main("--config=experiments/sample.py:runlocal,sampler=eulr", "--verbose",
                      workdir=tmp_path / "out")  # fmt: skip
    lines = result.stderr.splitlines()
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
    assert lines[-1].startswith("error: config sampler='eulr'")


def test_interruption_exits_130_with_the_resume_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.exit_on_known_error(errors.Interrupted(12), verbose=False)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted at step 12; run the same command to resume\n"
    main.exit_on_known_error(RuntimeError("a bug"), verbose=False)  # returns: caller re-raises


def test_library_info_lines_are_filtered_unless_verbose():
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()

    def record(path: str, level: int = std_logging.INFO) -> std_logging.LogRecord:
        return std_logging.LogRecord("x", level, path, 1, "message", None, None)

    ours = record(str(REPO / "phrase_jax" / "stages" / "train_vae.py"))
    orbax = record("/site-packages/orbax/checkpoint/checkpoint_manager.py")
    orbax_warning = record("/site-packages/orbax/checkpoint/x.py", std_logging.WARNING)
    verbosity = absl_logging.get_verbosity()
    try:
        logs.show_project_info()
        logs.show_project_info()  # a second call adds no second filter
        filters = [f for f in handler.filters if isinstance(f, logs.ProjectInfoOnly)]
        assert len(filters) == 1
        assert handler.filter(ours) and handler.filter(orbax_warning)
        assert not handler.filter(orbax)
        logs.show_project_info(verbose=True)
        assert handler.filter(orbax)
    finally:
        absl_logging.set_verbosity(verbosity)
        for existing in [f for f in handler.filters if isinstance(f, logs.ProjectInfoOnly)]:
            handler.removeFilter(existing)
