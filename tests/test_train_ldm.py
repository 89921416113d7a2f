"""The LDM training stage: a runlocal chain VAE -> extract -> train-ldm through
`phrase_jax.main.run` on 5 prepared songs (Bach chorales, and POP909 when present),
kill-and-resume, refusal to resume on other latents, mesh invariance of the diffusion loss, and
the experiment configs."""

import json
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from stage_fixtures import chorales_only

from data_pipelines import ldm_pipeline
from phrase_jax import config_lib, main
from phrase_jax.models import dit
from phrase_jax.music import sections
from phrase_jax.stages import train_ldm
from phrase_jax.training import checkpointing, metrics, sharding, train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
# Resumed runs and the second dataset's chain reuse the first run's compiled programs.
pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")


def load_config(name: str, arg: str = ""):
    """An experiment config by file name, e.g. load_config('ldm', 'lencond,runlocal')."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))  # experiment files import `experiments.*`
        return config_lib.load_experiment(f"{REPO}/experiments/{name}.py:{arg}")


def _mesh(shape):
    devices = jax.devices()[: shape[0] * shape[1]]
    return jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices)


@pytest.fixture(scope="module")
def chain(prepared, tmp_path_factory) -> dict[str, pathlib.Path]:
    """runlocal VAE (4 steps) -> latents -> LDM (4 steps), each through `main.run`."""
    root = tmp_path_factory.mktemp("ldm_chain")
    data = prepared.dir
    dirs = {"vae": root / "vae", "latents": root / "latents", "ldm": root / "ldm"}
    main.run(load_config("vae", f"runlocal,data.dir={data},init_from="), str(dirs["vae"]))
    extract = f"runlocal,data.dir={data},vae_workdir={dirs['vae']},max_slots={prepared.max_slots}"
    main.run(load_config("extract", extract), str(dirs["latents"]))
    main.run(ldm_config(prepared, dirs["latents"]), str(dirs["ldm"]))
    return dirs


def ldm_config(prepared, latents_dir, extra=""):
    """The runlocal LDM with the dataset's conditions (POP909: sections and the exact bar count;
    chorales, without section labels: length bucket and bars) at its slot budget."""
    variant = f"{prepared.ldm_conditions},runlocal,model.n_slots={prepared.max_slots}"
    return load_config("ldm", f"{variant},latents.dir={latents_dir},{extra}")


def restore(config, workdir, step, data_iterator=None):
    spec, _, _ = train_ldm.build_state_spec(config, sharding.make_mesh(config.mesh))
    checkpointer = checkpointing.Checkpointer(workdir, async_save=False)
    restored = checkpointer.restore(step, spec, data_iterator=data_iterator)
    model, optimizer, ema = train_state.unpack(spec, restored.state)
    params = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    ema_params = jax.device_get(nnx.to_pure_dict(nnx.state(ema, nnx.Param)))
    return params, ema_params, int(optimizer.step.get_value()), restored.json


def test_configs_default_to_the_paper_and_validate():
    for variant in (
        "",
        "uncond",
        "lencond",
        "seccond",
        "lencond,bars",
        "cpu",
        "seccond,cpu",
        "runlocal",
        "lencond,runlocal",
    ):
        config = load_config("ldm", variant)
        config_lib.validate(config)
        dit.PhraseLDMConfig.from_mapping(config.model)  # no unknown model keys
    paper = load_config("ldm")
    assert (paper.batch_size, paper.total_steps, paper.seed, paper.compute_dtype) == (
        128,
        200_000,
        42,
        "float32",
    )
    assert (
        paper.optim.name,
        paper.optim.learning_rate,
        paper.optim.weight_decay,
        paper.optim.grad_clip_norm,
    ) == ("adamw", 5e-4, 0.01, 0.5)
    assert (paper.diffusion.num_steps, paper.diffusion.prediction) == (1000, "epsilon")
    assert paper.model.condition_dropout == 0.1 and paper.model.conditions == ()
    # The paper models of models/dit.py (29.51 M, 29.53 M, 32.40 M parameters).
    for variant, conds in (("uncond", ()), ("lencond", ("length",)), ("seccond", ("sections",))):
        ours = dit.PhraseLDMConfig.from_mapping(load_config("ldm", variant).model)
        assert ours == dit.paper_config(conds), variant
    assert load_config("ldm", "lencond,bars").model.conditions == ("length", "bars")
    assert load_config("ldm", "cpu").latents.dir == "runs/latents_cpu"
    assert load_config("extract", "cpu").vae_workdir == "runs/vae_cpu"
    with pytest.raises(ValueError, match="pick at most one"):
        load_config("ldm", "uncond,lencond")
    with pytest.raises(ValueError, match="unknown variant"):
        load_config("ldm", "tpu")


def test_chain_runs_end_to_end(chain, prepared):
    workdir = chain["ldm"]
    records = metrics.read_jsonl(workdir / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in records] == [(2, "train"), (4, "train"), (4, "valid")]
    for key in ("loss", "mse_low_t", "mse_high_t", "grad_norm", "learning_rate", "steps_per_s"):
        assert np.isfinite(records[1][key]), key
    for key in ("loss", "ema_loss", "mse_low_t", "ema_mse_high_t"):
        assert np.isfinite(records[2][key]), key
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4]
    vocab = sections.SectionVocab.load(workdir / train_ldm.SECTION_VOCAB)
    manifest = ldm_pipeline.read_manifest(chain["latents"])
    train_types = {
        s[0]
        for song in manifest["songs"]
        if song["split"] == "train"
        for s in song["sections"] or []
    }
    assert vocab.types == ["<pad>", "<unk>", *sorted(train_types)]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["latents"]["dir"] == str(chain["latents"])
    conditions = {"pop909": ["sections", "bars"], "chorales": ["length", "bars"]}
    assert saved["model"]["conditions"] == conditions[prepared.dataset]
    assert saved["model"]["n_slots"] == manifest["max_slots"] == prepared.max_slots
    if "sections" in saved["model"]["conditions"]:
        assert len(train_types) >= 2  # the songs' section labels reached the vocabulary
    _, _, step, saved_json = restore(ldm_config(prepared, chain["latents"]), workdir, 4)
    assert step == 4 and saved_json["extra"]["section_vocab"] == vocab.types
    assert saved_json["extra"]["latents"]["scale"] == manifest["scale"]


@chorales_only
def test_kill_and_resume_matches_the_uninterrupted_run(chain, prepared, tmp_path):
    # The run checkpointed at steps 2 and 4; drop step 4 as if killed after step 2.
    workdir = tmp_path / "ldm"
    shutil.copytree(chain["ldm"], workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    (workdir / "metrics.jsonl").unlink()
    config = ldm_config(prepared, chain["latents"])
    main.run(config, str(workdir))
    assert [r["step"] for r in metrics.read_jsonl(workdir / "metrics.jsonl")] == [4, 4]
    vocab = sections.SectionVocab.load(workdir / train_ldm.SECTION_VOCAB)
    # The resumed run's iterator is where an uninterrupted one is after 4 batches.
    fresh = train_ldm.make_loader(config, "train", vocab, batch_size=8, seed=config.seed)
    for _ in range(4):
        next(fresh)
    saved_iter = train_ldm.make_loader(config, "train", vocab, batch_size=8, seed=config.seed)
    params, ema, step, _ = restore(config, workdir, 4, data_iterator=saved_iter)
    assert step == 4 and saved_iter.get_state() == fresh.get_state()
    # Equal only if the restored state and iterator fed the same steps 3 and 4 (EMA included).
    params_straight, ema_straight, _, _ = restore(config, chain["ldm"], 4)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    jax.tree.map(close, params, params_straight)
    jax.tree.map(close, ema, ema_straight)
    params_2, _, _, _ = restore(config, workdir, 2)
    assert any(
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_2), strict=True)
    )


@chorales_only
def test_resume_refuses_other_latents_or_model(chain, prepared, tmp_path):
    workdir = tmp_path / "ldm"
    shutil.copytree(chain["ldm"], workdir)
    manifest_path = chain["latents"] / "manifest.json"
    other_latents = tmp_path / "latents"
    shutil.copytree(chain["latents"], other_latents)
    manifest = json.loads(manifest_path.read_text())
    (other_latents / "manifest.json").write_text(json.dumps(dict(manifest, scale=2.0)))
    saved_config = (workdir / "config.json").read_bytes()
    with pytest.raises(ValueError, match="trained on other latents"):
        main.run(ldm_config(prepared, other_latents, "total_steps=6"), str(workdir))
    assert (workdir / "config.json").read_bytes() == saved_config  # a refused run writes none
    with pytest.raises(ValueError, match="model.latent_dim=64 but the latents"):
        main.run(
            ldm_config(prepared, chain["latents"], "model.latent_dim=64"), str(tmp_path / "new")
        )


@chorales_only
def test_ldm_loss_and_gradients_match_across_meshes(chain, prepared):
    config = ldm_config(prepared, chain["latents"])
    vocab = sections.SectionVocab.load(chain["ldm"] / train_ldm.SECTION_VOCAB)
    local = next(train_ldm.make_loader(config, "train", vocab, batch_size=8, seed=3))
    loss_fn = train_ldm.make_loss_fn(config.diffusion)
    v_loss_fn = train_ldm.make_loss_fn(
        ml_collections.ConfigDict(dict(num_steps=1000, prediction="v"))
    )
    # One eager init (cheaper than a jitted one for this tiny model), placed on each layout.
    model_config = dit.PhraseLDMConfig.from_mapping(config.model)
    with nnx.use_eager_sharding(False):
        graphdef, params = nnx.split(dit.PhraseLDM(model_config, rngs=nnx.Rngs(0)))
    results = []
    for shape, preset in (((1, 1), "data_parallel"), ((4, 2), "fsdp_tensor_parallel")):
        mesh = _mesh(shape)
        rules = sharding.logical_rules({"preset": preset, "rules": ()})
        state = jax.device_put(params, sharding.state_shardings(params, mesh, rules))
        batch = sharding.make_global_batch(local, mesh)

        @jax.jit
        def run(state, batch):
            model = nnx.merge(graphdef, state)
            rng = jax.random.key(7)
            # train=True: t, noise, dropout and condition drops must not depend on the layout.
            loss, grads = nnx.value_and_grad(lambda m: loss_fn(m, batch, rng, True)[0])(model)
            others = (loss_fn(model, batch, rng, False)[0], v_loss_fn(model, batch, rng, True)[0])
            return loss, grads, others

        loss, grads, (eval_loss, v_loss) = jax.device_get(run(state, batch))
        results.append((float(loss), nnx.to_pure_dict(grads), float(eval_loss), float(v_loss)))
    (loss, grads, eval_loss, v_loss), other = results
    assert other[0] == pytest.approx(loss, rel=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), other[1], grads
    )
    assert (other[2], other[3]) == (
        pytest.approx(eval_loss, rel=1e-5),
        pytest.approx(v_loss, rel=1e-5),
    )
    # Eval skips dropout and condition drops; the v target is another regression target.
    assert np.isfinite([eval_loss, v_loss]).all()
    assert eval_loss != pytest.approx(loss, rel=1e-6) and v_loss != pytest.approx(loss, rel=1e-4)
    config.unlock()
    config.diffusion.prediction = "x0"
    with pytest.raises(ValueError, match="diffusion.prediction='x0'"):
        train_ldm.make_loss_fn(config.diffusion)
