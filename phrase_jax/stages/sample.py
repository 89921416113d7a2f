"""The sample stage (SPEC 6): a trained PhraseLDM and its VAE → songs → MIDI, piano rolls,
samples.json.

    python -m phrase_jax.main --config experiments/sample.py:lencond --workdir runs/samples_lencond
    make sample VARIANT=lencond,cpu

With `model=BUNDLE` (a bundle folder: `make export`, `make import-official`) the bundle replaces
the three runs below; its refusals (guidance for a model trained without condition dropout,
sections without known ids) are checked before generating, and samples.json records the bundle
path and its provenance.

`run(config, workdir)` reads top to bottom: the settings checked → the LDM workdir (config.json,
section_vocab.json, the checkpoint's EMA weights when kept) → the latents manifest that run
trained on (scale, clip, special latents, the VAE checkpoint) → that VAE → config.json →
`generation.generate` → the songs of an earlier run in this folder removed → one .mid, .png (and
.wav with `wav=True`: FluidSynth + a GM sound font when installed, else sine tones) per song
and `samples.json` in the workdir (the output folder; artifacts/samples.py).
"""

from __future__ import annotations

import os
import time

import jax
from absl import logging

from phrase_jax.artifacts import bundle, ldm_run, run_dir, samples
from phrase_jax.generation import generate, song_output
from phrase_jax.inference import ldm_loading
from phrase_jax.training import sharding

SAMPLES_JSON = samples.SAMPLES_JSON


def validate_config(config) -> None:
    """This stage's own keys and the LDM run, before anything is loaded (main calls it before
    the workdir is touched, `run` again at its top)."""
    generate.check_settings(generate.settings_from_config(config))
    song_output.parse_programs(config.get("programs", ""))
    if config.get("model"):
        bundle.require(config)
    else:
        ldm_run.require(config)


def run(config, workdir: str) -> dict:
    """Generates the songs of `config` into `workdir`; returns the samples.json dict."""
    validate_config(config)
    started = time.monotonic()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    settings = generate.settings_from_config(config)
    mesh = sharding.make_mesh(config.mesh)
    pipeline = ldm_loading.load_configured_pipeline(
        config, mesh, guidance_scale=settings.guidance_scale, sections=settings.sections
    )
    ldm, vae = pipeline.ldm, pipeline.vae
    load_s = time.monotonic() - started
    logging.info(
        "LDM %s step %d (%s weights), VAE step %d; loaded in %.1f s",
        ldm.workdir,
        ldm.step,
        "EMA" if ldm.used_ema else "raw",
        vae.step,
        load_s,
    )
    run_dir.write_config(config, workdir)
    songs, stats = generate.generate(*pipeline, settings)
    files, write_seconds = [], {}
    if jax.process_index() == 0:
        removed = samples.clear(workdir)
        if removed:
            logging.info("%s: replaced %d files of an earlier sampling run", workdir, len(removed))
        files, write_seconds = song_output.write_songs(
            [s.song for s in songs],
            workdir,
            tempo=config.tempo,
            piano_roll=config.piano_roll,
            wav=config.wav,
            synthesizer=config.get("synthesizer", "auto"),
            sound_font=config.get("sound_font", "") or None,
            programs=song_output.parse_programs(config.get("programs", "")),
        )
        for summary, written in zip(stats["songs"], files, strict=True):
            summary["files"] = {k: v for k, v in written.items() if k != "wav_synthesizer"}
        if config.wav:
            # One synthesizer per run: FluidSynth loads for every song or for none.
            stats["settings"]["wav_synthesizer"] = ",".join(
                sorted({f["wav_synthesizer"] for f in files})
            )
    stats["settings"].update(
        tempo=config.tempo,
        programs=config.get("programs", ""),
        ldm_step=ldm.step,
        used_ema=ldm.used_ema,
        vae_step=vae.step,
        latent_scale=pipeline.manifest["scale"],
    )
    if config.get("model"):
        stats["settings"].update(model=ldm.workdir, provenance=pipeline.manifest["provenance"])
    else:
        stats["settings"].update(
            ldm_workdir=ldm.workdir,
            vae_workdir=os.path.abspath(config.vae_workdir or pipeline.manifest["vae_workdir"]),
        )
    timings = dict(stats["timings"], load_s=round(load_s, 4), **write_seconds)
    timings["total_s"] = round(time.monotonic() - started, 4)
    timings["seconds_per_song"] = round(
        (timings["diffusion_s"] + timings["decode_s"]) / len(songs), 4
    )
    stats["timings"] = timings
    samples.write(workdir, stats)
    logging.info(
        "%d songs, %d bars, %d of %d decoded slots disagree with their position; %s",
        len(songs),
        stats["totals"]["bars"],
        stats["totals"]["position_disagreements"],
        stats["totals"]["decoded_phrases"],
        timings,
    )
    return stats
