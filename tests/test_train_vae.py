"""The VAE training stage end to end on 5 prepared songs (Bach chorales, and POP909 when present):
stages 1 -> 2 -> 3 through `phrase_jax.main.run`, resume, warm start, mode=eval, and mesh
invariance of the VAE loss."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from stage_fixtures import chorales_only

from phrase_jax import config_lib, errors, main
from phrase_jax.evaluation import vae_validation
from phrase_jax.models import vae
from phrase_jax.stages import train_vae
from phrase_jax.training import checkpointing, metrics, sharding, train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
# Resumed runs and the second dataset's chain reuse the first run's compiled programs.
pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")
STAGES = (("vae_pretrain", "span_infill"), ("vae_ae", "autoencoder"), ("vae", "vae"))


def load_config(name: str, arg: str = ""):
    """An experiment config by file name, e.g. load_config('vae', 'runlocal,mode=eval')."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))  # experiment files import `experiments.vae_common`
        return config_lib.load_experiment(f"{REPO}/experiments/{name}.py:{arg}")


@pytest.fixture(scope="module")
def data_dir(prepared) -> str:
    return prepared.dir


@pytest.fixture(scope="module")
def chain(data_dir, tmp_path_factory) -> dict[str, pathlib.Path]:
    """Each stage's runlocal config (4 steps) run in order, each from the previous workdir."""
    root = tmp_path_factory.mktemp("vae_runs")
    workdirs, previous = {}, ""
    for name, _ in STAGES:
        config = load_config(name, f"runlocal,data.dir={data_dir},init_from={previous}")
        workdirs[name] = root / name
        main.run(config, str(workdirs[name]))
        previous = str(workdirs[name])
    return workdirs


def restore_params(config, workdir, step=None, mesh_shape=(-1, 1)):
    mesh = sharding.make_mesh({"shape": mesh_shape})
    spec, _, _ = train_vae.build_state_spec(config, mesh)
    restored = checkpointing.Checkpointer(workdir, async_save=False).restore(step, spec)
    model, optimizer, _ = train_state.unpack(spec, restored.state)
    return jax.device_get(vae.param_dict(model)), int(optimizer.step.get_value())


def test_configs_default_to_the_paper_and_validate():
    for name, mode in STAGES:
        for variant in ("", "cpu", "runlocal"):
            config = load_config(name, variant)
            config_lib.validate(config)
            assert config.model.mode == mode and config.mode == "train"
            vae.VAEConfig.from_mapping(config.model)  # no unknown model keys
        paper = load_config(name)
        assert dict(paper.model) == {
            k: v for k, v in vae.VAEConfig().__dict__.items() if k in paper.model and k != "mode"
        } | {"mode": mode}
        assert (paper.batch_size, paper.optim.learning_rate, paper.kl_weight) == (128, 1e-4, 0.01)
        assert paper.compute_dtype == "float32" and paper.total_steps >= 100_000
    assert (
        load_config("vae").optim.name == "adamw" and load_config("vae").optim.weight_decay == 1e-3
    )
    assert load_config("vae_ae").optim.name == "adam"
    assert load_config("vae", "cpu").init_from == "runs/vae_ae_cpu"
    assert load_config("vae_pretrain").init_from == ""
    assert load_config("vae", "mode=eval").mode == "eval"  # the issue's `:mode=eval` spelling
    with pytest.raises(ValueError, match="unknown variant"):
        load_config("vae", "gpu")


def test_three_stages_run_end_to_end(chain):
    for name, mode in STAGES:
        workdir = chain[name]
        assert json.loads((workdir / "config.json").read_text())["model"]["mode"] == mode
        assert len(json.loads((workdir / "vocab.json").read_text())["tokens"]) == 1000
        records = metrics.read_jsonl(workdir / "metrics.jsonl")
        train = [r for r in records if r["split"] == "train"]
        valid = [r for r in records if r["split"] == "valid"]
        assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in valid] == [4]
        for key in ("loss", "ce", "kl", "accuracy", "grad_norm", "learning_rate", "steps_per_s",
                    "tokens_per_s"):  # fmt: skip
            assert np.isfinite(train[-1][key]), (name, key)
        assert (train[-1]["kl"] > 0) == (mode == "vae")
        assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4]
        best = json.loads((workdir / "best" / "best.json").read_text())
        assert best["step"] == 4 and best["metric"] == (
            "loss" if mode == "span_infill" else "f1_opd"
        )
        if mode != "span_infill":
            assert valid[0]["phrases"] == 8
            for key in ("f1_op", "f1_opd", "f1_iopd", "exact_match"):
                assert 0.0 <= valid[0][key] <= 1.0
        else:
            assert "f1_op" not in valid[0]


