"""PhraseVAE training, one stage per run (SPEC 2): span infill, autoencoder or VAE.

    python -m phrase_jax.main --config experiments/vae_ae.py:cpu --workdir runs/vae_ae_cpu
    python -m phrase_jax.main --config experiments/vae.py:mode=eval --workdir runs/vae

`run(config, workdir)` reads top to bottom: mesh and rules -> model + optimizer (+ EMA) created
directly sharded -> resume from this workdir's latest checkpoint (state and Grain iterator), or
else start fresh, copying every matching parameter from `config.init_from` (the previous stage's
workdir, its `best/` checkpoint when it has one) -> train loop with JSONL metrics, a progress
line, a NaN/inf guard, checkpoints and validation -> `best/` keeps the checkpoint with the best
`eval.best_metric`. `config.mode == "eval"` only evaluates a checkpoint and writes
`eval_metrics.json`.

Workdir layout: config.json, vocab.json, metrics.jsonl, checkpoints/<step>/,
best/checkpoints/<step>/ + best/best.json, eval_metrics.json (mode eval).
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from phrase_jax import config_lib
from phrase_jax.models import vae
from phrase_jax.music.vocab import Vocab
from phrase_jax.stages import vae_eval
from phrase_jax.training import checkpointing, loop, metrics, optim, sharding, train_state

RUN_MODES = ("train", "eval")
BEST_DIR = "best"


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


def _checkpointed_dir(workdir: str) -> str | None:
    """`workdir/best` when it holds a checkpoint, else `workdir` when it does, else None."""
    for candidate in (os.path.join(workdir, BEST_DIR), workdir):
        folder = os.path.join(candidate, "checkpoints")
        if os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder)):
            return candidate
    return None


def warm_start(config, spec, state, mesh):
    """`state` with every parameter that the `config.init_from` run also has copied from it.

    The source run is rebuilt from its own config.json (its model may lack the bottleneck); the
    EMA, when kept, starts from the copied weights; the optimizer starts fresh.
    """
    source_workdir = os.path.abspath(config.init_from)
    source_dir = _checkpointed_dir(source_workdir)
    config_path = os.path.join(source_workdir, "config.json")
    if source_dir is None or not os.path.exists(config_path):
        raise config_lib.MissingInput(
            f"config init_from={config.init_from!r}: no checkpoint or config.json there; train "
            "the previous stage first, or set init_from='' to start from scratch"
        )
    with open(config_path) as f:
        source_config = config_lib.from_json(f.read())
    source_spec, _, _ = build_state_spec(source_config, mesh)
    source = checkpointing.Checkpointer(source_dir, async_save=False)
    try:
        restored = source.restore(None, source_spec)
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
    modules = (model, optimizer) if ema is None else (model, optimizer, ema)
    return jax.device_put(nnx.state(modules), spec.shardings), new


def token_rates(counts: dict, elapsed: float) -> tuple[dict, dict]:
    """Tokens since the last log -> `tokens_per_s` (JSONL) and the progress line's count."""
    return {"tokens_per_s": counts["n_tokens"] / elapsed}, {"tokens": counts["n_tokens"]}


def _write_vocab(workdir: str) -> None:
    """vocab.json next to the checkpoints; an existing one must equal this code's table."""
    path = os.path.join(workdir, "vocab.json")
    if os.path.exists(path):
        Vocab.from_json(path)  # raises when the run was made with another vocabulary
    elif jax.process_index() == 0:
        Vocab().to_json(path)


