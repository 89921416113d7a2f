"""PhraseVAE training, one stage per run (SPEC 2): span infill, autoencoder or VAE.

    python -m phrase_jax.main --config experiments/vae_ae.py:cpu --workdir runs/vae_ae_cpu
    python -m phrase_jax.main --config experiments/vae.py:mode=eval --workdir runs/vae

`run(config, workdir)` reads top to bottom: mesh and rules -> model + optimizer (+ EMA) created
directly sharded -> resume from this workdir's latest checkpoint (state and Grain iterator), or
else start fresh, copying every matching parameter from `config.init_from` (the previous stage's
workdir, its `best/` checkpoint when it has one) -> config.json -> the loop: batch, step, log
(JSONL + a progress line, NaN/inf guard), checkpoint, validate (`best/` keeps the checkpoint
with the best `eval.best_metric`); Ctrl-C saves and raises `errors.Interrupted`.
`config.mode == "eval"` only evaluates a checkpoint and writes `eval_metrics.json`.

Workdir layout: phrase_jax/artifacts/vae_run.py.
"""

from __future__ import annotations

import json
import os

import jax
from absl import logging
from flax import nnx

from data_pipelines import transforms
from phrase_jax import config_lib
from phrase_jax.artifacts import run_dir, vae_run
from phrase_jax.evaluation import vae_validation
from phrase_jax.models import vae
from phrase_jax.music.vocab import Vocab
from phrase_jax.training import checkpointing, loop, metrics, optim, sharding, train_state

RUN_MODES = ("train", "eval")
BEST_DIR = vae_run.BEST_DIR


def make_loss_fn(kl_weight: float) -> train_state.LossFn:
    """`loss_fn(model, batch, rng, train)` for the train/eval steps (CE + kl_weight * KL)."""

    def loss_fn(model, batch, rng, train):
        return vae.compute_loss(model, batch, rng if train else None, train=train,
                                kl_weight=kl_weight)  # fmt: skip

    return loss_fn


def build_state_spec(config, mesh) -> tuple[train_state.StateSpec, callable, callable]:
    """(spec, create_modules, schedule) of a run's (model, optimizer[, EMA]) on `mesh`."""
    model_config = vae.VAEConfig.from_mapping(config.model)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    create = train_state.modules_factory(
        lambda: vae.PhraseVAE(model_config, rngs=nnx.Rngs(config.seed)),
        tx,
        use_ema=config.ema_decay > 0,
    )
    spec = train_state.make_state_spec(create, mesh, sharding.logical_rules(config.sharding))
    return spec, create, schedule


def warm_start(config, spec, state, mesh):
    """`state` with every parameter that the `config.init_from` run also has copied from it.

    The source run is rebuilt from its own config.json (its model may lack the bottleneck); the
    EMA, when kept, starts from the copied weights; the optimizer starts fresh.
    """
    source_workdir = os.path.abspath(config.init_from)
    source_ref = vae_run.warm_start_source(source_workdir)
    if source_ref is None or not os.path.exists(os.path.join(source_workdir, "config.json")):
        raise run_dir.MissingArtifact(
            f"config init_from={config.init_from!r}: no checkpoint or config.json there; train "
            "the previous stage first, or set init_from='' to start from scratch"
        )
    source_config = vae_run.read_config(source_workdir)
    source_spec, _, _ = build_state_spec(source_config, mesh)
    source_dir = vae_run.checkpoint_root(source_workdir, source_ref.kind)
    source = checkpointing.Checkpointer(source_dir, async_save=False)
    try:
        restored = source.restore(source_ref.step, source_spec)
    finally:
        source.close()
    source_model, _, source_ema = train_state.unpack(source_spec, restored.state)
    model, optimizer, ema = train_state.unpack(spec, state)
    new = vae.load_matching_params(model, source_ema if source_ema is not None else source_model)
    if ema is not None:
        nnx.update(ema, nnx.state(model, nnx.Param))
    logging.info(
        "init_from %s step %d: copied %d parameter arrays; new (fresh init): %s",
        source_dir, restored.step, len(vae.param_dict(model)) - len(new), ", ".join(new) or "none",
    )  # fmt: skip
    modules = train_state.TrainModules(model, optimizer, ema)
    return jax.device_put(nnx.state(modules), spec.shardings), new


