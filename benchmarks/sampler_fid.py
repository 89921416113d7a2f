"""PhraseFID of fast samplers against DDPM-1000 on one trained PhraseLDM run (bench_ldm option).

    python -m benchmarks.bench_ldm --skip train,step,song,trained \
        --fid_ldm_workdir runs/ldm_lencond_cpu --fid_songs 32 --fid_bars 64

Every sampler starts from the same noise (seed 0) and generates `num_songs` songs of exactly
`bars` bars (end = the requested length) through `generate.generate`; PhraseFID (SPEC 7) is taken
against all slots of 100 training songs of the run's latents (`stages/evaluate.reference_set`).
A second DDPM-1000 set from other noise (seed 1) gives the FID's own sampling noise. Lower
PhraseFID is better: a fast sampler whose FID is at most 5% above DDPM-1000's (`within_5pct`;
`vs_baseline` is the signed relative difference) can stand in for it.
"""

from __future__ import annotations

import os
import time

from benchmarks.bench_vae import Report, single_device_mesh
from data_pipelines import ldm_pipeline
from phrase_jax.evaluation import fid
from phrase_jax.generation import generate
from phrase_jax.inference import ldm_loading
from phrase_jax.stages import evaluate

REFERENCE_SONGS = 100  # SPEC 7 (ref): all slots of 100 training songs
TOLERANCE = 0.05


def sampler_fid(pipeline, reference, *, method: str, steps: int, num_songs: int, bars: int,
                seed: int = 0) -> tuple[float, dict]:  # fmt: skip
    """(PhraseFID vs `reference`, details) of `num_songs` songs from one sampler."""
    settings = generate.SampleSettings(
        num_songs=num_songs, bars=bars, sampler=method, steps=steps, seed=seed,
        end="condition", decode_slots="tracks",
    )  # fmt: skip
    started = time.monotonic()
    generated, stats = generate.generate(*pipeline, settings)
    spb = int(pipeline.manifest["slots_per_bar"])
    song_set = evaluate.generated_set(method, "generated", generated, stats, spb)
    details = {
        "generate_s": round(time.monotonic() - started, 2),
        "diffusion_s": stats["timings"]["diffusion_s"],
        "mean_bars": round(sum(len(g.song.bars) for g in generated) / len(generated), 2),
    }
    return fid.phrase_fid(song_set.latents, reference), details


def compare_samplers(
    report: Report, ldm_workdir: str, plans: list[tuple[str, int]], *, num_songs: int, bars: int
) -> dict[str, float]:
    """Adds one `fid_<method>_<steps>` row per plan (the first plan is the baseline, DDPM-1000)
    plus `fid_<baseline>_seed1`, the baseline from other noise; returns {row name: FID}."""
    if not os.path.isdir(os.path.join(ldm_workdir, "checkpoints")):
        raise FileNotFoundError(f"--fid_ldm_workdir {ldm_workdir}: no checkpoints; train it first")
    pipeline = ldm_loading.load_pipeline(ldm_workdir, single_device_mesh())
    latents_dir = pipeline.ldm.config.latents.dir
    train = ldm_pipeline.load_split(latents_dir, "train", pipeline.manifest)
    spb = int(pipeline.manifest["slots_per_bar"])
    reference, _ = evaluate.reference_set(train, REFERENCE_SONGS, 0, spb)
    (base_method, base_steps), results = plans[0], {}
    runs = [(method, steps, 0) for method, steps in plans] + [(base_method, base_steps, 1)]
    for method, steps, seed in runs:
        value, details = sampler_fid(pipeline, reference, method=method, steps=steps,
                                     num_songs=num_songs, bars=bars, seed=seed)  # fmt: skip
        name = f"fid_{method}_{steps}" + (f"_seed{seed}" if seed else "")
        results[name] = value
        baseline = results[f"fid_{base_method}_{base_steps}"]
        report.value(
            name, phrase_fid=round(value, 4), vs_baseline=round(value / baseline - 1.0, 4),
            within_5pct=value <= (1.0 + TOLERANCE) * baseline, songs=num_songs, bars=bars,
            ldm_step=pipeline.ldm.step, **details,
        )  # fmt: skip
    return results
