"""The edit stage (issue 14): a MIDI file, a model (a bundle or the training runs) and one task
→ the edited song: edited.mid, edited.png (kept and written regions), edited.wav, edit.json.

    python -m phrase_jax.main --config experiments/edit.py:cpu,input=song.mid,task=infill,bars=5-8 \
        --workdir runs/edit_song
    make edit MODEL=bundles/phrase-ldm-lencond INPUT=song.mid EDIT_ARGS=task=continue,bars=64

`run(config, workdir)` reads top to bottom: the request and sampler checked → the input read as
training data is (`generation/edit_input.py`) → the plan of kept and written slots
(`generation/editing.py`; bad requests fail here, before any model loads) → the pipeline (a
bundle or the LDM run with its latents and VAE) and the conditions the model needs → the edit
(`generation/edit_sampling.py`) → the files, then edit.json (task, what was kept, sampler, seed,
timings) written last.
"""

from __future__ import annotations

import os
import time

from absl import logging

from data_pipelines import datasets
from phrase_jax import errors
from phrase_jax.artifacts import bundle, ldm_run, run_dir
from phrase_jax.diffusion import samplers
from phrase_jax.generation import audio, edit_input, edit_sampling, editing, generate, song_output
from phrase_jax.inference import ldm_loading
from phrase_jax.music import midi_io
from phrase_jax.training import sharding

EDIT_JSON = "edit.json"
STEM = "edited"
WAV_CHOICES = ("auto", "yes", "no")  # auto: a .wav when FluidSynth loads


def request_from_config(config) -> editing.EditRequest:
    bars = str(config.get("bars", "")).strip()
    is_continue = config.task == "continue"
    if is_continue and bars and not bars.isdigit():
        raise errors.UserError(
            f"config bars={bars!r}: task=continue wants the bars in total, e.g. 64"
        )
    return editing.EditRequest(
        task=config.task,
        bars="" if is_continue else bars,
        section=config.get("section", ""),
        tracks=str(config.get("tracks", "")),
        track=str(config.get("track", "")),
        keep_bars=int(config.get("keep_bars", 0)),
        total_bars=int(bars) if is_continue and bars else 0,
    )


def settings_from_config(config) -> edit_sampling.EditSettings:
    return edit_sampling.EditSettings(
        sampler=config.sampler,
        steps=config.steps,
        guidance_scale=config.guidance_scale,
        clip=None if config.clip < 0 else config.clip,
        seed=config.seed,
        resampling=samplers.Resampling(
            jump=config.resample_jump, repeats=config.resample_repeats, every=config.resample_every
        ),
        decode_chunk=config.decode_chunk,
    )


def data_settings(config) -> datasets.DatasetSettings:
    """How the input is read: prepare's defaults unless the config says otherwise (use the
    settings the model's training data was prepared with)."""
    settings = datasets.DatasetSettings(
        quantize_step=config.quantize_step,
        track_choice=config.track_choice,
        normalize_key=config.normalize_key,
    )
    try:
        settings.validate()
    except ValueError as error:
        raise errors.UserError(f"config: {error}") from None
    return settings


def validate_config(config) -> None:
    """The request, the sampler and the model's files, before anything is loaded."""
    request_from_config(config).check()
    settings = settings_from_config(config)
    generate.check_settings(generate.SampleSettings(sampler=settings.sampler, steps=settings.steps))
    try:
        settings.resampling.check()
    except ValueError as error:
        raise errors.UserError(f"config {error}") from None
    if config.wav not in WAV_CHOICES:
        raise errors.UserError(f"config wav={config.wav!r}: one of {WAV_CHOICES}")
    data_settings(config)
    if not config.get("input"):
        raise errors.UserError("config input=...: give the MIDI file to edit")
    if config.get("model"):
        bundle.require(config)
    else:
        ldm_run.require(config)


def _result_sections(config, song, plan_bars: int, conditioned: bool):
    """The sections of the result: config.sections, else the input's labels (a continuation
    extends none); None when unknown (a sections-conditioned model then gets no sections, as
    `make sample` without `sections` gives it). UserError when given sections do not fit."""
    text = config.get("sections", "")
    own = song.original.sections if plan_bars == len(song.original.bars) else None
    sections = generate.parse_sections(text) if text else own
    if conditioned and sections:
        total = sum(n for _, n in sections)
        if total != plan_bars:
            raise errors.UserError(
                f"config sections={text or 'the input labels'!r} total {total} bars; the result "
                f"has {plan_bars}: give sections=... totalling {plan_bars} (e.g. i4A8B8o4)"
            )
    return sections


