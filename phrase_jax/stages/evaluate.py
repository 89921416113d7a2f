"""The evaluation stage (SPEC 7): generated songs and real songs measured the same way, one table.

    python -m phrase_jax.main --config experiments/evaluate.py:lencond,cpu \
        --workdir runs/eval_lencond_cpu
    make eval VARIANT=lencond,cpu [LDM_WORKDIR=runs/ldm_lencond_cpu] [EVAL_ARGS=num_songs=50]

With `model=BUNDLE` (`make eval MODEL=...`) the bundle replaces the runs: the real rows' latents
(reference and held-out) are encoded with the bundle's VAE from the prepared songs of `data_dir`
(default: the data the bundle was exported from).

`run(config, workdir)` reads top to bottom: the LDM, its latents manifest and VAE
(`ldm_loading.load_pipeline`) → the reference set: all slots of `reference_songs` training songs
from the latents dir (ref protocol) → the training melodies (the prepared data dir the manifest
names) → one `SongSet` per row, each measured by `evaluate_set`:
  real        held-out songs (`real_splits`): their latents from the latents dir, their songs
              assembled from the prepared slots; MR = held-out melodies vs training melodies
  generated   `generation.generate` with the config's sampling settings
  comparison  (when `compare.*` is set) a second LDM workdir and/or another sampler
→ metrics.json, metrics.md (Ou & Wang's Table 5 numbers as labelled rows) and
self_similarity.png (`evaluation/report.py`).

A generated song counts as many bars as its assembled song has (the output a listener gets: cut
where the decoded `[SEP]` is, or at the requested length); its latents are its first
slots_per_bar * n_bars slots, as for real songs. A metric a set cannot define (a FID with fewer
than two windows on a side, SRS without a song with bars) is NaN here and null in metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from data_pipelines import ldm_pipeline, sources
from phrase_jax import config_lib
from phrase_jax.artifacts import bundle, latents, ldm_run, real_statistics, run_dir
from phrase_jax.evaluation import (
    descriptor_rows,
    encoded_songs,
    fid,
    memorisation,
    report,
    structure,
)
from phrase_jax.evaluation.song_sets import MetricSettings, SongSet, evaluate_set
from phrase_jax.generation import generate
from phrase_jax.inference import ldm_loading
from phrase_jax.music import layout
from phrase_jax.music.events import Song
from phrase_jax.training import sharding

METRICS_JSON = "metrics.json"


def trimmed_latents(split: ldm_pipeline.LatentSplit, rows, slots_per_bar: int) -> list:
    """The real slots [slots_per_bar * n_bars, D] of songs `rows` of a latents split."""
    return fid.trim_songs(split.latents[rows], split.n_bars[rows], slots_per_bar)


def reference_set(
    split: ldm_pipeline.LatentSplit, count: int, seed: int, slots_per_bar: int
) -> tuple[list[np.ndarray], list[str]]:
    """All slots of `count` training songs (a seeded choice, in split order) and their names."""
    if count < 1:
        raise ValueError(f"config reference_songs={count}: must be >= 1")
    total = len(split.names)
    rows = np.sort(np.random.default_rng(seed).permutation(total)[: min(count, total)])
    return trimmed_latents(split, rows, slots_per_bar), [split.names[i] for i in rows]


def _assembled_songs(data_dir: str, split: str, slots_per_bar: int) -> dict[str, Song]:
    """name -> Song of every prepared song of `split` (its slots assembled by position)."""
    return {
        record["name"]: layout.assemble_song(record["slots"], slots_per_bar, name=record["name"])[0]
        for record in sources.read_songs(data_dir, split)
    }


def training_melodies(
    data_dir: str, slots_per_bar: int, program: int, limit: int
) -> list[list[int]]:
    """Non-empty melodies of the training songs (the first `limit`, 0 = all)."""
    songs = list(_assembled_songs(data_dir, "train", slots_per_bar).values())
    songs = songs[:limit] if limit > 0 else songs
    return [m for m in memorisation.song_melodies(songs, program) if m]


def real_set(
    latents_dir: str, manifest: dict, data_dir: str, splits: Sequence[str], slots_per_bar: int
) -> SongSet:
    """The held-out songs of `splits`: latents from the latents dir, songs from the data dir."""
    latents, songs = [], []
    for split in splits:
        latent_split = ldm_pipeline.load_split(latents_dir, split, manifest)
        assembled = _assembled_songs(data_dir, split, slots_per_bar)
        missing = [n for n in latent_split.names if n not in assembled]
        if missing:
            raise run_dir.WrongArtifact(
                f"{data_dir}: {split} song {missing[0]} of {latents_dir} is not in the prepared "
                "data; pass the data dir the latents were extracted from (data_dir=...)"
            )
        rows = np.arange(len(latent_split.names))
        latents += trimmed_latents(latent_split, rows, slots_per_bar)
        songs += [assembled[n] for n in latent_split.names]
    if not songs:
        raise run_dir.WrongArtifact(
            f"{latents_dir}: splits {list(splits)} hold no songs; set real_splits"
        )
    label = "+".join(splits)
    return SongSet(f"real held-out ({label})", "real", latents, songs, info={"splits": label})


def generated_set(
    name: str, kind: str, generated: list[generate.GeneratedSong], stats: dict, slots_per_bar: int
) -> SongSet:
    """A row from `generation.generate` output: each song's first slots_per_bar * bars latents."""
    latents = [g.latents_nd[: slots_per_bar * len(g.song.bars)] for g in generated]
    used = stats["settings"]
    info = {k: used[k] for k in ("sampler", "steps", "guidance_scale", "bars", "end", "clip")}
    info.update(told_length=used["told_length"], conditions=used["conditions"])
    info["disagreement_rate"] = stats["totals"]["disagreement_rate"]
    info["n_bars"] = [len(g.song.bars) for g in generated]
    return SongSet(name, kind, latents, [g.song for g in generated], used["bars"], info)


