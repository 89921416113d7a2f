"""PhraseLDM training (SPEC 4-5): a diffusion transformer over scaled slot latents.

    python -m phrase_jax.main --config experiments/ldm.py:lencond --workdir runs/ldm_lencond
    python -m phrase_jax.main --config experiments/ldm.py:uncond,cpu --workdir runs/ldm_uncond_cpu

`run(config, workdir)` reads top to bottom: the latents manifest (`config.latents.dir`) and the
sorted section vocabulary (built from the train songs, saved as `section_vocab.json`) → mesh and
rules → model + AdamW (+ EMA) created directly sharded → resume from this workdir's latest
checkpoint (state and Grain iterator), else start fresh → train loop: the diffusion loss
(`diffusion/losses.py`, epsilon or v target; the model drops each condition with p =
`model.condition_dropout` for classifier-free guidance), JSONL metrics, a progress line, a
NaN/inf guard, checkpoints, and a periodic loss on `eval.split` (fixed batches, t and noise, so
evals of a run compare; the EMA weights are scored too, as `ema_*`); Ctrl-C saves and raises
`errors.Interrupted`. config.json is written once the resume checks passed.

Workdir layout: phrase_jax/artifacts/ldm_run.py (the latents it reads: artifacts/latents.py).
"""

from __future__ import annotations

import os

import jax
from absl import logging
from flax import nnx

from data_pipelines import ldm_pipeline
from phrase_jax import config_lib
from phrase_jax.artifacts import latents, ldm_run, run_dir
from phrase_jax.diffusion import losses, schedules
from phrase_jax.models import dit
from phrase_jax.music import sections
from phrase_jax.training import checkpointing, loop, metrics, optim, sharding, train_state

SECTION_VOCAB = ldm_run.SECTION_VOCAB


class _Deterministic:
    """Calls the model without its `rng`: no section-encoder dropout and no condition drop,
    while `losses.compute_loss` still draws t and noise from its own key (evaluation)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x_bnd, t_b, conds, *, rng=None):
        del rng
        return self.model(x_bnd, t_b, conds)


def make_loss_fn(diffusion_config) -> train_state.LossFn:
    """`loss_fn(model, batch, rng, train)` for the train/eval steps (SPEC 5 regression loss)."""
    schedule = schedules.cosine_schedule(int(diffusion_config.num_steps))
    prediction = diffusion_config.prediction
    if prediction not in losses.PREDICTIONS:
        raise ValueError(f"config diffusion.prediction={prediction!r}: one of {losses.PREDICTIONS}")

    def loss_fn(model, batch, rng, train):
        target = model if train else _Deterministic(model)
        return losses.compute_loss(target, batch, rng, schedule=schedule, prediction=prediction)

    return loss_fn


def build_state_spec(config, mesh) -> tuple[train_state.StateSpec, callable, callable]:
    """(spec, create_modules, schedule) of a run's (model, optimizer[, EMA]) on `mesh`.

    The sampling stage rebuilds the same spec from the run's config.json to restore it.
    """
    model_config = dit.PhraseLDMConfig.from_mapping(config.model)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    create = train_state.modules_factory(
        lambda: dit.PhraseLDM(model_config, rngs=nnx.Rngs(config.seed)),
        tx,
        use_ema=config.ema_decay > 0,
    )
    spec = train_state.make_state_spec(create, mesh, sharding.logical_rules(config.sharding))
    return spec, create, schedule


def check_latents(config, manifest: dict) -> None:
    """The model must fit the extracted latents: same slot count and latent width."""
    for key, model_key in (("max_slots", "n_slots"), ("latent_dim", "latent_dim")):
        if manifest[key] != config.model[model_key]:
            raise run_dir.WrongArtifact(
                f"config model.{model_key}={config.model[model_key]} but the latents in "
                f"{config.latents.dir} have {key} {manifest[key]}; set model.{model_key}="
                f"{manifest[key]}"
            )


def section_vocabulary(config, manifest: dict, workdir: str) -> sections.SectionVocab:
    """Sorted section vocabulary of the train songs; saved to (or checked against) the
    workdir's section_vocab.json, so a resumed run and the sampler use the same ids."""
    train_sections = [s["sections"] or [] for s in manifest["songs"] if s["split"] == "train"]
    vocab = sections.SectionVocab.build(train_sections)
    if len(vocab) > config.model.section_vocab_size:
        raise run_dir.WrongArtifact(
            f"{len(vocab)} section types exceed config model.section_vocab_size="
            f"{config.model.section_vocab_size}; raise it"
        )
    ldm_run.save_or_check_section_vocab(vocab, workdir, source=config.latents.dir)
    return vocab


def per_process_batch(global_batch: int, key: str, data_ways: int) -> int:
    """This process's share of a global batch, which must split over processes and `data`."""
    if global_batch % jax.process_count() or global_batch % data_ways:
        raise ValueError(
            f"config {key}={global_batch} must divide by {jax.process_count()} processes and "
            f"the {data_ways}-way data axis"
        )
    return global_batch // jax.process_count()


def make_loader(config, split: str, vocab, *, batch_size: int, seed: int):
    """This process's endless, seeded Grain iterator of LDM batches of `split`."""
    return ldm_pipeline.make_ldm_loader(
        config.latents.dir,
        split,
        batch_size,
        seed,
        section_vocab=vocab if "sections" in config.model.conditions else None,
        max_sections=config.model.max_sections,
        max_bars=config.model.max_bars,
        num_workers=config.data.num_workers,
    )