def run(config, workdir: str) -> dict:
    """Edits config.input as config.task says into `workdir`; returns the edit.json dict."""
    validate_config(config)
    started = time.monotonic()
    workdir = os.path.abspath(workdir)
    request = request_from_config(config)
    settings = settings_from_config(config)
    song = edit_input.read_input(config.input, data_settings(config))
    read_s = time.monotonic() - started

    tick = time.monotonic()
    mesh = sharding.make_mesh(config.mesh)
    pipeline = ldm_loading.load_configured_pipeline(
        config, mesh, guidance_scale=settings.guidance_scale, sections=""
    )
    conditions = tuple(pipeline.ldm.model.config.conditions)
    spb = int(pipeline.manifest["slots_per_bar"])
    model_bars = pipeline.ldm.model.config.n_slots // spb
    if request.section and "sections" not in conditions:
        raise errors.UserError(
            f"config section={request.section!r}: this model is not conditioned on sections "
            f"(conditions: {list(conditions) or 'none'}); use bars=a-b"
        )
    if "sections" in conditions and pipeline.ldm.section_vocab is None:
        raise errors.UserError(f"{config.model}: its section ids are unknown; it cannot edit")
    n_bars = request.total_bars if request.task == "continue" else len(song.original.bars)
    sections = _result_sections(config, song, n_bars, "sections" in conditions)
    plan = editing.plan_edit(
        request, song, slots_per_bar=spb, model_bars=model_bars,
        track_choice=config.track_choice, sections=sections,
    )  # fmt: skip
    if not 1 <= settings.steps <= pipeline.ldm.schedule.num_steps:
        raise errors.UserError(
            f"config steps={settings.steps}: in 1..{pipeline.ldm.schedule.num_steps}"
        )
    load_s = time.monotonic() - tick

    result = edit_sampling.edit_song(
        pipeline, song, plan, settings, track_choice=config.track_choice
    )
    os.makedirs(workdir, exist_ok=True)
    run_dir.write_config(config, workdir)
    files, write_s = write_files(config, workdir, result.song, editing.written_regions(plan))
    edit = {
        "input": song.path,
        "request": plan.summary,
        "bars": plan.n_bars,
        "input_bars": song.n_bars,
        "written_slots": int(plan.write_slots.sum()),
        "key_shift": song.key_shift,
        "input_info": song.info,
        "sampler": generate.SAMPLER_ALIASES.get(settings.sampler, settings.sampler),
        "steps": settings.steps,
        "model_calls": samplers.model_calls(settings.steps, settings.resampling),
        "resampling": vars(settings.resampling),
        "guidance_scale": settings.guidance_scale,
        "seed": settings.seed,
        "conditions": list(conditions),
        "sections": [list(s) for s in sections] if sections else None,
        "model": os.path.abspath(config.model) if config.get("model") else pipeline.ldm.workdir,
        "merge": vars(result.merge),
        "position_disagreements": result.assembly.position_disagreements,
        "files": files,
    }
    timings = dict(read_s=round(read_s, 4), load_s=round(load_s, 4), **result.timings, **write_s)
    timings["total_s"] = round(time.monotonic() - started, 4)
    edit["timings"] = timings
    run_dir.write_json_atomic(os.path.join(workdir, EDIT_JSON), edit)
    logging.info("%s: %s, %d written notes; %s", workdir, plan.summary,
                 result.merge.written_notes, timings)  # fmt: skip
    return edit


def write_files(config, workdir: str, song, written) -> tuple[dict, dict]:
    """edited.mid (at the input's tempi and signatures), edited.png, edited.wav as config.wav
    says; each to a temporary name, then renamed."""
    files, seconds = {}, {}
    tick = time.monotonic()
    files["midi"] = f"{STEM}.mid"
    _atomic(os.path.join(workdir, files["midi"]), midi_io.song_to_midi(song).write)
    seconds["midi_write_s"] = time.monotonic() - tick
    if config.piano_roll:
        tick = time.monotonic()
        files["png"] = f"{STEM}.png"
        figure = song_output.piano_roll_figure(
            song, title=f"{song.name}: {len(song.bars)} bars, {config.task}", written=written
        )
        _atomic(
            os.path.join(workdir, files["png"]), lambda p: figure.savefig(p, dpi=100, format="png")
        )
        seconds["png_s"] = time.monotonic() - tick
    fluidsynth = config.wav == "auto" and not audio.fluidsynth_error()
    if config.wav == "yes" or fluidsynth:
        tick = time.monotonic()
        files["wav"] = f"{STEM}.wav"
        files["wav_synthesizer"] = audio.render_wav(
            song, os.path.join(workdir, files["wav"]),
            synthesizer="fluidsynth" if fluidsynth else config.synthesizer,
            sound_font=config.get("sound_font", "") or None,
        )  # fmt: skip
        seconds["wav_s"] = time.monotonic() - tick
    return files, {k: round(v, 4) for k, v in seconds.items()}


def _atomic(path: str, write) -> None:
    """`write(tmp_path)`, then rename: a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)
