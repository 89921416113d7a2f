"""Experiment-file parsing, overrides, variants and run names (run_names), validation,
JSON/hash, and the main entry's dispatch."""

import json
import pathlib
import subprocess
import sys
import textwrap
import types

import ml_collections
import pytest
from absl import flags

from phrase_jax import config_lib, errors, main, run_names
from phrase_jax.artifacts import vae_run

REPO = pathlib.Path(__file__).resolve().parents[1]

EXPERIMENT = textwrap.dedent('''
    """Toy experiment. python -m phrase_jax.main --config this.py:runlocal --workdir /tmp/x"""
    import ml_collections

    VARIANTS = ("runlocal", "big")


    def get_config(arg=None):
        variants = set((arg or "").split(","))
        c = ml_collections.ConfigDict()
        c.stage = "train_vae"
        c.seed = 42
        c.total_steps = 100_000
        c.batch_size = 128
        c.log_every_steps = 50
        c.compute_dtype = "float32"
        c.ema_decay = 0.0
        c.use_velocity = False
        c.note = None
        c.mesh = dict(shape=(-1, 1))
        c.sharding = dict(preset="data_parallel", rules=())
        c.optim = dict(name="adam", learning_rate=1e-4, warmup_steps=0)
        c.checkpoint = dict(every_steps=1000, max_to_keep=3)
        c.model = dict(mode="vae", d_model=512)
        if "runlocal" in variants:
            c.total_steps = 10
            c.batch_size = 8
        if "big" in variants:
            c.model.d_model = 1024
        return c
''')


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "toy_experiment.py"
    path.write_text(EXPERIMENT)
    return str(path)


def test_variants_and_typed_overrides(experiment):
    config = config_lib.load_experiment(
        f"{experiment}:runlocal,optim.learning_rate=3e-4,use_velocity=true,"
        "mesh.shape=(2,4),model.d_model=256,note=hello,sharding.rules=(('mlp','model'),)"
    )
    assert config.total_steps == 10 and config.batch_size == 8
    assert config.optim.learning_rate == 3e-4 and isinstance(config.optim.learning_rate, float)
    assert config.use_velocity is True
    assert config.mesh.shape == (2, 4)
    assert config.model.d_model == 256
    assert config.note == "hello"
    assert config.sharding.rules == (("mlp", "model"),)
    assert config_lib.load_experiment(f"{experiment}:big").model.d_model == 1024
    assert config_lib.load_experiment(experiment).total_steps == 100_000


def test_unknown_key_variant_and_bad_type_messages(experiment):
    # Every one is a UserError (main prints it as one line) and still a ValueError.
    with pytest.raises(
        config_lib.ConfigError,
        match=r"unknown config key 'optim.learning_rat'.*closest: optim.learning_rate",
    ):
        config_lib.load_experiment(f"{experiment}:optim.learning_rat=1")
    with pytest.raises(errors.UserError, match="unknown variant 'runlcal'.*closest: runlocal"):
        config_lib.load_experiment(f"{experiment}:runlcal")
    with pytest.raises(ValueError, match=r"batch_size='eight': expected an int"):
        config_lib.load_experiment(f"{experiment}:batch_size=eight")
    with pytest.raises(config_lib.ConfigError, match="nowhere.py not found"):
        config_lib.load_experiment("nowhere.py:runlocal")


def test_loaded_config_is_locked(experiment):
    config = config_lib.load_experiment(experiment)
    with pytest.raises(AttributeError):
        config.new_key = 1
    config.seed = 1  # existing keys stay writable


def test_absl_flag_takes_args_and_dotted_overrides(experiment):
    flag_values = flags.FlagValues()
    argv = [
        "prog",
        f"--config={experiment}:runlocal,batch_size=16",
        "--config.optim.learning_rate=0.5",
    ]
    holder = config_lib.define_config_flag("config", flag_values, sys_argv=argv)
    flag_values(argv)
    assert holder.value.batch_size == 16 and holder.value.total_steps == 10
    assert holder.value.optim.learning_rate == 0.5
    # A mistyped `--config.key` names the closest key (ml_collections' own error spans lines).
    flag_values = flags.FlagValues()
    argv = ["prog", f"--config={experiment}", "--config.optim.learning_rat=0.5"]
    config_lib.define_config_flag("config", flag_values, sys_argv=argv)
    with pytest.raises(flags.IllegalFlagValueError, match="closest: optim.learning_rate") as info:
        flag_values(argv)
    assert isinstance(info.value.__context__, config_lib.ConfigError)


