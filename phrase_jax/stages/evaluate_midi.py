"""The model-free evaluation stage (issue 13.3): folders of MIDI files against held-out real
songs, by what the MIDI holds (`evaluation/descriptor_rows.py`); no model, no latents.

    python -m phrase_jax.main --workdir runs/eval_midi \
        --config experiments/evaluate_midi.py:midi_dirs=outputs/demo/songs,data_dir=data/pop909
    make eval-midi MIDI_DIRS=other_system/:outputs/demo/songs [STATS=bundles/x]

`run(config, workdir)`: the real statistics (`real_statistics`: a real_statistics.json, an eval
folder or a bundle holding one; else built from the prepared held-out songs of `data_dir`,
with the ceiling from training songs) → one row per folder of `midi_dirs` and the ceiling row
→ midi_metrics.json, midi_metrics.md, and the statistics used as real_statistics.json (to
reuse with `real_statistics=` where the data are absent).
"""

from __future__ import annotations

import os
import time

import jax
from absl import logging

from phrase_jax import config_lib, errors
from phrase_jax.artifacts import bundle, real_statistics, run_dir
from phrase_jax.evaluation import descriptor_rows, report

METRICS_JSON = "midi_metrics.json"
MARKDOWN = "midi_metrics.md"


def validate_config(config) -> None:
    """The folders hold MIDI files and a source of real statistics exists, before any reading."""
    folders = descriptor_rows.split_folders(config.midi_dirs)
    if not folders:
        raise config_lib.ConfigError(
            "config midi_dirs='': give the MIDI folders to evaluate, joined by ':'"
        )
    descriptor_rows.check_folders(folders, "midi_dirs")
    config_lib.require(config, "midi_quantize_step", lambda v: v >= 1, "must be >= 1")
    stats = config.real_statistics
    if stats:
        if os.path.isfile(os.path.join(stats, bundle.BUNDLE_JSON)):
            if not bundle.read_meta(stats).get("real_statistics"):
                raise errors.UserError(
                    f"config real_statistics={stats}: the bundle stores no real statistics "
                    "(export it with its data); give data_dir=data/pop909"
                )
        elif not os.path.exists(stats):
            raise config_lib.MissingInput(
                f"config real_statistics={stats}: not found; give a real_statistics.json, a "
                "folder holding one, or a bundle"
            )
    else:
        config_lib.require_file(
            config, "data_dir", "manifest.json",
            "run `make data` or give real_statistics=path/to/real_statistics.json",
        )  # fmt: skip


def _statistics(config):
    path = config.real_statistics
    if path and os.path.isfile(os.path.join(path, bundle.BUNDLE_JSON)):
        return bundle.read_real_statistics(path, bundle.read_meta(path))
    return descriptor_rows.statistics_for(
        real_statistics_path=path, data_dir=config.data_dir, splits=config.real_splits,
        seed=config.seed,
    )  # fmt: skip


def run(config, workdir: str) -> dict:
    """Evaluates `config.midi_dirs` into `workdir`; returns the midi_metrics.json dict."""
    validate_config(config)
    started = time.monotonic()
    workdir = os.path.abspath(workdir)
    stats = _statistics(config)
    statistics_s = time.monotonic() - started
    run_dir.write_config(config, workdir)
    folders = descriptor_rows.split_folders(config.midi_dirs)
    rows = descriptor_rows.folder_rows(folders, stats, config.midi_quantize_step)
    ceiling = descriptor_rows.ceiling_row(stats)
    rows += [ceiling] if ceiling else []
    for row in rows:
        logging.info("%s: mean overlap %.3f, descriptor FD %.3f", row["name"],
                     row["metrics"]["mean_overlap"], row["metrics"]["descriptor_fd"])  # fmt: skip
    timings = {"statistics_s": statistics_s, "total_s": time.monotonic() - started}
    result = {
        "midi_rows": rows,
        "real_statistics": stats.source,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    result = report.json_ready(result)
    if jax.process_index() == 0:
        real_statistics.save(stats, os.path.join(workdir, real_statistics.FILE_NAME))
        text = ["# Model-independent evaluation", ""]
        text += report.midi_section(rows, stats.source)[2:]
        with open(os.path.join(workdir, MARKDOWN), "w") as f:
            f.write("\n".join(text))
        run_dir.write_json_atomic(os.path.join(workdir, METRICS_JSON), result)
    logging.info("MIDI evaluation written to %s in %.1f s", workdir, timings["total_s"])
    return result
