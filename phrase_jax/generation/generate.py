"""Generation (SPEC 6): a trained PhraseLDM and its VAE -> songs, shared by the sample and
evaluate stages, the benchmarks and the notebook.

    pipeline = ldm_loading.load_pipeline("runs/ldm_lencond", mesh)
    songs, stats = generate(*pipeline, SampleSettings(num_songs=4))

Per batch of songs: noise [b, N, D] (one key per song) → sampler in the scaled latent
space (x0 clipped at the manifest's clip) → × scale → each song's end (the requested length when
the model was told an exact one, else the first slot whose nearest special latent is `[SEP]`)
→ ONE greedy VAE decode of the slots before the ends of all songs of the batch (never the
padding) → assembly by slot position (`layout.assemble_song`), counting decoded `b-1`/`[INST]`
slots that disagree with their position. `decode_slots="tracks"` decodes only the track slots
that are not `[INST]` padding (the `b-1` slot of each bar is known by position; a slot within
half the distance from the `[INST]` latent to the other special latents is padding): the song is
the same whenever those slots would have decoded to `b-1`/`[INST]`, the decoder gets about half
the rows on POP909, and the disagreement counts then cover only the decoded rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from data_pipelines import datasets
from phrase_jax import config_lib
from phrase_jax.artifacts import samples
from phrase_jax.diffusion import samplers
from phrase_jax.generation import slot_decoding
from phrase_jax.inference import vae_loading
from phrase_jax.inference.ldm_loading import LoadedLDM
from phrase_jax.music import layout
from phrase_jax.music.events import Song
from phrase_jax.training import sharding

SAMPLER_ALIASES = {"dpmpp": "dpm_solver_pp", "dpmpp_sde": "dpm_solver_pp_sde"}
END_RULES = ("auto", "detect", "condition")
DEFAULT_BARS = 64  # SPEC 7 length accuracy conditions on 64 bars
DECODE_SLOTS = ("all", "tracks")


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """What to generate. `bars` 0: the section string's total, else DEFAULT_BARS (only models
    conditioned on length, bars or sections use it). `sections` like "i4A8B8o4". `clip` None:
    the manifest's clip (scaled space); 0: none. `end`: auto | detect | condition (see module
    docstring). `batch_size` songs per sampler call; `decode_chunk` phrases per decoder call;
    `decode_slots`: all | tracks (see module docstring)."""

    num_songs: int = 4
    bars: int = 0
    sections: str = ""
    sampler: str = "ddpm"
    steps: int = 1000
    guidance_scale: float = 1.0
    clip: float | None = None
    seed: int = 0
    end: str = "auto"
    batch_size: int = 16
    decode_chunk: int = 1024
    decode_slots: str = "all"


@dataclasses.dataclass
class GeneratedSong:
    """One generated song. latents_nd float32 [N, D] unscaled (all slots, padding included);
    `end_slot` slots were decoded; `detected_end_slot` is where the `[SEP]` test puts the end;
    `requested_bars` is the length the model was told (None when it was told none)."""

    index: int
    song: Song
    latents_nd: np.ndarray
    end_slot: int
    detected_end_slot: int
    requested_bars: int | None
    assembly: layout.AssemblyStats

    def summary(self, slots_per_bar: int) -> dict:
        a = self.assembly
        return {
            "index": self.index,
            "requested_bars": self.requested_bars,
            "detected_bars": math.ceil(self.detected_end_slot / slots_per_bar),
            "decoded_slots": self.end_slot,
            "bars": a.n_bars,
            "notes": a.decode.notes,
            "position_disagreements": a.position_disagreements,
            "bar_slot_mismatches": a.bar_slot_mismatches,
            "misplaced_bar_ends": a.misplaced_bar_ends,
            "misplaced_inst": a.misplaced_inst,
            "dropped_tokens": a.decode.dropped,
        }


def parse_sections(text: str) -> list[tuple[str, int]]:
    """ "i4A8B8o4" → [("i", 4), ("A", 8), ("B", 8), ("o", 4)]; "" → []."""
    if not text.strip():
        return []
    try:
        return datasets.parse_section_label(text)
    except ValueError as error:
        raise config_lib.ConfigError(f"config sections={text!r}: {error}") from error


def resolve_length(settings: SampleSettings, max_bars: int) -> tuple[int, list]:
    """(bars to request, sections). A section string fixes the length to its total."""
    sections = parse_sections(settings.sections)
    total = sum(n for _, n in sections)
    if sections and settings.bars and settings.bars != total:
        raise config_lib.ConfigError(
            f"config bars={settings.bars} but sections={settings.sections!r} "
            f"total {total} bars; set bars=0 or {total}"
        )
    bars = total or settings.bars or DEFAULT_BARS
    if not 1 <= bars <= max_bars:
        raise config_lib.ConfigError(
            f"config bars={bars}: must be in 1..{max_bars} (the LDM's slots)"
        )
    return bars, sections


def condition_arrays(ldm: LoadedLDM, bars: int, sections: list) -> dict[str, np.ndarray]:
    """The model's condition inputs for one song, each with a leading axis of 1."""
    config = ldm.model.config
    arrays = {}
    if {"length", "bars"} & set(config.conditions):
        arrays["n_bars"] = np.array([bars], np.int32)
    if "sections" in config.conditions:
        types, lengths, mask = ldm.section_vocab.encode(
            sections, config.max_sections, config.max_bars
        )
        arrays.update(
            section_types=types[None], section_lengths=lengths[None], section_mask=mask[None]
        )
    return arrays


