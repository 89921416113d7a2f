"""PhraseVAE speed on this machine: train step and greedy decoding, vs the PyTorch reference.

    python -m benchmarks.bench_vae [--reference] [--json runs/bench_vae.jsonl] [--runs 3]
        [--batch_size 32] [--length 64] [--phrases 512] [--decode_lengths 64,128]
        [--chunk_size N] [--skip train|decode|padding] [--data_dir data/pop909]

The paper model (`VAEConfig()` defaults, 14.29 M parameters, fp32) on the first local device:
- train step: the real jitted step of `phrase_jax.training` (AdamW lr 1e-4 wd 1e-3, dropout,
  z sampled), batch 32 rows of 64 encoder + 64 decoder tokens, no padding; tokens/s counts both
  sides, as the reference's "about 2,700 tokens/s" (= 2 x 32 x 64 / 1.53 s) does;
- greedy decode: 512 latents (one song) at 64 and 128 max tokens. Random latents through an
  untrained model rarely end every row early, so the loop runs its full length; the printed
  `steps` column says how many positions the loop really decoded;
- peak RSS of the process (the CPU backend keeps no device memory statistics);
- with `--data_dir`: an epoch of its train phrases padded to 128 vs in length buckets,
  non-pad tokens per second of each (benchmarks/bench_vae_padding.py).
Each time is the median of `--runs` runs after one warm-up call; the warm-up (compilation plus
one run) is printed apart. `--reference` also times the PyTorch layout (transformers T5 +
bottleneck) in this process on the same weights and batch, for a same-session comparison; the
fixed reference figures come from the issue, measured on this 2-core CPU at an unknown load.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh

from benchmarks import common
from phrase_jax.models import decoding, vae
from phrase_jax.music.vocab import BOS, COMPRESS_QUERIES, EOS
from phrase_jax.training import optim, sharding, train_state

# The issue's PyTorch figures on this CPU (seconds).
ISSUE_REFERENCE_S = {"train_step": 1.53, "decode_64": 5.2, "decode_128": 12.7}
LOW_VOCAB = 23  # first non-special token id; random phrases use ids 23..999


def full_batch(batch_size: int, length: int, vocab_size: int, *, seed: int = 0) -> dict:
    """A VAE batch (docs/design.md) with no padding: encoder and decoder `length` tokens each.

    encoder `[C0..C3] [BOS] phrase [EOS]`, decoder `[BOS] phrase'` / `phrase' [EOS]`; the phrase
    contents are random (they do not change the cost).
    """
    if length < len(COMPRESS_QUERIES) + 3:
        raise ValueError(f"--length {length} is too short for the query tokens and a phrase")
    rng = np.random.default_rng(seed)
    phrase = rng.integers(LOW_VOCAB, vocab_size, (batch_size, length - 1)).astype(np.int32)
    column = lambda value: np.full((batch_size, 1), value, np.int32)
    queries = np.tile(np.asarray(COMPRESS_QUERIES, np.int32), (batch_size, 1))
    encoder = np.concatenate([queries, column(BOS), phrase[:, : length - 6], column(EOS)], 1)
    return {
        "encoder_ids": encoder,
        "encoder_mask": np.ones_like(encoder, bool),
        "decoder_inputs": np.concatenate([column(BOS), phrase], 1),
        "decoder_targets": np.concatenate([phrase, column(EOS)], 1),
        "decoder_mask": np.ones((batch_size, length), bool),
    }


def single_device_mesh() -> Mesh:
    """A 1x1 (data, model) mesh on the first device: the benchmark runs on one real CPU."""
    devices = np.asarray(jax.devices()[:1]).reshape(1, 1)
    return Mesh(devices, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def _loss_fn(model, batch, rng, train):
    return vae.compute_loss(model, batch, rng, train=train)


def time_train_step(
    create_model, loss_fn, optim_config: dict, local_batch: dict, *, runs: int,
    cost: dict | None = None,
) -> common.Timing:  # fmt: skip
    """Times the jitted, donated train step of `phrase_jax.training` on one device: the model
    from `create_model()` created sharded, `loss_fn(model, batch, rng, train)`, fp32. `cost`
    given: gets XLA's `flops` estimate of one step (from the lowered step, before it runs)."""
    tx, schedule = optim.make_optimizer(optim_config, total_steps=1)
    create = train_state.modules_factory(create_model, tx, use_ema=False)
    mesh = single_device_mesh()
    spec = train_state.make_state_spec(
        create, mesh, sharding.logical_rules({"preset": "data_parallel"})
    )
    step = train_state.make_train_step(spec, loss_fn, schedule=schedule)
    holder = {"state": sharding.init_state(create, spec.shardings)}
    global_batch = sharding.make_global_batch(local_batch, mesh)
    rng = jax.random.key(0)
    if cost is not None:
        cost["flops"] = step.lower(holder["state"], global_batch, rng).cost_analysis()["flops"]

    def one_step():
        holder["state"], metrics = step(holder["state"], global_batch, rng)
        loss = float(metrics["loss"])  # blocks until the step has run
        if not np.isfinite(loss):
            raise FloatingPointError(f"train step loss is {loss}")

    return common.time_calls(one_step, runs=runs)


