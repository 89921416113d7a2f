"""Non-pad tokens per second of the paper-size VAE train step: fixed padding vs length buckets.

    python -m benchmarks.bench_vae --data_dir data/pop909 [--skip decode]   (called from there)

One epoch of the POP909 train phrases, two ways (experiments/vae_common.py's paper settings):
- before: every phrase padded to max_len 128, 128 rows a batch, the one-token phrases at their
  corpus share;
- after: `data.length_buckets` with `data.tokens_per_batch` positions a batch and the one-token
  phrases at `data.special_phrase_rate` (data_pipelines/length_buckets.py).
The step time depends only on the batch shape, so each shape is timed once per round on a
random batch of that shape, all shapes interleaved in the same process (the machine's load
hits both sides alike); an epoch's time is the sum over its batches of their shape's median.
Non-pad tokens count the encoder's and the decoder's real positions, as `tokens_per_s` of the
train-step row counts both sides.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from benchmarks import bench_vae
from data_pipelines import length_buckets, sources
from experiments import vae_common
from phrase_jax.models import vae
from phrase_jax.training import optim, sharding, train_state

MAX_LEN = 128
FIXED_BATCH = 128


def shaped_batch(rows: int, length: int, decoder_length: int, vocab_size: int) -> dict:
    """A VAE batch with an encoder of `length` and a decoder of `decoder_length` positions."""
    batch = bench_vae.full_batch(rows, length, vocab_size)
    for key in ("decoder_inputs", "decoder_targets", "decoder_mask"):
        batch[key] = batch[key][:, :decoder_length]
    return batch


def epoch_layouts(data_dir: str, *, special_rate: float, tokens_per_batch: int):
    """{name: [(rows, length, decoder_length, batches per epoch)]} and {name: (real positions,
    padding fraction)} of one epoch of `data_dir`'s train phrases, before and after."""
    lengths = length_buckets.record_lengths(sources.token_source(data_dir, "phrases", "train"))
    plan = length_buckets.BucketPlan.build(
        lengths,
        "phrases",
        buckets=vae_common.PHRASE_BUCKETS,
        tokens_per_batch=tokens_per_batch,
        batch_multiple=1,
        seed=0,
        special_rate=special_rate,
    )
    layout = plan.layout
    after = [
        (size, length, length_buckets.decoder_length(length, "phrases"), n)
        for length, size, n in zip(
            layout.buckets, layout.batch_sizes, layout.batches_per_bucket(), strict=True
        )
        if n
    ]
    before = [(FIXED_BATCH, MAX_LEN, MAX_LEN, len(lengths) // FIXED_BATCH)]
    used = np.concatenate([*layout.members, layout.specials[: layout.specials_per_epoch]])
    # Fixed padding drops the remainder of the last batch: count the kept share of the tokens.
    kept = before[0][3] * FIXED_BATCH / len(lengths)
    real = {
        "fixed": kept * length_buckets.real_positions(lengths, "phrases", MAX_LEN),
        "buckets": length_buckets.real_positions(lengths[used], "phrases", MAX_LEN),
    }
    padding = {
        "fixed": length_buckets.padding_fraction(None, lengths, "phrases", MAX_LEN),
        "buckets": length_buckets.padding_fraction(plan, lengths, "phrases", MAX_LEN),
    }
    return {"fixed": before, "buckets": after}, real, padding


def time_shapes(config: vae.VAEConfig, shapes, *, runs: int) -> dict[tuple, list[float]]:
    """Seconds of one train step per (rows, length, decoder_length), `runs` interleaved rounds
    after one compiling call of each shape."""
    tx, schedule = optim.make_optimizer(
        {"name": "adamw", "learning_rate": 1e-4, "weight_decay": 1e-3}, total_steps=1
    )
    create = train_state.modules_factory(
        lambda: vae.PhraseVAE(config, rngs=nnx.Rngs(0)), tx, use_ema=False
    )
    mesh = bench_vae.single_device_mesh()
    spec = train_state.make_state_spec(
        create, mesh, sharding.logical_rules({"preset": "data_parallel"})
    )
    step = train_state.make_train_step(spec, bench_vae._loss_fn, schedule=schedule)
    holder = {"state": sharding.init_state(create, spec.shardings)}
    batches = {
        shape: sharding.make_global_batch(shaped_batch(*shape, config.vocab_size), mesh)
        for shape in shapes
    }
    rng = jax.random.key(0)

    def one_step(shape) -> float:
        started = time.perf_counter()
        holder["state"], metrics = step(holder["state"], batches[shape], rng)
        loss = float(metrics["loss"])  # blocks until the step has run
        if not np.isfinite(loss):
            raise FloatingPointError(f"train step loss is {loss} at shape {shape}")
        return time.perf_counter() - started

    for shape in shapes:
        one_step(shape)  # compiles
    times = {shape: [] for shape in shapes}
    for _ in range(runs):
        for shape in shapes:
            times[shape].append(one_step(shape))
    return times


def run(report, data_dir: str, *, config: vae.VAEConfig, runs: int, tokens: int = 0) -> None:
    """Prints (through `report`) the padding and non-pad tokens/s rows, before and after;
    `tokens` > 0 replaces the paper config's positions per bucketed batch."""
    defaults = vae_common.base_config("vae_ae", "autoencoder", None).data
    layouts, real, padding = epoch_layouts(
        data_dir,
        special_rate=defaults.special_phrase_rate,
        tokens_per_batch=tokens or defaults.tokens_per_batch,
    )
    shapes = sorted({row[:3] for rows in layouts.values() for row in rows})
    times = time_shapes(config, shapes, runs=runs)
    medians = {shape: float(np.median(t)) for shape, t in times.items()}
    rates = {}
    for name, rows in layouts.items():
        epoch_s = sum(n * medians[(r, length, d)] for r, length, d, n in rows)
        rates[name] = real[name] / epoch_s
        report.value(
            f"vae_epoch_{name}",
            shapes=" ".join(f"{r}x{n}+{d}:{k}" for r, n, d, k in rows),
            padding=f"{padding[name]:.1%}",
            epoch_s=round(epoch_s, 1),
            nonpad_tokens_per_s=round(rates[name]),
            step_s=" ".join(f"{medians[row[:3]]:.2f}" for row in rows),
        )
    report.value("vae_bucket_speedup", nonpad_tokens_per_s_ratio=round(
        rates["buckets"] / rates["fixed"], 2))  # fmt: skip