@functools.partial(jax.jit, static_argnames=("n_slots", "latent_dim"))
def song_noise(key: jax.Array, indices_b, n_slots: int, latent_dim: int) -> jax.Array:
    """float32 [B, n_slots, latent_dim]: song i's noise from `fold_in(key, i)` alone. Compiled
    once per shape at module level (a jit made inside `generate` recompiled at every call)."""
    draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), (n_slots, latent_dim))
    return jax.vmap(draw)(indices_b)


def _place(array: np.ndarray, mesh) -> jax.Array:
    """Songs split over the mesh's `data` axis when they divide evenly (one process)."""
    if jax.process_count() == 1 and array.shape[0] % mesh.shape["data"] == 0:
        return jax.device_put(array, sharding.batch_sharding(mesh))
    return jnp.asarray(array)


def _progress_line(done: int, total: int, elapsed: float) -> str:
    rate = done / max(elapsed, 1e-9)
    eta = (total - done) / rate if rate > 0 else float("inf")
    eta_text = f"{eta:.0f}s" if math.isfinite(eta) else "?"
    return f"songs {done}/{total} ({100 * done / total:.0f}%) | {rate:.3g} songs/s | ETA {eta_text}"


def check_settings(settings: SampleSettings) -> str:
    """Checks what needs no model (sampler, end rule, decode slots, sizes, the section string);
    returns the sampler's method name. Stages call it before loading anything."""
    method = SAMPLER_ALIASES.get(settings.sampler, settings.sampler)
    if method not in samplers.METHODS:
        raise config_lib.ConfigError(
            f"config sampler={settings.sampler!r}: one of {samplers.METHODS} "
            f"(or {', '.join(SAMPLER_ALIASES)})"
        )
    if settings.steps < 1:
        raise config_lib.ConfigError(f"config steps={settings.steps}: must be >= 1")
    if settings.num_songs < 1 or settings.batch_size < 1 or settings.decode_chunk < 1:
        raise config_lib.ConfigError("config num_songs, batch_size and decode_chunk must be >= 1")
    if settings.end not in END_RULES:
        raise config_lib.ConfigError(f"config end={settings.end!r}: one of {END_RULES}")
    if settings.decode_slots not in DECODE_SLOTS:
        raise config_lib.ConfigError(
            f"config decode_slots={settings.decode_slots!r}: one of {DECODE_SLOTS}"
        )
    if settings.bars < 0:
        raise config_lib.ConfigError(f"config bars={settings.bars}: 0 (default) or more")
    parse_sections(settings.sections)
    return method


