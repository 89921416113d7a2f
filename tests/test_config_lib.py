"""Experiment-file parsing, overrides, validation, JSON/hash, and the main entry's dispatch."""

import json
import textwrap

import ml_collections
import pytest
from absl import flags

from phrase_jax import config_lib, main
from phrase_jax.artifacts import vae_run

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
    with pytest.raises(
        KeyError, match=r"unknown config key 'optim.learning_rat'.*closest: optim.learning_rate"
    ):
        config_lib.load_experiment(f"{experiment}:optim.learning_rat=1")
    with pytest.raises(ValueError, match="unknown variant 'runlcal'.*closest: runlocal"):
        config_lib.load_experiment(f"{experiment}:runlcal")
    with pytest.raises(ValueError, match=r"batch_size='eight': expected an int"):
        config_lib.load_experiment(f"{experiment}:batch_size=eight")
    with pytest.raises(FileNotFoundError, match="nowhere.py not found"):
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
    calls = []
    monkeypatch.setitem(main.STAGE_RUNNERS, "train_vae", lambda: lambda c, w: calls.append((c, w)))
    config = config_lib.load_experiment(f"{experiment}:runlocal")
    main.run(config, str(tmp_path / "run"))
    assert calls and calls[0][1] == str(tmp_path / "run")
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
    with pytest.raises(ValueError, match="stage='dance' is unknown"):
        main.stage_runner("dance")
    monkeypatch.setitem(main.STAGE_RUNNERS, "sample", _missing_stage)
    with pytest.raises(ModuleNotFoundError, match="stage .sample.: module phrase_jax.stages"):
        main.stage_runner("sample")


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
