"""PhraseVAE validation: loss over valid batches and reconstruction F1 from greedy decoding.

    evaluate(config, spec, state, eval_step) -> {"loss", "ce", "kl", "accuracy", "f1_op",
        "f1_opd", "f1_iopd", "exact_match", "phrases", "seconds"}

Phrase stages (autoencoder, vae) encode `config.eval.phrases` valid phrases, decode them greedily
from the decoder memory (z = mean in the vae mode, as when encoding for the LDM) and score them
against the targets with `evaluation.reconstruction`. The span-infill stage reports the loss and
token accuracy only: its decoder sees the corrupted bar, so greedy decoding would measure
infilling, not the reconstruction F1 that SPEC 2 targets.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from data_pipelines import length_buckets, vae_pipeline
from phrase_jax.evaluation import reconstruction
from phrase_jax.models import decoding, vae
from phrase_jax.training import sharding, train_state

# The `eval.best_metric` values for which a lower value is better.
LOWER_IS_BETTER = ("loss", "ce", "kl")


def data_kind(model_mode: str) -> str:
    """Prepared record kind a model mode trains on: whole bars for span infill, else phrases."""
    return "bars" if model_mode == "span_infill" else "phrases"


def per_process_batch(global_batch: int, key: str) -> int:
    """This process's share of a global batch; the global batch must split evenly."""
    count = jax.process_count()
    if global_batch % count:
        raise ValueError(f"config {key}={global_batch} does not divide by {count} processes")
    return global_batch // count


def make_loader(
    config,
    split: str,
    *,
    batch_size: int,
    shuffle: bool,
    num_epochs: int | None,
    bucketing: length_buckets.Bucketing | None = None,
):
    """This process's Grain iterator of `config.data` batches (numpy, per-process batch);
    `bucketing` (training only) batches by length instead of padding to max_len."""
    return vae_pipeline.make_vae_loader(
        config.data.dir,
        split,
        data_kind(config.model.mode),
        batch_size=batch_size,
        seed=config.seed,
        max_len=config.data.max_len,
        num_workers=config.data.num_workers,
        shuffle=shuffle,
        num_epochs=num_epochs,
        mask_ratio=config.data.mask_ratio,
        mean_span=config.data.mean_span,
        bucketing=bucketing,
    )


def bucketing(config, mesh) -> length_buckets.Bucketing | None:
    """The length bucketing of `config.data` for training on `mesh` (None: the buckets are
    off and every row is padded to data.max_len)."""
    data = config.data
    if not data.get("length_buckets"):
        return None
    return length_buckets.Bucketing(
        lengths=tuple(data.length_buckets),
        tokens_per_batch=data.tokens_per_batch,
        batch_multiple=mesh.shape["data"],
        special_rate=data.special_phrase_rate,
    )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decoder_memory(graphdef, state, encoder_ids, encoder_mask):
    """(memory [B, S, D], memory_mask bool [B, S]) without dropout or z noise."""
    model = nnx.merge(graphdef, state)
    memory, memory_mask, _ = model.memory_from_batch(
        {"encoder_ids": encoder_ids, "encoder_mask": encoder_mask}
    )
    return memory, memory_mask


def reconstruct(model: vae.PhraseVAE, batch: dict, max_len: int) -> np.ndarray:
    """Greedy ids int32 [B_global, max_len] of a global phrase batch, on every process."""
    graphdef, state = nnx.split(model)
    memory, memory_mask = _decoder_memory(
        graphdef, state, batch["encoder_ids"], batch["encoder_mask"]
    )
    decoded = decoding.greedy_decode(model, memory, memory_mask=memory_mask, max_len=max_len)
    return np.asarray(multihost_utils.process_allgather(decoded, tiled=True))


def evaluate(config, spec: train_state.StateSpec, state, eval_step) -> dict[str, float]:
    """Valid metrics of `state` (EMA weights when the run keeps an EMA); see module docstring.

    Loss metrics average over `eval.loss_batches` batches (0 = the whole split); reconstruction
    covers the first `eval.phrases` phrases of the same seeded shuffle, so every eval of a run
    scores the same phrases.
    """
    started = time.monotonic()
    eval_cfg = config.eval
    local_batch = per_process_batch(eval_cfg.batch_size, "eval.batch_size")
    phrase_mode = config.model.mode != "span_infill"
    decode_batches = math.ceil(eval_cfg.phrases / eval_cfg.batch_size) if phrase_mode else 0
    loss_batches = eval_cfg.loss_batches or None  # None: every batch of the split
    loader = make_loader(config, eval_cfg.split, batch_size=local_batch, shuffle=True, num_epochs=1)
    model, _, ema = train_state.unpack(spec, state)
    model = ema if ema is not None else model
    rng = jax.random.key(config.seed)  # unused with train=False; the step signature wants one
    sums: dict[str, float] = {}
    n_loss_batches = 0
    counts = reconstruction.ReconstructionCounts()
    for index, local in enumerate(loader):
        wants_loss = loss_batches is None or index < loss_batches
        wants_decode = index < decode_batches
        if not (wants_loss or wants_decode):
            break
        batch = sharding.make_global_batch(local, spec.mesh)
        if wants_loss:
            metrics = jax.device_get(eval_step(state, batch, rng))
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            n_loss_batches += 1
        if wants_decode:
            decoded = reconstruct(model, batch, config.data.max_len)
            targets = np.asarray(
                multihost_utils.process_allgather(batch["decoder_targets"], tiled=True)
            )
            take = min(eval_cfg.phrases - index * eval_cfg.batch_size, len(decoded))
            counts += reconstruction.batch_reconstruction_counts(decoded[:take], targets[:take])
    if n_loss_batches == 0:
        raise ValueError(
            f"{config.data.dir}: split {eval_cfg.split!r} gave no eval batch of "
            f"{eval_cfg.batch_size}; lower eval.batch_size"
        )
    results = {k: v / n_loss_batches for k, v in sums.items() if k != "n_tokens"}
    if phrase_mode:
        results.update(counts.metrics())
    results["seconds"] = time.monotonic() - started
    return results


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether `value` of `metric` beats the best so far (None: nothing yet)."""
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best
