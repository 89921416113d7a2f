"""An edit with a model (issue 14): the input's slots encoded by the VAE, the written slots
sampled by the LDM with the kept ones in view (the samplers' inpainting, optionally with
RePaint resampling), only the written slots decoded, and the merge with the kept notes.

    pipeline = ldm_loading.load_pipeline("runs/ldm_lencond", mesh)      # or a bundle
    result = edit_song(pipeline, song, plan, EditSettings(sampler="ddim", steps=50))
    result.song            # the edited song, in the input's key

Kept slots hold the VAE means of the input's phrases (in the model's scaled space, as latent
extraction computes them), the `b-1` slots the `b-1` latent and the slots after the song the
`[SEP]` latent; the sampler noises them to each step's level and returns them exactly.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from data_pipelines import transforms
from phrase_jax.diffusion import samplers
from phrase_jax.evaluation import encoded_songs
from phrase_jax.generation import editing, generate, slot_decoding
from phrase_jax.generation.edit_input import EditInput
from phrase_jax.inference.ldm_loading import SamplingPipeline
from phrase_jax.music import layout
from phrase_jax.music.events import Song

ENCODER_FRAMING = len(transforms.PHRASE_PREFIX) + 1  # the prefix and [EOS] around a phrase


@dataclasses.dataclass(frozen=True)
class EditSettings:
    """How to sample: sampler (generate's names and aliases), steps, guidance, clip (None:
    the manifest's, 0: none), seed, RePaint resampling, phrases per decoder call."""

    sampler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 1.0
    clip: float | None = None
    seed: int = 0
    resampling: samplers.Resampling = samplers.Resampling()
    decode_chunk: int = 512


@dataclasses.dataclass
class EditResult:
    """The edited song and its parts: `written` (decoded written slots, normalised key, one
    bar per result bar), `latents_nd` (unscaled, all model slots), merge and assembly counts,
    seconds per phase."""

    song: Song
    written: Song
    latents_nd: np.ndarray
    merge: editing.MergeStats
    assembly: layout.AssemblyStats
    timings: dict


def encode_length(slots, max_len: int) -> int:
    """The encoder length that holds the song's longest phrase: the encoder masks padding, so
    the means equal those at the VAE's max_len (latent extraction) up to rounding, and a song of
    POP909's 22-token median phrases encodes about 4x faster than at 128. A multiple of 32, so
    few lengths compile."""
    longest = max((len(slot) for slot in slots), default=1) + ENCODER_FRAMING
    return min(max_len, -(-longest // 32) * 32)


def known_latents(
    pipeline: SamplingPipeline, song: EditInput, plan: editing.EditPlan, track_choice: str
) -> np.ndarray:
    """float32 [n_slots, D], unscaled: the input's slot means (its bars up to the result's
    length), `b-1` latents in the bars after the input, `[SEP]` after the result's end."""
    manifest, vae = pipeline.manifest, pipeline.vae
    spb = int(manifest["slots_per_bar"])
    n_slots = pipeline.ldm.model.config.n_slots
    special = {k: np.asarray(v, np.float32) for k, v in manifest["special_latents"].items()}
    known = np.tile(special["sep"], (n_slots, 1))
    bar_slot = (np.arange(n_slots) % spb) == spb - 1
    in_result = np.arange(n_slots) < plan.n_bars * spb
    known[bar_slot & in_result] = special["bar"]
    known[~bar_slot & in_result] = special["inst"]
    kept_bars = min(song.n_bars, plan.n_bars)
    bars = Song(bars=song.normalized.bars[:kept_bars])
    slots = layout.song_slots(bars, spb, track_choice=track_choice).slots
    record = {"slots": slots, "n_bars": kept_bars}
    means = encoded_songs.encode_slots(
        vae.model, [record], max_len=encode_length(slots, int(vae.config.data.max_len)),
        slots_per_bar=spb,
    )[0]  # fmt: skip
    known[: len(means)] = means
    return known


def edit_song(
    pipeline: SamplingPipeline,
    song: EditInput,
    plan: editing.EditPlan,
    settings: EditSettings,
    *,
    track_choice: str,
) -> EditResult:
    """Samples the written slots of `plan` with the kept ones known, decodes only those and
    merges them with the input's kept notes. Deterministic for a seed."""
    ldm, vae, manifest = pipeline
    timings = {}
    tick = time.monotonic()
    method = generate.SAMPLER_ALIASES.get(settings.sampler, settings.sampler)
    config = ldm.model.config
    spb = int(manifest["slots_per_bar"])
    scale = float(manifest["scale"])
    clip = manifest["clip"] if settings.clip is None else settings.clip
    clip = float(clip) if clip and clip > 0 else None
    known = known_latents(pipeline, song, plan, track_choice)
    timings["encode_s"] = time.monotonic() - tick

    tick = time.monotonic()
    conditions = generate.condition_arrays(ldm, plan.n_bars, plan.sections or [])
    noise_key, sampler_key = jax.random.split(jax.random.key(settings.seed))
    noise = generate.song_noise(noise_key, np.arange(1), config.n_slots, config.latent_dim)
    x0 = samplers.sample(
        ldm.model,
        ldm.schedule,
        noise,
        sampler_key,
        method=method,
        num_steps=settings.steps,
        conditions=conditions,
        guidance_scale=settings.guidance_scale,
        prediction=ldm.config.diffusion.prediction,
        clip=clip,
        known_bnd=(known / np.float32(scale))[None],
        keep_mask_bn=plan.keep_slots[None],
        resampling=settings.resampling,
    )
    latents = np.asarray(jax.device_get(x0), np.float32)[0] * np.float32(scale)
    timings["diffusion_s"] = time.monotonic() - tick

    tick = time.monotonic()
    end = plan.n_bars * spb
    decoded = slot_decoding.decode_song_slots(
        vae.model,
        latents[None],
        np.array([end]),
        max_len=int(vae.config.data.max_len),
        decode_chunk=settings.decode_chunk,
        decode_mask_bn=plan.write_slots[None],
        slots_per_bar=spb,
    )[0]
    timings["decode_s"] = time.monotonic() - tick

    # Unwritten slots decode by position to [INST] / b-1, so the assembly holds only writing.
    written, assembly = layout.assemble_song([row.tolist() for row in decoded], spb)
    edited, merge_stats = editing.merge(song, plan, written)
    return EditResult(
        song=edited,
        written=written,
        latents_nd=latents,
        merge=merge_stats,
        assembly=assembly,
        timings={k: round(v, 4) for k, v in timings.items()},
    )
