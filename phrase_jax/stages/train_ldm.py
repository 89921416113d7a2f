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
evals of a run compare; the EMA weights are scored too, as `ema_*`).

Workdir layout: config.json, section_vocab.json, metrics.jsonl, checkpoints/<step>/ (model,
optimizer, EMA, iterator; `extra` holds the latents' provenance and the section vocabulary).
"""

from __future__ import annotations

import os

import jax
from absl import logging
from flax import nnx

from data_pipelines import ldm_pipeline
from phrase_jax import config_lib
from phrase_jax.diffusion import losses, schedules
from phrase_jax.models import dit
from phrase_jax.music import sections
from phrase_jax.training import checkpointing, loop, metrics, optim, sharding, train_state

SECTION_VOCAB = "section_vocab.json"
# Manifest fields a resumed run must still see: other values mean other training data.
LATENT_PROVENANCE = (
    "vae_workdir",
    "vae_step",
    "vae_config_hash",
    "scale",
    "max_slots",
    "latent_dim",
)


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
            raise ValueError(
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
        raise ValueError(
            f"{len(vocab)} section types exceed config model.section_vocab_size="
            f"{config.model.section_vocab_size}; raise it"
        )
    path = os.path.join(workdir, SECTION_VOCAB)
    if os.path.exists(path):
        saved = sections.SectionVocab.load(path)
        if saved.types != vocab.types:
            raise ValueError(
                f"{path}: differs from the vocabulary of {config.latents.dir}'s train songs; "
                "the latents changed since this run started: use a fresh workdir"
            )
    elif jax.process_index() == 0:
        vocab.save(path)
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


def _check_resumable(restored_json: dict, config, provenance: dict, workdir: str) -> None:
    saved_model = restored_json.get("config", {}).get("model")
    if saved_model is not None and config_lists(saved_model) != config_lists(config.model):
        raise ValueError(
            f"{workdir}: its checkpoints were trained with another model config; use a fresh "
            "workdir or the run's own config"
        )
    saved = restored_json.get("extra", {}).get("latents")
    if saved is not None and saved != provenance:
        raise ValueError(
            f"{workdir}: its checkpoints were trained on other latents ({saved}); use a fresh "
            "workdir or the original latents dir"
        )


# Model config keys that change how it runs, not its weights: a run may resume with others.
RUNTIME_MODEL_KEYS = ("remat",)


def config_lists(mapping) -> dict:
    """A config mapping as plain JSON-comparable values (tuples as lists), without the
    runtime-only keys."""
    to_dict = getattr(mapping, "to_dict", None)
    values = to_dict() if to_dict else dict(mapping)
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in values.items()
        if k not in RUNTIME_MODEL_KEYS
    }


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
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    manifest = ldm_pipeline.read_manifest(config.latents.dir)
    check_latents(config, manifest)
    provenance = {key: manifest[key] for key in LATENT_PROVENANCE}
    vocab = section_vocabulary(config, manifest, workdir)

    mesh = sharding.make_mesh(config.mesh)
    spec, create, schedule = build_state_spec(config, mesh)
    n_params = dit.count_parameters(dit.PhraseLDMConfig.from_mapping(config.model))["total"]
    logging.info(
        "PhraseLDM conditions %s: %d parameters, mesh %s, latents scale %.4f",
        tuple(config.model.conditions),
        n_params,
        dict(mesh.shape),
        manifest["scale"],
    )

    local_batch = per_process_batch(config.batch_size, "batch_size", mesh.shape["data"])
    train_iter = make_loader(config, "train", vocab, batch_size=local_batch, seed=config.seed)
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep)
    if checkpointer.latest_step() is not None:
        restored = checkpointer.restore(None, spec, data_iterator=train_iter)
        _check_resumable(restored.json, config, provenance, workdir)
        state, step = restored.state, restored.step
        logging.info("resumed %s at step %d", workdir, step)
    else:
        state, step = sharding.init_state(create, spec.shardings), 0

    loss_fn = make_loss_fn(config.diffusion)
    train_step = train_state.make_train_step(
        spec,
        loss_fn,
        schedule=schedule,
        ema_decay=config.ema_decay,
        compute_dtype=config.compute_dtype,
    )
    eval_steps = {"": train_state.make_eval_step(spec, loss_fn, compute_dtype=config.compute_dtype)}
    if spec.has_ema:
        eval_steps["ema_"] = train_state.make_eval_step(
            spec, loss_fn, use_ema=True, compute_dtype=config.compute_dtype
        )
    json_items = {
        "config": config.to_dict(),
        "extra": {"latents": provenance, "section_vocab": vocab.types},
    }
    writer = metrics.MetricWriter(workdir)

    def eval_and_log(step, state, last_checkpoint):
        results = evaluate(config, spec, state, eval_steps, vocab)
        metrics.check_finite(step, results, last_checkpoint)
        writer.write(step, results, split=config.eval.split)
        logging.info(
            "%s at step %d: %s",
            config.eval.split,
            step,
            {k: round(v, 4) for k, v in results.items()},
        )
        return results

    results = loop.run_train_loop(
        state,
        step,
        train_step=train_step,
        train_iter=train_iter,
        mesh=mesh,
        rng=jax.random.key(config.seed),
        total_steps=config.total_steps,
        log_every=config.log_every_steps,
        checkpoint_every=config.checkpoint.every_steps,
        eval_every=config.eval.every_steps,
        checkpointer=checkpointer,
        json_items=json_items,
        writer=writer,
        evaluate=eval_and_log,
        progress_keys=("loss", "mse_low_t", "mse_high_t"),
    )
    checkpointer.close()
    writer.close()
    return results