def _check_same_model(checkpointer: checkpointing.Checkpointer, step: int, config) -> None:
    """Before restoring: the checkpoint's saved config must have this config's model, else a
    one-line error (instead of orbax's shape mismatch deep inside the restore)."""
    step_dir = os.path.join(checkpointer.directory, str(step))
    if not os.path.isdir(os.path.join(step_dir, "config")):
        return  # saved without a config item: the restore itself checks the shapes
    saved = checkpointer.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
    )["config"]
    ours = config.model.to_dict()
    differ = sorted(k for k in set(ours) | set(saved.get("model", {}))
                    if saved.get("model", {}).get(k) != ours.get(k))  # fmt: skip
    if differ:
        raise ValueError(
            f"{step_dir} was trained with another model config ({', '.join(differ)} differ); "
            "pass the run's own experiment and variant (e.g. experiments/vae.py:cpu,mode=eval) "
            "or use a fresh workdir"
        )


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
        if not vae_eval.is_better(self.metric, results[self.metric], best):
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
    `workdir/eval_metrics.json`."""
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
        _check_same_model(checkpointer, step, config)
        restored = checkpointer.restore(step, spec)
    finally:
        checkpointer.close()
    eval_step = train_state.make_eval_step(
        spec, make_loss_fn(config.kl_weight), use_ema=spec.has_ema,
        compute_dtype=config.compute_dtype,
    )  # fmt: skip
    results = vae_eval.evaluate(config, spec, restored.state, eval_step)
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
    config_lib.require_file(
        config, "data.dir", "manifest.json",
        "prepare the data first (make data, or the prepare stage) or set data.dir",
    )  # fmt: skip


def run(config, workdir: str) -> dict[str, float] | None:
    """Trains (mode train, resuming from `workdir`) or evaluates (mode eval) one VAE stage.

    Returns the last valid metrics (train) or the eval report (eval).
    """
    validate_config(config)
    run_mode = config.get("mode", "train")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _write_vocab(workdir)
    if run_mode == "eval":
        return evaluate_checkpoint(config, workdir)

    mesh = sharding.make_mesh(config.mesh)
    spec, create, schedule = build_state_spec(config, mesh)
    n_params = vae.count_params(nnx.merge(spec.graphdef, spec.abstract)[0])
    logging.info("PhraseVAE mode %s: %d parameters, mesh %s", config.model.mode, n_params,
                 dict(mesh.shape))  # fmt: skip

    local_batch = vae_eval.per_process_batch(config.batch_size, "batch_size")
    train_iter = vae_eval.make_loader(config, "train", batch_size=local_batch, shuffle=True,
                                      num_epochs=None)  # fmt: skip
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep)
    best = BestCheckpoint(workdir, config.eval.best_metric)
    if checkpointer.latest_step() is not None:
        _check_same_model(checkpointer, checkpointer.latest_step(), config)
        restored = checkpointer.restore(None, spec, data_iterator=train_iter)
        state, step = restored.state, restored.step
        logging.info("resumed %s at step %d", workdir, step)
    else:
        state, step = sharding.init_state(create, spec.shardings), 0
        if config.init_from:
            state, _ = warm_start(config, spec, state, mesh)

    loss_fn = make_loss_fn(config.kl_weight)
    train_step = train_state.make_train_step(
        spec, loss_fn, schedule=schedule, ema_decay=config.ema_decay,
        compute_dtype=config.compute_dtype,
    )  # fmt: skip
    eval_step = train_state.make_eval_step(spec, loss_fn, use_ema=spec.has_ema,
                                           compute_dtype=config.compute_dtype)  # fmt: skip
    json_items = {"config": config.to_dict(), "vocab": Vocab().to_dict()}
    writer = metrics.MetricWriter(workdir)

    def evaluate(step, state, last_checkpoint):
        del last_checkpoint  # unused: only the train metrics are NaN-guarded here
        results = vae_eval.evaluate(config, spec, state, eval_step)
        writer.write(step, results, split="valid")
        improved = best.update(step, state, results, json_items)
        logging.info("valid at step %d%s: %s", step, " (new best)" if improved else "",
                     {k: round(v, 4) for k, v in results.items()})  # fmt: skip
        return results

    results = loop.run_train_loop(
        state, step, train_step=train_step, train_iter=train_iter, mesh=mesh,
        rng=jax.random.key(config.seed), total_steps=config.total_steps,
        log_every=config.log_every_steps, checkpoint_every=config.checkpoint.every_steps,
        eval_every=config.eval.every_steps, checkpointer=checkpointer, json_items=json_items,
        writer=writer, evaluate=evaluate, progress_keys=("loss", "ce", "kl", "accuracy"),
        summed=("n_tokens",), rates=token_rates,
    )  # fmt: skip
    checkpointer.close()
    best.checkpointer.close()
    writer.close()
    return results
