"""The timing phase of the GPU run (benchmarks/gpu_run.py): train steps of the very models the
run trains, in bf16 and fp32, and the DiT's self-attention through our attention and through
`jax.nn.dot_product_attention` (implementation "xla", and "cudnn": cuDNN's fused flash
attention, GPU only, bf16/fp16 only).

    timings = run_timings(vae_config, vae_batch=512, vae_length=64, ldm_config=...,
                          ldm_batch=128, runs=3, fp32=True, attention_impls=True, seconds=80)
    timings["calibration"]  # {"vae": Timing of the bf16 step, "ldm": ...} for the schedules

The train steps are `bench_vae.time_train_step`'s (the real jitted, donated step of
`phrase_jax.training` on one device, random data of the run's batch shape); the bf16 steps come
first, since the run plans its step counts from them. A measurement that does not start before
`seconds` have passed is skipped and listed; one that fails (e.g. cuDNN attention on a CPU,
which JAX refuses) is recorded with its error and the phase goes on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import bench_ldm, bench_vae, common
from phrase_jax.models import attention, dit, layers, vae

ATTENTION_IMPLEMENTATIONS = ("ours", "xla", "cudnn")


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def dit_self_attention(config: dit.PhraseLDMConfig, *, rngs: nnx.Rngs) -> attention.Attention:
    """One DiT block's self-attention, built as `dit.DiTBlock` builds it."""
    dtype = jnp.dtype(config.dtype)
    return attention.Attention(
        config.width, config.num_heads, config.head_dim, dtype=dtype, rngs=rngs
    )


def attention_forward(implementation: str) -> Callable:
    """`forward(module, x_btd, rotary) -> y_btd` through our attention ("ours") or through
    `jax.nn.dot_product_attention` with the module's own projections ("xla", "cudnn")."""
    if implementation == "ours":
        return lambda module, x, rotary: module(x, rotary=rotary)
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation {implementation!r}: one of {ATTENTION_IMPLEMENTATIONS}"
        )

    def forward(module, x, rotary):
        q = module.project_query(x, rotary)
        k, v = module.project_key_value(x, rotary)
        context = jax.nn.dot_product_attention(
            q, k, v, scale=module.logit_scale, implementation=implementation
        )
        return jnp.einsum("bthk,hkd->btd", context, module.out[...].astype(module.dtype))

    return forward