def bench_train_step(
    config: vae.VAEConfig, batch: dict, *, runs: int, cost: dict | None = None
) -> common.Timing:
    """Times the VAE train step (AdamW lr 1e-4, weight decay 1e-3, fp32); `cost`: as
    `time_train_step`'s."""
    return time_train_step(
        lambda: vae.PhraseVAE(config, rngs=nnx.Rngs(0)),
        _loss_fn,
        {"name": "adamw", "learning_rate": 1e-4, "weight_decay": 1e-3},
        batch,
        runs=runs,
        cost=cost,
    )


def decoded_steps(ids_bt: np.ndarray) -> int:
    """Positions the greedy loop really ran: it stops once every row has emitted [EOS]."""
    has_eos = (ids_bt == EOS).any(axis=1)
    if not has_eos.all():
        return ids_bt.shape[1]
    return int((ids_bt == EOS).argmax(axis=1).max()) + 1


def bench_decode(
    model: vae.PhraseVAE, z_bl, *, max_len: int, runs: int, chunk_size: int | None = None
) -> tuple[common.Timing, np.ndarray]:
    """Times `decoding.greedy_decode` of latents [B, latent]; returns the timing and the ids."""
    result = {}

    def decode():
        ids = decoding.greedy_decode(model, z_bl, max_len=max_len, chunk_size=chunk_size)
        result["ids"] = np.asarray(ids)  # blocks until the loop has finished

    return common.time_calls(decode, runs=runs), result["ids"]


class Report:
    """Prints aligned rows and collects them as JSON-lines records."""

    def __init__(self, context: dict):
        self.context = context
        self.records: list[dict] = []
        print(f"{'benchmark':22s} {'median_s':>9s} {'first_s':>8s} {'spread':>7s}  details")

    def timing(self, name: str, timing: common.Timing, reference_s: float | None, **extra):
        ratio = common.speedup(reference_s, timing.median_s)
        details = "  ".join(f"{k} {v}" for k, v in extra.items())
        if reference_s is not None:
            details += f"  reference {reference_s:.2f} s  speed-up x{ratio:.2f}"
        print(
            f"{name:22s} {timing.median_s:9.3f} {timing.first_s:8.2f} {timing.spread:7.0%}  "
            f"{details}",
            flush=True,
        )
        self.records.append(
            dict(
                self.context,
                benchmark=name,
                median_s=timing.median_s,
                times_s=list(timing.times_s),
                first_call_s=timing.first_s,
                reference_s=reference_s,
                speedup=ratio,
                load_average=common.load_average()[0],
                **extra,
            )
        )

    def value(self, name: str, **values):
        print(f"{name:22s} " + "  ".join(f"{k} {v}" for k, v in values.items()), flush=True)
        self.records.append(dict(self.context, benchmark=name, **values))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", action="store_true", help="also time PyTorch here")
    parser.add_argument("--json", default="", help="append JSON lines to this file")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="encoder = decoder tokens")
    parser.add_argument("--phrases", type=int, default=512, help="latents decoded together")
    parser.add_argument("--decode_lengths", default="64,128")
    parser.add_argument("--chunk_size", type=int, default=0, help="0: one batch of --phrases")
    parser.add_argument("--skip", default="", help="comma list of: train, decode, padding")
    parser.add_argument(
        "--data_dir", default="", help="prepared POP909: non-pad tokens/s, fixed vs buckets"
    )
    parser.add_argument(
        "--bucket_tokens", type=int, default=0, help="positions a bucketed batch (0: the config's)"
    )
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.skip.split(","))) - {"train", "decode", "padding"}
    if unknown:
        parser.error(
            f"--skip {args.skip!r}: unknown parts {sorted(unknown)}; use train, decode, padding"
        )
    return args