def _generate_row(pipeline, settings: generate.SampleSettings, kind: str, label: str):
    started = time.monotonic()
    generated, stats = generate.generate(*pipeline, settings)
    ldm = pipeline.ldm
    name = label or (
        f"{os.path.basename(ldm.workdir)} (step {ldm.step}), {stats['settings']['sampler']} "
        f"{settings.steps} steps, guidance {settings.guidance_scale:g}"
    )
    song_set = generated_set(name, kind, generated, stats, int(pipeline.manifest["slots_per_bar"]))
    song_set.info.update(ldm_workdir=ldm.workdir, ldm_step=ldm.step, used_ema=ldm.used_ema)
    song_set.info["generate_s"] = round(time.monotonic() - started, 3)
    return song_set


def comparison_settings(
    config, settings: generate.SampleSettings
) -> generate.SampleSettings | None:
    """The comparison row's sampling settings, or None when `compare.*` asks for none."""
    compare = config.compare
    if not (compare.ldm_workdir or compare.sampler or compare.steps or compare.guidance_scale >= 0):
        return None
    return dataclasses.replace(
        settings,
        sampler=compare.sampler or settings.sampler,
        steps=compare.steps or settings.steps,
        guidance_scale=(
            compare.guidance_scale if compare.guidance_scale >= 0 else settings.guidance_scale
        ),
    )


def _comparison_pipeline(config, mesh, primary: ldm_loading.SamplingPipeline):
    if not config.compare.ldm_workdir:
        return primary
    pipeline = ldm_loading.load_pipeline(
        config.compare.ldm_workdir, mesh, ldm_step=config.compare.ldm_step or None,
        use_ema=config.use_ema, vae_workdir=config.vae_workdir,
    )  # fmt: skip
    # The comparison LDM must decode with the same VAE, or its latents live in another space.
    latents.check_same_space(
        primary.manifest, pipeline.manifest,
        what=f"config compare.ldm_workdir={config.compare.ldm_workdir}",
    )  # fmt: skip
    return pipeline


def midi_table_rows(sets: Sequence[SongSet], stats, config) -> list[dict]:
    """The model-independent table: every generated row's songs, the real-vs-real ceiling
    stored with the statistics, and each of `extra_midi_dirs`, against the held-out real
    songs' statistics."""
    rows = [
        descriptor_rows.song_row(s.name, s.kind, s.songs, stats)
        for s in sets
        if s.kind != "real"  # the held-out songs are the statistics themselves
    ]
    ceiling = descriptor_rows.ceiling_row(stats)
    rows += [ceiling] if ceiling else []
    folders = descriptor_rows.split_folders(config.extra_midi_dirs)
    rows += descriptor_rows.folder_rows(folders, stats, config.midi_quantize_step)
    for row in rows:
        logging.info("%s: mean overlap %.3f, descriptor FD %.3f", row["name"],
                     row["metrics"]["mean_overlap"], row["metrics"]["descriptor_fd"])  # fmt: skip
    return rows