def generate(
    ldm: LoadedLDM, vae: vae_loading.LoadedVAE, manifest: dict, settings: SampleSettings
) -> tuple[list[GeneratedSong], dict]:
    """Generates `settings.num_songs` songs. Returns (songs, stats) with stats = {"songs":
    per-song summaries, "totals", "timings" (seconds: diffusion, decode, assembly), "settings"
    (as used: sampler name, clip, bars, end rule, conditions)}. Deterministic for a seed and
    batch size; the noise of song i depends only on the seed and i."""
    model_config = ldm.model.config
    n_slots, latent_dim = model_config.n_slots, model_config.latent_dim
    slots_per_bar = int(manifest["slots_per_bar"])
    method = check_settings(settings)
    if not 1 <= settings.steps <= ldm.schedule.num_steps:
        raise config_lib.ConfigError(
            f"config steps={settings.steps}: in 1..{ldm.schedule.num_steps}"
        )
    bars, sections = resolve_length(settings, n_slots // slots_per_bar)
    conds = condition_arrays(ldm, bars, sections)
    # A 10-bar length bucket does not fix the length; exact bars or a section string do.
    exact = "bars" in model_config.conditions or (
        "sections" in model_config.conditions and bool(sections)
    )
    told_length = exact or "length" in model_config.conditions
    end_rule = settings.end if settings.end != "auto" else ("condition" if exact else "detect")
    if end_rule == "condition" and not told_length:
        raise config_lib.ConfigError(
            "config end=condition: this LDM was not told a length (unconditional)"
        )
    clip = manifest["clip"] if settings.clip is None else settings.clip
    clip = float(clip) if clip and clip > 0 else None
    scale = float(manifest["scale"])
    max_len = int(vae.config.data.max_len)
    mesh = ldm.mesh
    batch = min(settings.batch_size, settings.num_songs)

    noise_key, sampler_key = jax.random.split(jax.random.key(settings.seed))
    batch_conds = {k: _place(np.repeat(v, batch, axis=0), mesh) for k, v in conds.items()}
    songs: list[GeneratedSong] = []
    timings = {
        "diffusion_s": 0.0,
        "diffusion_first_batch_s": 0.0,
        "decode_s": 0.0,
        "assembly_s": 0.0,
    }
    decoder_rows = 0
    started = time.monotonic()
    for batch_index, first in enumerate(range(0, settings.num_songs, batch)):
        count = min(batch, settings.num_songs - first)
        # The last batch is filled with extra songs and cut, so one compiled sampler serves all.
        noise = np.asarray(
            song_noise(noise_key, np.arange(first, first + batch), n_slots, latent_dim)
        )
        tick = time.monotonic()
        x0 = samplers.sample(
            ldm.model,
            ldm.schedule,
            _place(noise, mesh),
            jax.random.fold_in(sampler_key, batch_index),
            method=method,
            num_steps=settings.steps,
            conditions=batch_conds,
            guidance_scale=settings.guidance_scale,
            prediction=ldm.config.diffusion.prediction,
            clip=clip,
        )
        latents = np.asarray(jax.device_get(x0), np.float32)[:count] * np.float32(scale)
        seconds = time.monotonic() - tick
        timings["diffusion_s"] += seconds
        if batch_index == 0:  # includes compiling the sampler
            timings["diffusion_first_batch_s"] = seconds

        detected = slot_decoding.song_end_slots(latents, manifest["special_latents"])
        ends = detected if end_rule == "detect" else np.full(count, bars * slots_per_bar)
        tick = time.monotonic()
        mask = None
        if settings.decode_slots == "tracks":
            mask = slot_decoding.slots_to_decode(
                latents, ends, manifest["special_latents"], slots_per_bar
            )
        decoded = slot_decoding.decode_song_slots(
            vae.model,
            latents,
            ends,
            max_len=max_len,
            decode_chunk=settings.decode_chunk,
            decode_mask_bn=mask,
            slots_per_bar=slots_per_bar,
        )
        decoder_rows += int(ends.sum()) if mask is None else int(mask.sum())
        timings["decode_s"] += time.monotonic() - tick

        tick = time.monotonic()
        for offset in range(count):
            index = first + offset
            song, assembly = layout.assemble_song(
                [row.tolist() for row in decoded[offset]],
                slots_per_bar,
                name=samples.song_file_stem(index),
            )
            songs.append(
                GeneratedSong(
                    index=index,
                    song=song,
                    latents_nd=latents[offset],
                    end_slot=int(ends[offset]),
                    detected_end_slot=int(detected[offset]),
                    requested_bars=bars if told_length else None,
                    assembly=assembly,
                )
            )
        timings["assembly_s"] += time.monotonic() - tick
        if jax.process_index() == 0:
            logging.info(
                "%s", _progress_line(len(songs), settings.num_songs, time.monotonic() - started)
            )

    summaries = [s.summary(slots_per_bar) for s in songs]
    decoded_slots = sum(s["decoded_slots"] for s in summaries)
    disagreements = sum(s["position_disagreements"] for s in summaries)
    totals = {
        "songs": len(songs),
        "bars": sum(s["bars"] for s in summaries),
        "decoded_phrases": decoded_slots,
        "decoder_rows": decoder_rows,
        "position_disagreements": disagreements,
        "disagreement_rate": disagreements / max(decoded_slots, 1),
    }
    used = dict(
        dataclasses.asdict(settings),
        sampler=method,
        clip=clip,
        bars=bars,
        sections=[list(s) for s in sections],
        end=end_rule,
        conditions=list(model_config.conditions),
        told_length=told_length,
        # samplers.sample guides only conditional models, and scale 1 is the plain model.
        guidance_applied=bool(model_config.conditions) and settings.guidance_scale != 1.0,
    )
    timings = {k: round(v, 4) for k, v in timings.items()}
    return songs, {"settings": used, "totals": totals, "timings": timings, "songs": summaries}


def settings_from_config(config) -> SampleSettings:
    return SampleSettings(
        num_songs=config.num_songs,
        bars=config.bars,
        sections=config.sections,
        sampler=config.sampler,
        steps=config.steps,
        guidance_scale=config.guidance_scale,
        clip=None if config.clip < 0 else config.clip,
        seed=config.seed,
        end=config.end,
        batch_size=config.batch_size,
        decode_chunk=config.decode_chunk,
        decode_slots=config.get("decode_slots", "all"),
    )