class BestCheckpoint:
    """`workdir/best/`: the checkpoint with the best `metric` so far plus best.json (its
    valid metrics); survives restarts."""

    def __init__(self, workdir: str, metric: str):
        self.metric = metric
        self.checkpointer = checkpointing.Checkpointer(
            os.path.join(workdir, BEST_DIR), max_to_keep=1, async_save=False
        )
        self.path = os.path.join(workdir, BEST_DIR, "best.json")
        self.record = None
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.record = json.load(f)

    def update(self, step: int, state, results: dict, json_items: dict) -> bool:
        if self.metric not in results:
            raise ValueError(
                f"config eval.best_metric={self.metric!r} is not an eval metric; "
                f"choose one of {sorted(results)}"
            )
        best = None if self.record is None else self.record["value"]
        if not vae_validation.is_better(self.metric, results[self.metric], best):
            return False
        self.checkpointer.save(step, state, json_items=json_items)
        self.record = {"step": step, "metric": self.metric, "value": results[self.metric],
                       "results": results}  # fmt: skip
        if jax.process_index() == 0:
            with open(self.path, "w") as f:
                json.dump(self.record, f, indent=2)
        return True


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
    """mode=eval: valid metrics of the latest (or `eval.checkpoint=best`) checkpoint, written to
    `workdir/eval_metrics.json` (the config to `eval_config.json`)."""
    mesh = sharding.make_mesh(config.mesh)
    spec, _, _ = build_state_spec(config, mesh)
    if config.eval.checkpoint not in ("latest", "best"):
        raise ValueError(f"config eval.checkpoint={config.eval.checkpoint!r}: latest or best")
    source = os.path.join(workdir, BEST_DIR) if config.eval.checkpoint == "best" else workdir
    checkpointer = checkpointing.Checkpointer(source, async_save=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise checkpointing.CheckpointError(
                f"{checkpointer.directory}: no checkpoint to evaluate; train this stage first"
            )
        vae_run.check_same_model(checkpointer, step, config)
        restored = checkpointer.restore(step, spec)
    finally:
        checkpointer.close()
    vae_run.write_config(config, workdir)
    eval_step = train_state.make_eval_step(
        spec, make_loss_fn(config.kl_weight), use_ema=spec.has_ema,
        compute_dtype=config.compute_dtype,
    )  # fmt: skip
    results = vae_validation.evaluate(config, spec, restored.state, eval_step)
    report = {"step": restored.step, "checkpoint": config.eval.checkpoint,
              "split": config.eval.split, **results}  # fmt: skip
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
            json.dump(report, f, indent=2)
    logging.info("eval of step %d: %s", restored.step, report)
    return report


def validate_config(config) -> None:
    """This stage's own keys and its data folder, before anything is loaded (main calls it
    before the workdir is touched, `run` again at its top)."""
    if "mode" in config:
        config_lib.require(config, "mode", lambda v: v in RUN_MODES, f"choose one of {RUN_MODES}")
    config_lib.require(
        config, "eval.checkpoint", lambda v: v in ("latest", "best"), "latest or best"
    )
    if config.data.get("length_buckets"):
        shortest = len(transforms.PHRASE_PREFIX) + 2
        config_lib.require(
            config, "data.length_buckets",
            lambda v: all(isinstance(n, int) and n >= shortest for n in v)
            and list(v) == sorted(set(v)) and v[-1] == config.data.max_len,
            f"strictly increasing lengths >= {shortest} ending at data.max_len="
            f"{config.data.max_len}, or () to pad every phrase to data.max_len",
        )  # fmt: skip
        config_lib.require(
            config, "data.tokens_per_batch",
            lambda v: isinstance(v, int) and v >= config.data.max_len,
            f"positions per global batch, at least data.max_len={config.data.max_len}",
        )  # fmt: skip
        config_lib.require(
            config, "data.special_phrase_rate", lambda v: 0.0 <= v <= 1.0,
            "the share of one-token phrases per epoch, in [0, 1] (1 keeps them all)",
        )  # fmt: skip
    config_lib.require_file(
        config, "data.dir", "manifest.json",
        "prepare the data first (make data, or the prepare stage) or set data.dir",
    )  # fmt: skip


def run(config, workdir: str) -> dict[str, float] | None:
    """Trains (mode train, resuming from `workdir`) or evaluates (mode eval) one VAE stage.

    Returns the last valid metrics (train) or the eval report (eval).
    """
    validate_config(config)
    # Set-up and compilation count against the time limit too (configs older than the key: none).
    time_limit = loop.TimeLimit(config.get("time_limit_s", 0.0))
    run_mode = config.get("mode", "train")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    vae_run.write_vocab(workdir)
    if run_mode == "eval":
        return evaluate_checkpoint(config, workdir)

    # Build the state's shapes and shardings, then resume or initialise it.
    mesh = sharding.make_mesh(config.mesh)
    spec, create, schedule = build_state_spec(config, mesh)
    n_params = vae.count_params(nnx.merge(spec.graphdef, spec.abstract).model)
    logging.info("PhraseVAE mode %s: %d parameters, mesh %s", config.model.mode, n_params,
                 dict(mesh.shape))  # fmt: skip
    local_batch = vae_validation.per_process_batch(config.batch_size, "batch_size")
    bucketing = vae_validation.bucketing(config, mesh)
    train_iter = vae_validation.make_loader(config, "train", batch_size=local_batch,
                                            shuffle=True, num_epochs=None,
                                            bucketing=bucketing)  # fmt: skip
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep)
    step = checkpointer.latest_step()
    if step is not None:
        vae_run.check_same_model(checkpointer, step, config)
        state = checkpointer.restore(step, spec, data_iterator=train_iter).state
        logging.info("resumed %s at step %d", workdir, step)
    else:
        state, step = sharding.init_state(create, spec.shardings), 0
        if config.init_from:
            state, _ = warm_start(config, spec, state, mesh)
    vae_run.write_config(config, workdir)  # only now: the checks above passed

    loss_fn = make_loss_fn(config.kl_weight)
    train_step = train_state.make_train_step(
        spec, loss_fn, schedule=schedule, ema_decay=config.ema_decay,
        compute_dtype=config.compute_dtype,
    )  # fmt: skip
    eval_step = train_state.make_eval_step(spec, loss_fn, use_ema=spec.has_ema,
                                           compute_dtype=config.compute_dtype)  # fmt: skip
    json_items = {"config": config.to_dict(), "vocab": Vocab().to_dict()}
    best = BestCheckpoint(workdir, config.eval.best_metric)
    writer = metrics.MetricWriter(workdir)
    writer.drop_after(step)  # rows an interrupted run logged past its last checkpoint
    cadence = loop.Cadence(config.total_steps, config.log_every_steps,
                           config.checkpoint.every_steps, config.eval.every_steps)  # fmt: skip
    train_log = loop.TrainLog(writer, config.total_steps, step,
                              progress_keys=("loss", "ce", "kl", "accuracy"),
                              summed=("n_tokens",), rates=loop.token_rates)  # fmt: skip
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
                results = vae_validation.evaluate(config, spec, state, eval_step)
                writer.write(step, results, split="valid")
                improved = best.update(step, state, results, json_items)
                logging.info("valid at step %d%s: %s", step, " (new best)" if improved else "",
                             {k: round(v, 4) for k, v in results.items()})  # fmt: skip
            if cadence.log(step) or cadence.eval(step):
                train_log.restart_clock(step)
    except KeyboardInterrupt:
        loop.save_and_raise_interrupted(
            checkpointer, step, state, train_log, batches, json_items=json_items
        )
    finally:
        checkpointer.close()
        best.checkpointer.close()
        writer.close()
    return results
