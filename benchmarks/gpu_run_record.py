"""What the GPU run (benchmarks/gpu_run.py) reads back from its stages and writes into
gpu_run.json, and how it keeps its folder small: the trainers' metrics.jsonl, samples.json and
metrics.json summarised; the training state and latent shards measured and deleted.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

from flax import nnx

from phrase_jax.models import dit, vae
from phrase_jax.training import metrics as metric_files

TRAINING = ("vae_pretrain", "vae_ae", "vae", "ldm")
# Timing row keys gpu_run.json leaves out (the device is recorded once; the rest is noise).
TIMING_CONTEXT = (
    "benchmark",
    "time",
    "host_cpus",
    "machine",
    "jax",
    "backend",
    "device_kind",
    "platform",
    "reference_s",
    "speedup",
    "load_average",
)
# Large files the folder cannot keep (training state, latents): removed unless keep_weights.
WEIGHT_DIRS = ("checkpoints", "best")


def folder_mb(path: pathlib.Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def training_summary(workdir: str) -> dict:
    """From a trainer's metrics.jsonl: steps done, median steps/s (and tokens/s), last
    train and valid values."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    rows = metric_files.read_jsonl(path)
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] != "train"]
    out = {"steps_done": train[-1]["step"] if train else 0}
    for key in ("steps_per_s", "tokens_per_s"):
        values = sorted(r[key] for r in train[1:] if key in r)  # the first log holds compiles
        if values:
            out[f"median_{key}"] = round(values[len(values) // 2], 2)
    if train:
        out["last_train"] = {k: round(v, 5) for k, v in train[-1].items() if k != "split"}
    if valid:
        out["valid"] = {k: round(v, 5) for k, v in valid[-1].items() if k != "split"}
    return out


def _read_json(path: pathlib.Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def generation_summary(out: pathlib.Path) -> dict:
    """The songs' totals and timings (samples.json) and the evaluation's rows (metrics.json)."""
    summary = {}
    samples = _read_json(out / "songs" / "samples.json")
    if samples:
        summary["samples"] = {"totals": samples.get("totals"), "timings": samples.get("timings")}
    evaluation = _read_json(out / "metrics.json")
    if evaluation:
        summary["evaluation"] = evaluation.get("rows")
    return summary


def bundle_mb(stage_configs: dict) -> float:
    """What a bundle of this run's models weighs: fp32 VAE + LDM (+ its EMA), in MB."""
    vae_config = vae.VAEConfig.from_mapping(stage_configs["vae"].model)
    vae_model = nnx.eval_shape(lambda: vae.PhraseVAE(vae_config, rngs=nnx.Rngs(0)))
    ldm_config = stage_configs["ldm"]
    ldm_params = dit.count_parameters(dit.PhraseLDMConfig.from_mapping(ldm_config.model))["total"]
    copies = 2 if ldm_config.ema_decay > 0 else 1
    return 4 * (vae.count_params(vae_model) + copies * ldm_params) / 1e6


def prune_weights(out: pathlib.Path, paths: dict[str, str]) -> float:
    """Deletes the training state (checkpoints/, best/) and the latent shards; returns MB freed.
    Configs, metrics, manifests, songs and the evaluation stay."""
    before = folder_mb(out)
    for phase in TRAINING:
        for name in WEIGHT_DIRS:
            shutil.rmtree(os.path.join(paths[phase], name), ignore_errors=True)
    for shard in pathlib.Path(paths["extract"]).glob("latents-*.npz"):
        shard.unlink()
    return round(before - folder_mb(out), 1)


def weights_mb(paths: dict[str, str]) -> float:
    """MB of what `prune_weights` deletes."""
    total = sum(
        folder_mb(pathlib.Path(paths[phase], name)) for phase in TRAINING for name in WEIGHT_DIRS
    )
    shards = pathlib.Path(paths["extract"]).glob("latents-*.npz")
    return total + sum(f.stat().st_size for f in shards) / 1e6


def summary_line(record: dict) -> str:
    phases = ", ".join(
        f"{name} {entry.get('wall_s', 0):.0f}s"
        + ("" if entry["status"] == "ok" else f" ({entry['status'].split(':')[0]})")
        for name, entry in record["phases"].items()
    )
    return (
        f"[gpu-run] done in {record['total_wall_s']:.0f} s (budget "
        f"{record['total_budget_s']:.0f} s); {record['output_mb']:.1f} MB "
        f"(limit {record['settings']['max_output_mb']:.0f} MB); {phases}"
    )


def _cell(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec or ".3g")
    return str(value)


# (header, metric key) of the evaluation rows in the report: SPEC 7's table in short.
EVALUATION_COLUMNS = (("PhraseFID", "phrase_fid"), ("SRS", "srs"), ("MR", "memorisation_rate"),
                      ("length acc.", "length_bucket_accuracy"), ("bars", "mean_n_bars"),
                      ("notes/bar", "notes_per_bar"))  # fmt: skip


def markdown_report(record: dict) -> str:
    """gpu_run.json as the tables docs/results.md records: the device and totals, per phase
    (wall, share, limit, steps), the timings, the VAE and LDM validation, the evaluation."""
    device = record["device"]
    lines = [
        f"Device: {device['kind']} ({device['platform']}, JAX {device['jax']}); total "
        f"{_cell(record.get('total_wall_s'))} s of a {record['total_budget_s']:.0f} s budget; "
        f"folder {_cell(record.get('output_mb'))} MB.",
        "",
        "| phase | status | wall (s) | share (s) | time limit (s) | steps done / planned | "
        "steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in record["phases"].items():
        steps = ""
        if "total_steps" in entry:
            stopped = " (time)" if entry.get("stopped_by_time") else ""
            steps = f"{entry.get('steps_done', 0)} / {entry['total_steps']}{stopped}"
        lines.append(
            f"| {name} | {entry['status']} | {_cell(entry.get('wall_s'), '.1f')} | "
            f"{_cell(entry.get('share_s'), '.0f')} | {_cell(entry.get('time_limit_s'), '.0f')} | "
            f"{steps} | {_cell(entry.get('median_steps_per_s'))} |"
        )
    rows = record["phases"].get("timings", {}).get("rows", {})
    if rows:
        lines += [
            "",
            "| timing | median (ms) | compile (s) | TFLOP/s | rate |",
            "|---|---|---|---|---|",
        ]
        for name, row in rows.items():
            rate = row.get("tokens_per_s") or row.get("examples_per_s")
            unit = " tok/s" if "tokens_per_s" in row else " ex/s" if rate else ""
            lines.append(
                f"| {name} | {row['median_s'] * 1e3:.1f} | {_cell(row.get('compile_s'))} | "
                f"{_cell(row.get('tflop_per_s'))} | {_cell(rate)}{unit} |"
            )
    valid = {name: record["phases"].get(name, {}).get("valid") for name in TRAINING}
    for name, keys in (("vae", ("f1_op", "f1_opd", "exact_match", "ce")),
                       ("ldm", ("loss", "ema_loss"))):  # fmt: skip
        if valid.get(name):
            shown = ", ".join(f"{k} {valid[name][k]:.4g}" for k in keys if k in valid[name])
            lines.append(f"\n{name} validation at step {valid[name]['step']}: {shown}.")
    evaluation = record.get("evaluation") or []
    if evaluation:
        header = " | ".join(h for h, _ in EVALUATION_COLUMNS)
        lines += ["", f"| row | {header} |", "|---|" + "---|" * len(EVALUATION_COLUMNS)]
        for row in evaluation:
            cells = " | ".join(_cell(row["metrics"].get(k)) for _, k in EVALUATION_COLUMNS)
            lines.append(f"| {row['name']} | {cells} |")
    return "\n".join(lines) + "\n"