def validate_config(config) -> None:
    """This stage's own keys and the LDM runs, before anything is loaded (main calls it before
    the workdir is touched, `run` again at its top)."""
    settings = generate.settings_from_config(config)
    generate.check_settings(settings)
    compared = comparison_settings(config, settings)
    if compared is not None:
        generate.check_settings(compared)
    config_lib.require(config, "reference_songs", lambda v: v >= 1, "must be >= 1")
    descriptor_rows.check_folders(
        descriptor_rows.split_folders(config.extra_midi_dirs), "extra_midi_dirs"
    )
    if config.real_statistics and not os.path.exists(config.real_statistics):
        raise config_lib.MissingInput(
            f"config real_statistics={config.real_statistics}: not found; give a "
            "real_statistics.json (make eval and make eval-midi write one) or leave it empty"
        )
    if config.get("model"):
        bundle_data_dir(config, bundle.require(config))
        if config.compare.ldm_workdir:
            raise config_lib.ConfigError(
                "config compare.ldm_workdir: not with model=BUNDLE (the latent spaces differ); "
                "compare samplers with compare.sampler / compare.steps"
            )
        return
    ldm_run.require(config)
    if config.compare.ldm_workdir:
        ldm_run.require(config, "compare.ldm_workdir")


def bundle_data_dir(config, bundle_meta: dict) -> str:
    """The prepared data whose songs a bundle is measured against: `data_dir`, else the data
    the bundle was exported from (its provenance), checked to exist and to have the bundle's
    slots per bar. "" when that folder is absent but the bundle stores real statistics (or
    `real_statistics` names some) and `data_dir` is unset: then only the rows that need no
    real songs' latents are measured."""
    data_dir = config.data_dir or bundle_meta["provenance"].get("data") or ""
    if not data_dir or not os.path.isfile(os.path.join(data_dir, "manifest.json")):
        if not config.data_dir and (bundle_meta.get("real_statistics") or config.real_statistics):
            return ""
        raise config_lib.ConfigError(
            f"config data_dir={data_dir!r}: model=BUNDLE needs prepared songs to compare with "
            "(make data, then data_dir=data/pop909), or a bundle exported with its real "
            "statistics"
        )
    slots_per_bar = sources.read_manifest(data_dir)["settings"]["slots_per_bar"]
    if slots_per_bar != bundle_meta["latents"]["slots_per_bar"]:
        raise config_lib.ConfigError(
            f"config data_dir={data_dir}: {slots_per_bar} slots per bar, the bundle's model "
            f"{bundle_meta['latents']['slots_per_bar']}; give data prepared for that model"
        )
    return os.path.abspath(data_dir)