def evaluate(config, spec, state, eval_steps: dict, vocab) -> dict[str, float]:
    """Mean loss metrics over `eval.batches` batches of `eval.split`, the same batches, t and
    noise at every eval. eval_steps: {"": model step, "ema_": EMA step (when kept)}."""
    local = per_process_batch(config.eval.batch_size, "eval.batch_size", spec.mesh.shape["data"])
    loader = make_loader(config, config.eval.split, vocab, batch_size=local, seed=config.seed)
    base_rng = jax.random.key(config.seed + 1)
    sums: dict[str, float] = {}
    for index in range(config.eval.batches):
        batch = sharding.make_global_batch(next(loader), spec.mesh)
        rng = jax.random.fold_in(base_rng, index)
        for prefix, eval_step in eval_steps.items():
            for key, value in jax.device_get(eval_step(state, batch, rng)).items():
                sums[prefix + key] = sums.get(prefix + key, 0.0) + float(value)
    return {key: value / config.eval.batches for key, value in sums.items()}


def validate_config(config) -> None:
    """This stage's own keys and its latents, before anything is loaded (main calls it before
    the workdir is touched, `run` again at its top)."""
    config_lib.require(
        config, "diffusion.prediction", lambda v: v in losses.PREDICTIONS,
        f"one of {losses.PREDICTIONS}",
    )  # fmt: skip
    config_lib.require_file(
        config, "latents.dir", "manifest.json",
        "extract the latents first (make extract-latents) or set latents.dir",
    )  # fmt: skip


def run(config, workdir: str) -> dict[str, float] | None:
    """Trains the PhraseLDM of `config` in `workdir` (resuming); returns the last eval metrics."""
    validate_config(config)
    # Set-up and compilation count against the time limit too (configs older than the key: none).
    time_limit = loop.TimeLimit(config.get("time_limit_s", 0.0))
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    manifest = latents.read(config.latents.dir)
    check_latents(config, manifest)
    provenance = latents.training_data(manifest)

    # Build the state's shapes and shardings, then resume or initialise it.
    mesh = sharding.make_mesh(config.mesh)
    spec, create, schedule = build_state_spec(config, mesh)
    n_params = dit.count_parameters(dit.PhraseLDMConfig.from_mapping(config.model))["total"]
    logging.info("PhraseLDM conditions %s: %d parameters, mesh %s, latents scale %.4f",
                 tuple(config.model.conditions), n_params, dict(mesh.shape),
                 manifest["scale"])  # fmt: skip
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep)
    step = checkpointer.latest_step()
    if step is not None:  # the checkpoint must be this model's, trained on these latents
        saved = checkpointer.read_json_items(step)
        ldm_run.check_same_model(saved, config, workdir)
        latents.check_training_data(
            ldm_run.recorded_latents(saved), manifest, latents_dir=config.latents.dir,
            run=workdir, fix="use a fresh workdir or the original latents dir",
        )  # fmt: skip
    vocab = section_vocabulary(config, manifest, workdir)
    local_batch = per_process_batch(config.batch_size, "batch_size", mesh.shape["data"])
    train_iter = make_loader(config, "train", vocab, batch_size=local_batch, seed=config.seed)
    if step is not None:
        state = checkpointer.restore(step, spec, data_iterator=train_iter).state
        logging.info("resumed %s at step %d", workdir, step)
    else:
        state, step = sharding.init_state(create, spec.shardings), 0
    ldm_run.write_config(config, workdir)  # only now: the checks above passed

    loss_fn = make_loss_fn(config.diffusion)
    train_step = train_state.make_train_step(
        spec, loss_fn, schedule=schedule, ema_decay=config.ema_decay,
        compute_dtype=config.compute_dtype,
    )  # fmt: skip
    eval_steps = {"": train_state.make_eval_step(spec, loss_fn, compute_dtype=config.compute_dtype)}
    if spec.has_ema:
        eval_steps["ema_"] = train_state.make_eval_step(
            spec, loss_fn, use_ema=True, compute_dtype=config.compute_dtype
        )
    json_items = {"config": config.to_dict(),
                  "extra": ldm_run.checkpoint_extra(provenance, vocab)}  # fmt: skip
    writer = metrics.MetricWriter(workdir)
    writer.drop_after(step)  # rows an interrupted run logged past its last checkpoint
    cadence = loop.Cadence(config.total_steps, config.log_every_steps,
                           config.checkpoint.every_steps, config.eval.every_steps)  # fmt: skip
    train_log = loop.TrainLog(writer, config.total_steps, step,
                              progress_keys=("loss", "mse_low_t", "mse_high_t"))  # fmt: skip
    batches = loop.Batches(train_iter, mesh)
    rng = jax.random.key(config.seed)
    last_checkpoint, results = checkpointer.latest_step(), None

    try:
        while step < cadence.total_steps:
            batch = batches.next(step)
            state, step_metrics = train_step(state, batch, rng)
            step += 1
            cadence = time_limit.cadence_after(step, cadence)  # time up: this step is the last
            train_log.add(step, step_metrics)
            if cadence.log(step) or cadence.checkpoint(step):
                means = train_log.means(last_checkpoint)  # raises on NaN/inf before a save
            if cadence.log(step):
                train_log.write(step, means)
            if cadence.checkpoint(step):
                checkpointer.save(step, state, data_iterator=train_iter, json_items=json_items)
                last_checkpoint = step
            if cadence.eval(step):
                results = evaluate(config, spec, state, eval_steps, vocab)
                metrics.check_finite(step, results, last_checkpoint)
                writer.write(step, results, split=config.eval.split)
                logging.info("%s at step %d: %s", config.eval.split, step,
                             {k: round(v, 4) for k, v in results.items()})  # fmt: skip
            if cadence.log(step) or cadence.eval(step):
                train_log.restart_clock(step)
    except KeyboardInterrupt:
        loop.save_and_raise_interrupted(
            checkpointer, step, state, train_log, batches, json_items=json_items
        )
    finally:
        checkpointer.close()
        writer.close()
    return results