@chorales_only
def test_warm_start_copies_matching_params_and_names_the_new_ones(chain, data_dir):
    config = load_config("vae", f"runlocal,data.dir={data_dir},init_from={chain['vae_ae']}")
    mesh = sharding.make_mesh(config.mesh)
    spec, create, _ = train_vae.build_state_spec(config, mesh)
    state, new = train_vae.warm_start(
        config, spec, sharding.init_state(create, spec.shardings), mesh
    )
    ours = jax.device_get(vae.param_dict(train_state.unpack(spec, state)[0]))
    bottleneck = {"/".join(map(str, k)) for k in ours if k[0] == "bottleneck"}
    assert len(bottleneck) >= 4 and set(new) == bottleneck  # only the bottleneck is new
    source_config = load_config("vae_ae", "runlocal")
    theirs, _ = restore_params(source_config, chain["vae_ae"] / "best")
    assert set(theirs) == {k for k in ours if k[0] != "bottleneck"}
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=str(key))

    missing = load_config("vae", f"runlocal,data.dir={data_dir},init_from={chain['vae']}_none")
    with pytest.raises(FileNotFoundError, match="init_from=.*train the previous stage first"):
        train_vae.warm_start(missing, spec, state, mesh)


@chorales_only
def test_kill_and_resume_matches_the_uninterrupted_run(chain, data_dir, tmp_path, monkeypatch):
    # The stage-2 run checkpointed at steps 2 and 4; drop step 4 as if killed after step 2
    # (metrics.jsonl keeps the step-4 rows that run logged: the resume must not repeat them).
    workdir = tmp_path / "vae_ae"
    shutil.copytree(chain["vae_ae"], workdir)
    for stale in ("checkpoints/4", "best"):
        shutil.rmtree(workdir / stale)
    # Another model's config is refused before it replaces the run's config.json.
    saved_config = (workdir / "config.json").read_bytes()
    wrong = load_config("vae_ae", f"runlocal,data.dir={data_dir},model.d_model=48")
    with pytest.raises(errors.UserError, match="another model config .d_model differ"):
        main.run(wrong, str(workdir))
    assert (workdir / "config.json").read_bytes() == saved_config
    # Ctrl-C before step 4: step 3 is saved (state and data position) and the run says so.
    real_make_train_step = train_state.make_train_step

    def interrupted_before_step_4(*args, **kwargs):
        train_step = real_make_train_step(*args, **kwargs)

        def step(state, batch, rng):
            if train_state.step_of(state) == 3:
                raise KeyboardInterrupt
            return train_step(state, batch, rng)

        return step

    # init_from is ignored on resume: a bogus path proves the run never reads it.
    config = load_config("vae_ae", f"runlocal,data.dir={data_dir},init_from={tmp_path}/nothing")
    with monkeypatch.context() as patch:
        patch.setattr(train_state, "make_train_step", interrupted_before_step_4)
        with pytest.raises(errors.Interrupted, match="interrupted at step 3; run the same"):
            main.run(config, str(workdir))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 3]
    main.run(config, str(workdir))
    rows = [(r["step"], r["split"]) for r in metrics.read_jsonl(workdir / "metrics.jsonl")]
    straight = metrics.read_jsonl(chain["vae_ae"] / "metrics.jsonl")
    assert rows == [(r["step"], r["split"]) for r in straight]  # each step once
    assert [step for step, _ in rows if step > 2] == [4, 4]
    resumed, resumed_step = restore_params(config, workdir, 4)
    uninterrupted, _ = restore_params(config, chain["vae_ae"], 4)
    assert resumed_step == 4
    # Equal only if the restored iterator fed the same batches 3 and 4 as the first run.
    for key, value in uninterrupted.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-6, atol=1e-7, err_msg=str(key))
    _, started_step = restore_params(config, chain["vae_ae"], 2)
    assert started_step == 2


@chorales_only
def test_eval_mode_writes_metrics_of_the_latest_checkpoint(chain, data_dir):
    config = load_config("vae", f"runlocal,data.dir={data_dir},mode=eval")
    main.run(config, str(chain["vae"]))
    report = json.loads((chain["vae"] / "eval_metrics.json").read_text())
    logged = [
        r for r in metrics.read_jsonl(chain["vae"] / "metrics.jsonl") if r["split"] == "valid"
    ]
    assert report["step"] == 4 and report["split"] == "valid"
    # Same checkpoint, same valid batches: the eval run reproduces the in-training numbers.
    for key in ("loss", "ce", "kl", "accuracy", "f1_op", "f1_opd", "f1_iopd", "exact_match"):
        assert report[key] == pytest.approx(logged[-1][key], rel=1e-5, abs=1e-6), key
    # A wrong variant fails in one line before any restore (train_vae.run writes no config.json).
    wrong = load_config("vae", f"runlocal,data.dir={data_dir},mode=eval,model.d_model=48")
    with pytest.raises(ValueError, match="another model config .d_model differ"):
        train_vae.run(wrong, str(chain["vae"]))
    with pytest.raises(ValueError, match="config mode='sample'"):
        main.run(load_config("vae", f"runlocal,data.dir={data_dir},mode=sample"), str(chain["vae"]))