def run(config, workdir: str) -> dict:
    """Evaluates the configured LDM into `workdir`; returns the metrics.json dict."""
    validate_config(config)
    started = time.monotonic()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    settings = generate.settings_from_config(config)
    mesh = sharding.make_mesh(config.mesh)
    pipeline = ldm_loading.load_configured_pipeline(
        config, mesh, guidance_scale=settings.guidance_scale, sections=settings.sections
    )
    manifest = pipeline.manifest
    run_dir.write_config(config, workdir)  # after the runs it reads were found and checked
    from_bundle = bool(config.get("model"))
    if from_bundle:
        latents_dir, data_dir = "", bundle_data_dir(config, bundle.read_meta(config.model))
    else:
        latents_dir = os.path.abspath(config.latents_dir or pipeline.ldm.config.latents.dir)
        data_dir = os.path.abspath(config.data_dir or manifest["data_dir"])
    metric_settings = MetricSettings(
        slots_per_bar=int(manifest["slots_per_bar"]),
        fid_orders=tuple(int(n) for n in config.fid_orders),
        srs_threshold=float(config.srs_threshold),
        srs_min_run=int(config.srs_min_run),
        melody_program=int(config.melody_program),
    )
    spb = metric_settings.slots_per_bar
    timings = {"load_s": time.monotonic() - started}

    tick = time.monotonic()
    if not data_dir:  # a bundle without its data: no real latents, songs or melodies
        reference, reference_names, sets, melodies = [], [], [], []
    elif from_bundle:  # the bundle's latent space: real songs encoded with its VAE
        vae_model, max_len = pipeline.vae.model, int(pipeline.vae.config.data.max_len)
        reference, reference_names = encoded_songs.reference_latents(
            vae_model, data_dir, count=config.reference_songs, seed=config.seed,
            max_len=max_len, slots_per_bar=spb, max_slots=int(manifest["max_slots"]),
        )  # fmt: skip
        real_latents, real_songs = encoded_songs.held_out(
            vae_model, data_dir, config.real_splits, max_len=max_len, slots_per_bar=spb,
            max_slots=int(manifest["max_slots"]),
        )  # fmt: skip
        label = "+".join(config.real_splits)
        sets = [SongSet(f"real held-out ({label})", "real", real_latents, real_songs,
                        info={"splits": label, "encoded_with": "the bundle's VAE"})]  # fmt: skip
    else:
        train_split = ldm_pipeline.load_split(latents_dir, "train", manifest)
        reference, reference_names = reference_set(
            train_split, config.reference_songs, config.seed, spb
        )
        sets = [real_set(latents_dir, manifest, data_dir, config.real_splits, spb)]
    if data_dir:
        melodies = training_melodies(
            data_dir, spb, metric_settings.melody_program, config.memorisation_train_songs
        )
    timings["real_data_s"] = time.monotonic() - tick

    sets.append(_generate_row(pipeline, settings, "generated", config.label))
    compare_settings = comparison_settings(config, settings)
    if compare_settings is not None:
        compare_pipeline = _comparison_pipeline(config, mesh, pipeline)
        sets.append(
            _generate_row(compare_pipeline, compare_settings, "comparison", config.compare.label)
        )

    tick = time.monotonic()
    rows = []
    for song_set in sets:
        metrics = evaluate_set(song_set, reference, melodies, metric_settings)
        rows.append({"name": song_set.name, "kind": song_set.kind, "metrics": metrics,
                     "info": song_set.info})  # fmt: skip
        logging.info("%s: %s", song_set.name, {k: round(v, 4) for k, v in metrics.items()})
    timings["metrics_s"] = time.monotonic() - tick
    tick = time.monotonic()
    stats = descriptor_rows.statistics_for(
        real_statistics_path=config.real_statistics, data_dir=data_dir,
        splits=config.real_splits, bundle_path=config.get("model", ""), seed=config.seed,
    )  # fmt: skip
    midi_rows = midi_table_rows(sets, stats, config)
    timings["midi_descriptors_s"] = time.monotonic() - tick
    result = {
        "rows": rows,
        "midi_rows": midi_rows,
        "real_statistics": stats.source,
        "reported": report.reported_rows(),
        "reference": {
            "songs": len(reference),
            "slots": int(sum(map(len, reference))),
            "names": reference_names,
            "srs": structure.mean_section_recurrence_score(
                [x for x in reference if len(x)],
                spb,
                metric_settings.srs_threshold,
                metric_settings.srs_min_run,
            )
            if any(len(x) for x in reference)
            else float("nan"),  # fmt: skip
            "training_melodies": len(melodies),
        },
        "settings": {
            "latents_dir": latents_dir,
            "data_dir": data_dir,
            "vae_workdir": manifest.get("vae_workdir", ""),
            "vae_step": manifest["vae_step"],
            "model": config.get("model", ""),
            **dataclasses.asdict(metric_settings),
        },
    }
    if jax.process_index() == 0:
        real_statistics.save(stats, os.path.join(workdir, real_statistics.FILE_NAME))
        tick = time.monotonic()
        result["plot"] = report.write_self_similarity_plot(
            sets, workdir, metric_settings, config.plot_songs
        )
        report.write_markdown(result, workdir)
        timings["report_s"] = time.monotonic() - tick
    timings["total_s"] = time.monotonic() - started
    result["timings"] = {k: round(v, 3) for k, v in timings.items()}
    result = report.json_ready(result)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, METRICS_JSON), "w") as f:
            json.dump(result, f, indent=1, allow_nan=False)
    logging.info("evaluation written to %s in %.1f s", workdir, timings["total_s"])
    return result