def main(argv=None, *, config: vae.VAEConfig | None = None) -> list[dict]:
    """Runs the benchmarks, prints them, returns (and with --json appends) the records.

    `config` replaces the paper model (tests use a tiny one).
    """
    args = parse_args(argv)
    config = config or vae.VAEConfig()
    skip = set(filter(None, args.skip.split(",")))
    lengths = [int(n) for n in args.decode_lengths.split(",") if n]
    paper = config == vae.VAEConfig()
    issue = ISSUE_REFERENCE_S if paper else {}
    reference_model = None
    if args.reference:
        from benchmarks import torch_reference

        reference_model = torch_reference.build_reference(config)
    model = vae.PhraseVAE(config, rngs=nnx.Rngs(0))
    weights_from = "random init"
    if reference_model is not None:
        from phrase_jax.interop import vae_from_torch

        # The very same weights on both sides: decoded tokens must then agree too.
        vae_from_torch.load_torch_state_dict(
            model, torch_reference.state_dict_numpy(reference_model)
        )
        weights_from = "the torch reference"
    context = common.machine_context(parameters=vae.count_params(model))
    print(
        f"PhraseVAE {'paper' if paper else 'custom'} config, {context['parameters']:,} params, "
        f"{jax.default_backend()} ({os.cpu_count()} cores), weights from {weights_from}; "
        f"CPU {context['cpu_vector_extensions'] or 'unknown'}; median of {args.runs} runs; "
        "load average " + " ".join(f"{x:.1f}" for x in common.load_average())
    )
    report = Report(context)
    batch = full_batch(args.batch_size, args.length, config.vocab_size)
    tokens = args.batch_size * 2 * args.length
    if "train" not in skip:
        timing = bench_train_step(config, batch, runs=args.runs)
        reference_s = issue.get("train_step") if args.length == 64 else None
        report.timing(
            "train_step",
            timing,
            reference_s if args.batch_size == 32 else None,
            tokens_per_s=round(tokens / timing.median_s),
            batch=f"{args.batch_size}x{args.length}+{args.length}",
        )
    if args.data_dir and "padding" not in skip:
        from benchmarks import bench_vae_padding

        bench_vae_padding.run(
            report, args.data_dir, config=config, runs=args.runs, tokens=args.bucket_tokens
        )
    z_bl = np.asarray(jax.random.normal(jax.random.key(1), (args.phrases, config.latent_dim)))
    decoded = {}
    if "decode" not in skip:
        for max_len in lengths:
            timing, ids = bench_decode(
                model, z_bl, max_len=max_len, runs=args.runs, chunk_size=args.chunk_size or None
            )
            decoded[max_len] = ids
            reference_s = issue.get(f"decode_{max_len}") if args.phrases == 512 else None
            report.timing(
                f"greedy_decode_{max_len}",
                timing,
                reference_s,
                phrases=args.phrases,
                steps=decoded_steps(ids),
                phrases_per_s=round(args.phrases / timing.median_s, 1),
            )
    report.value("peak_rss_jax", mib=round(common.peak_rss_mib()), device_peak_mib=None)
    if reference_model is not None:
        _time_reference(report, reference_model, batch, z_bl, lengths, decoded, args, skip)
        report.value("peak_rss_with_torch", mib=round(common.peak_rss_mib()))
    if args.json:
        common.write_json_lines(args.json, report.records)
        print(f"appended {len(report.records)} records to {args.json}")
    return report.records


def _time_reference(report, reference_model, batch, z_bl, lengths, decoded, args, skip):
    """The same benchmarks on the PyTorch layout, with speed-ups against our medians."""
    from benchmarks import torch_reference

    ours = {r["benchmark"]: r["median_s"] for r in report.records if "median_s" in r}
    # Decode first: the train steps below change the reference weights.
    if "decode" not in skip:
        for max_len in lengths:
            result = {}

            def decode(max_len=max_len, result=result):
                result["ids"] = torch_reference.greedy_decode(
                    reference_model, z_bl, max_len=max_len
                )

            timing = common.time_calls(decode, runs=args.runs)
            # Same weights and latents: rows may differ only after a near-tie in fp32 argmax.
            agreement = float(np.mean(np.all(result["ids"] == decoded[max_len], axis=1)))
            report.timing(
                f"torch_greedy_decode_{max_len}",
                timing,
                None,
                steps=decoded_steps(result["ids"]),
                jax_speedup=round(timing.median_s / ours[f"greedy_decode_{max_len}"], 2),
                rows_equal_to_jax=round(agreement, 3),
            )
    if "train" not in skip:
        step = torch_reference.make_train_step(reference_model, batch)
        timing = common.time_calls(step, runs=args.runs)
        tokens = args.batch_size * 2 * args.length
        report.timing(
            "torch_train_step",
            timing,
            None,
            tokens_per_s=round(tokens / timing.median_s),
            jax_speedup=round(timing.median_s / ours["train_step"], 2),
        )


if __name__ == "__main__":
    main()