def time_attention(
    config: dit.PhraseLDMConfig, batch_size: int, implementation: str, *, runs: int
) -> tuple[common.Timing, np.ndarray]:
    """Forward + backward (w.r.t. the weights and the input) of one DiT self-attention on
    [batch_size, n_slots + 1, width] (the global token + the slots), RoPE on; returns the
    timing and the forward output of the first row."""
    module = dit_self_attention(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(module)
    tokens = config.n_slots + 1
    rotary = layers.rotary_table(tokens, config.rope_dim, config.rope_theta)
    x = jax.random.normal(jax.random.key(1), (batch_size, tokens, config.width), jnp.float32)
    x = x.astype(jnp.dtype(config.dtype))
    forward = attention_forward(implementation)

    def loss(state, x):
        y = forward(nnx.merge(graphdef, state), x, rotary)
        return jnp.mean(jnp.square(y.astype(jnp.float32))), y[0]

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    result = {}

    def one_call():
        (_, y0), grads = step(state, x)
        jax.block_until_ready(grads)
        result["y0"] = np.asarray(y0.astype(jnp.float32))

    return common.time_calls(one_call, runs=runs), result["y0"]


def run_timings(
    vae_config: vae.VAEConfig,
    *,
    vae_batch: int,
    vae_length: int,
    ldm_config: dit.PhraseLDMConfig,
    ldm_batch: int,
    runs: int,
    fp32: bool,
    attention_impls: bool,
    seconds: float,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs the measurements (bf16 steps, attention, fp32 steps) until `seconds` have passed.

    Returns {"records": bench rows (JSON-able), "skipped": names, "failed": {name: error},
    "calibration": {"vae"|"ldm": Timing of the bf16 train step}, "device": the first device}."""
    started = time.monotonic()
    device = jax.devices()[0]
    context = common.machine_context(device_kind=device.device_kind, platform=device.platform)
    report = bench_vae.Report(context)
    out = {"records": report.records, "skipped": [], "failed": {}, "calibration": {}}
    vae_bf16 = dataclasses.replace(vae_config, dtype="bfloat16", param_dtype="float32")
    ldm_bf16 = dataclasses.replace(ldm_config, dtype="bfloat16")
    vae_batch_arrays = bench_vae.full_batch(vae_batch, vae_length, vae_config.vocab_size)
    vae_tokens = vae_batch * 2 * vae_length

    def with_rates(timing: common.Timing, cost: dict, **extra) -> tuple:
        flops = cost.get("flops") or 0.0  # XLA's estimate of one step
        if flops:
            extra.update(
                gflop_per_step=round(flops / 1e9, 1),
                tflop_per_s=round(flops / timing.median_s / 1e12, 2),
            )
        return timing, extra

    def vae_step(config):
        cost = {}
        timing = bench_vae.bench_train_step(config, vae_batch_arrays, runs=runs, cost=cost)
        return with_rates(
            timing,
            cost,
            tokens_per_s=round(vae_tokens / timing.median_s),
            batch=f"{vae_batch}x({vae_length}+{vae_length})",
        )

    def ldm_step(config):
        cost = {}
        timing = bench_ldm.bench_train_step(config, ldm_batch, runs=runs, cost=cost)
        return with_rates(
            timing,
            cost,
            examples_per_s=round(ldm_batch / timing.median_s, 1),
            batch=f"{ldm_batch}x{config.n_slots}x{config.latent_dim}",
        )

    plan = [
        ("vae_train_step_bf16", lambda: vae_step(vae_bf16), "vae"),
        ("ldm_train_step_bf16", lambda: ldm_step(ldm_bf16), "ldm"),
    ]
    attention_outputs = {}
    if attention_impls:
        for impl in ATTENTION_IMPLEMENTATIONS:

            def measure(impl=impl):
                timing, y0 = time_attention(ldm_bf16, ldm_batch, impl, runs=runs)
                attention_outputs[impl] = y0
                extra = {
                    "tokens": ldm_bf16.n_slots + 1,
                    "heads": ldm_bf16.num_heads,
                    "head_dim": ldm_bf16.head_dim,
                }
                if impl != "ours" and "ours" in attention_outputs:
                    ours = attention_outputs["ours"]
                    deviation = np.max(np.abs(y0 - ours)) / max(float(np.std(ours)), 1e-12)
                    extra["max_deviation_over_std"] = round(float(deviation), 4)
                return timing, extra

            plan.append((f"dit_self_attention_{impl}_bf16_fwd_bwd", measure, None))

    # fp32 last: the bf16 rows calibrate the run, the attention rows are cheap to compile.
    if fp32:
        plan += [
            (
                "vae_train_step_fp32",
                lambda: vae_step(dataclasses.replace(vae_bf16, dtype="float32")),
                None,
            ),
            (
                "ldm_train_step_fp32",
                lambda: ldm_step(dataclasses.replace(ldm_bf16, dtype="float32")),
                None,
            ),
        ]

    for name, measure, calibrates in plan:
        if time.monotonic() - started >= seconds:
            out["skipped"].append(name)
            continue
        try:
            timing, extra = measure()
        except Exception as error:  # noqa: BLE001 - a failed measurement is a result
            out["failed"][name] = first_line(error)
            log(f"  {name}: failed ({out['failed'][name]})")
            continue
        peak = common.device_peak_mib(device)
        report.timing(
            name,
            timing,
            None,
            compile_s=round(timing.first_s - timing.median_s, 2),
            device_peak_mib_so_far=None if peak is None else round(peak),
            **extra,
        )
        if calibrates:
            out["calibration"][calibrates] = timing
    if out["skipped"]:
        log(f"  out of time ({seconds:.0f} s): skipped {', '.join(out['skipped'])}")
    out["device"] = {
        "platform": device.platform,
        "kind": device.device_kind,
        "count": jax.device_count(),
        "jax": jax.__version__,
    }
    return out