def _mesh(shape):
    devices = jax.devices()[: shape[0] * shape[1]]
    return jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices)


def test_vae_loss_and_gradients_match_across_meshes(chorales_data):
    # Any real batch shows mesh invariance: the chorales' alone, to run it once.
    config = load_config("vae", f"runlocal,data.dir={chorales_data}")
    loader = vae_validation.make_loader(config, "train", batch_size=8, shuffle=True, num_epochs=1)
    local = next(loader)
    loss_fn = train_vae.make_loss_fn(config.kl_weight)
    with nnx.use_eager_sharding(False):  # one set of weights, placed on every mesh below
        graphdef, weights = nnx.split(vae.PhraseVAE(config.model, rngs=nnx.Rngs(0)))

    @jax.jit
    def loss_and_grads(weights, batch):
        model = nnx.merge(graphdef, weights)
        # train=False keeps the compile short; the KL and z = mean paths still run.
        return nnx.value_and_grad(lambda m: loss_fn(m, batch, None, False)[0])(model)

    def on_mesh(shape, preset):
        mesh = _mesh(shape)
        shardings = sharding.state_shardings(
            weights, mesh, sharding.logical_rules({"preset": preset})
        )
        loss, grads = loss_and_grads(
            jax.device_put(weights, shardings), sharding.make_global_batch(local, mesh)
        )
        return float(loss), jax.device_get(nnx.to_pure_dict(grads))

    reference_loss, reference_grads = on_mesh((1, 1), "data_parallel")
    for shape, preset in [((8, 1), "fsdp"), ((4, 2), "fsdp_tensor_parallel"),
                          ((2, 4), "tensor_parallel")]:  # fmt: skip
        loss, grads = on_mesh(shape, preset)
        assert loss == pytest.approx(reference_loss, rel=1e-5), shape
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads,
            reference_grads,
        )  # fmt: skip


def test_train_metrics_average_and_stop_at_the_first_non_finite_step():
    def step_metrics(loss, n_tokens=10.0, lr=1e-3):
        return {"loss": np.float32(loss), "n_tokens": np.float32(n_tokens), "learning_rate": lr}

    means = metrics.mean_train_metrics(
        [(1, step_metrics(2.0)), (2, step_metrics(4.0, lr=5e-4))], None, summed=("n_tokens",)
    )
    assert means == {"loss": 3.0, "n_tokens": 20.0, "learning_rate": 5e-4}
    pending = [(3, step_metrics(1.0)), (4, step_metrics(np.inf)), (5, step_metrics(np.nan))]
    with pytest.raises(FloatingPointError, match="loss at step 4 .last good checkpoint: step 2"):
        metrics.mean_train_metrics(pending, 2, summed=("n_tokens",))


def test_length_buckets_are_on_at_paper_and_cpu_scale_and_checked():
    for variant in ("", "cpu"):
        data = load_config("vae_ae", variant).data
        assert data.length_buckets[-1] == data.max_len and 0 < data.special_phrase_rate < 1
    assert load_config("vae_pretrain", "cpu").data.length_buckets[-1] == 96
    assert not load_config("vae_ae", "runlocal").data.length_buckets
    for key, value, message in (
        ("length_buckets", (16, 64, 32), "strictly increasing"),
        ("length_buckets", (16, 48), "ending at data.max_len=64"),
        ("length_buckets", (4, 64), "lengths >= 7"),
        ("tokens_per_batch", 16, "at least data.max_len"),
        ("special_phrase_rate", 1.5, "in \\[0, 1\\]"),
    ):
        config = load_config("vae_ae", "cpu")
        config.data[key] = value
        with pytest.raises(errors.UserError, match=message):
            train_vae.validate_config(config)


def test_bucketed_training_resumes_exactly(chorales_data, tmp_path):
    """A runlocal stage-2 run on length buckets: real-token counts are logged, and a
    run resumed from its step-2 checkpoint (state and bucket position) ends where it did."""
    config = load_config("vae_ae", f"runlocal,data.dir={chorales_data},init_from=")
    config.data.update(length_buckets=(16, 32), tokens_per_batch=256, special_phrase_rate=0.1)
    straight = tmp_path / "straight"
    main.run(config, str(straight))
    rows = [r for r in metrics.read_jsonl(straight / "metrics.jsonl") if r["split"] == "train"]
    assert rows and all(r["tokens_per_s"] > 0 for r in rows)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for stale in ("checkpoints/4", "best"):
        shutil.rmtree(resumed / stale)
    main.run(config, str(resumed))
    expected, _ = restore_params(config, straight, 4)
    got, step = restore_params(config, resumed, 4)
    assert step == 4
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7, err_msg=str(key))