def test_one_variant_parser_checks_groups_and_fills_defaults():
    groups = (("uncond", "lencond", "seccond"), ("bars",), ("runlocal", "cpu"))
    parse = lambda arg: run_names.parse_variants(arg, groups, defaults=("uncond",))  # noqa: E731
    assert parse("cpu,lencond").words == ("lencond", "cpu")  # the groups' order
    assert parse("").words == ("uncond",)
    assert parse("bars,runlocal,bars").words == ("uncond", "bars", "runlocal")
    chosen = parse("seccond,cpu")
    assert chosen.pick(groups[0]) == "seccond" and chosen.only(groups[2]) == ("cpu",)
    assert "cpu" in chosen and "bars" not in chosen
    with pytest.raises(config_lib.ConfigError, match="pick at most one of .'uncond'"):
        parse("uncond,lencond")
    with pytest.raises(config_lib.ConfigError, match="unknown variant 'lencnd'.*closest: lencond"):
        parse("lencnd")


def test_run_name_convention_names_each_run_and_its_upstream():
    assert run_names.run_name("ldm", ("lencond", "cpu")) == "ldm_lencond_cpu"
    assert run_names.run_name("vae") == "vae"
    assert run_names.run_dir("latents", ("cpu",), "/r") == "/r/latents_cpu"
    run_dir = lambda spec: run_names.experiment_run_dir(f"{REPO}/experiments/{spec}", "R")  # noqa: E731
    assert run_dir("vae_ae.py:cpu") == "R/vae_ae_cpu"
    assert run_dir("ldm.py:cpu,lencond,total_steps=5") == "R/ldm_lencond_cpu"
    assert run_dir("sample.py") == "R/samples_uncond"
    assert run_dir("evaluate.py:bars,runlocal") == "R/eval_uncond_bars_runlocal"
    # Words another experiment owns are left out: the LDM's variant names its latents run.
    assert run_dir("extract.py:lencond,cpu") == "R/latents_cpu"
    # The experiment files name their upstream runs by the same rule.
    load = lambda spec: config_lib.load_experiment(f"{REPO}/experiments/{spec}")  # noqa: E731
    assert load("vae.py:runlocal").init_from == run_names.run_dir("vae_ae", ("runlocal",))
    assert load("extract.py:cpu").vae_workdir == run_names.run_dir("vae", ("cpu",))
    assert load("ldm.py:seccond,cpu").latents.dir == run_names.run_dir("latents", ("cpu",))
    assert load("sample.py:lencond,bars").ldm_workdir == "runs/ldm_lencond_bars"
    # The command-line form the Makefile calls.
    printed = subprocess.run(
        [sys.executable, "-m", "phrase_jax.run_names", "--runs_dir=R",
         "experiments/vae.py:cpu", "experiments/ldm.py:lencond"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert printed == ["R/vae_cpu", "R/ldm_lencond"]


def test_get_config_reads_no_environment(monkeypatch):
    monkeypatch.setenv("PHRASE_JAX_DATA_DIR", "/elsewhere")
    for name in ("vae_pretrain", "vae_ae", "vae", "extract"):
        config = config_lib.load_experiment(f"{REPO}/experiments/{name}.py")
        assert config.data.dir == "data/pop909", name


def test_validate_requires_stage_keys_and_ranges(experiment):
    config_lib.validate(config_lib.load_experiment(experiment))
    bad = {
        "optim.learning_rate=0.0": "optim.learning_rate=0.0: must be > 0",
        "model.mode=gan": "model.mode='gan': choose one of",
        "ema_decay=1.0": "ema_decay=1.0: must be in",
        "optim.warmup_steps=100000": "warmup_steps=100000",
        "stage=train": "stage='train': choose one of",
        "mesh.shape=(-1,-1)": "mesh.shape",
    }
    for override, message in bad.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            config_lib.validate(config_lib.load_experiment(f"{experiment}:{override}"))
    config = config_lib.load_experiment(experiment, lock=False)
    del config["checkpoint"]
    with pytest.raises(
        ValueError, match="missing keys: checkpoint.every_steps, checkpoint.max_to_keep"
    ):
        config_lib.validate(config)


def test_json_round_trip_and_stable_hash(experiment):
    config = config_lib.load_experiment(f"{experiment}:runlocal")
    text = config_lib.to_json(config)
    again = config_lib.from_json(text)
    assert again.to_dict() == config.to_dict()
    assert config_lib.config_hash(again) == config_lib.config_hash(config)
    assert len(config_lib.config_hash(config)) == 16
    other = config_lib.load_experiment(f"{experiment}:runlocal,seed=1")
    assert config_lib.config_hash(other) != config_lib.config_hash(config)


def test_main_dispatches_and_writes_config_json(experiment, tmp_path, monkeypatch):
    calls, checked = [], []
    stage = types.SimpleNamespace(
        validate_config=checked.append, run=lambda c, w: calls.append((c, w))
    )
    monkeypatch.setitem(main.STAGE_MODULES, "train_vae", lambda: stage)
    config = config_lib.load_experiment(f"{experiment}:runlocal")
    main.run(config, str(tmp_path / "run"))
    assert calls and calls[0][1] == str(tmp_path / "run") and checked == [config]
    # main only creates the workdir; the stage writes config.json once its checks passed.
    assert not (tmp_path / "run" / "config.json").exists()
    vae_run.write_config(config, str(tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["total_steps"] == 10
    # Evaluating the run never replaces the config it was trained with.
    evaluation = config_lib.load_experiment(f"{experiment}:runlocal,total_steps=3", lock=False)
    evaluation.mode = "eval"
    vae_run.write_config(evaluation, str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["total_steps"] == 10
    assert json.loads((tmp_path / "run" / "eval_config.json").read_text())["mode"] == "eval"
    with pytest.raises(config_lib.ConfigError, match="stage='dance' is unknown"):
        main.stage_module("dance")
    monkeypatch.setitem(main.STAGE_MODULES, "sample", _missing_stage)
    with pytest.raises(ModuleNotFoundError, match="stage .sample.: module phrase_jax.stages"):
        main.stage_module("sample")


def test_stage_validation_runs_before_the_workdir_is_touched(experiment, tmp_path, monkeypatch):
    def refuse(config):
        raise config_lib.ConfigError("config note=None: bad")

    stage = types.SimpleNamespace(validate_config=refuse, run=lambda c, w: None)
    monkeypatch.setitem(main.STAGE_MODULES, "train_vae", lambda: stage)
    with pytest.raises(errors.UserError, match="note=None"):
        main.run(config_lib.load_experiment(experiment), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_known_errors_become_one_line_and_bugs_do_not():
    assert main.one_line(errors.Interrupted(7)) == (
        "interrupted at step 7; run the same command to resume", 130)  # fmt: skip
    assert main.one_line(KeyboardInterrupt())[1] == 130
    assert main.one_line(config_lib.MissingInput("a\nb")) == ("error: a; b", 1)
    assert main.one_line(KeyError("x")) is None and main.one_line(ValueError("x")) is None


def _missing_stage():
    from phrase_jax.stages import nothing  # noqa: F401


def test_multi_host_only_when_environment_asks():
    assert not main.wants_multi_host({})
    assert not main.wants_multi_host({"SLURM_NTASKS": "1"})
    assert main.wants_multi_host({"SLURM_NTASKS": "4"})
    assert main.wants_multi_host({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert main.wants_multi_host({"TPU_WORKER_HOSTNAMES": "a,b"})


def test_configdict_is_returned_even_for_plain_dict_configs(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("def get_config():\n    return {'stage': 'sample', 'seed': 1}\n")
    config = config_lib.load_experiment(f"{path}:seed=3")
    assert isinstance(config, ml_collections.ConfigDict) and config.seed == 3
    config_lib.validate(config)
