"""PhraseLDM speed on this machine: train step, one denoising step and one 128-bar song end to end.

    python -m benchmarks.bench_ldm [--reference] [--json runs/bench_ldm.jsonl] [--runs 3]
        [--train_batches 8,32]
        [--remat_batches 32] [--memory_batches 32]
        [--step_batches 1,8] [--bars 128] [--ddpm_steps 20] [--samplers ddim:50,dpm_solver_pp:20]
        [--trained_ldm_workdir runs/ldm_lencond_cpu] [--fid_ldm_workdir runs/ldm_lencond_cpu]
        [--skip train,step,song,trained]

Paper size: `dit.paper_config(("length",))` (29.5 M parameters) and the paper VAE
(`VAEConfig()`), random init, fp32, on the first local device:
- train step: the real jitted step of `phrase_jax.training` with the diffusion loss of
  `stages/train_ldm.py` (AdamW lr 5e-4 wd 0.01, clip 0.5), latents [B, 512, 64]; `_remat` rows
  with `model.remat` (the process's peak RSS so far is in each row: run a remat row alone to
  see its memory); `--memory_batches` rows (`train_step_b<N>_remat_alone`, paper size only)
  run `benchmarks.train_step_memory` in a subprocess, so that their `peak_rss_mib` is the
  remat step's own peak (issue 13: batch 32 within 8 GB);
- denoising step: one jitted model call at batch 1 and 8 (and in bf16 at batch 1, with its
  largest deviation from fp32 relative to the output's standard deviation);
- one song of `--bars` bars through the real `generate.generate` (end = the requested length):
  diffusion per sampler, VAE decode of the song's slots, assembly, MIDI write. DDPM-1000 is
  timed with `--ddpm_steps` steps and its diffusion time scaled by 1000 / steps (every step costs
  the same model call); the row says so (`extrapolated_from_steps`). Untrained models have no
  special latents and make the VAE emit all `max_len` tokens per row: the worst case. Rows
  `song_<sampler>_<steps>_tracks` decode only the track slots (`decode_slots="tracks"`, the
  fast path); `..._all` decodes all 4 slots per bar, with the last sampler.
Rows `song_p<q>_longest_phrase_<L>_...` (with `--real_lengths_data`, the prepared POP909):
a greedy decode runs until the song's longest phrase ends, so the untrained decoder run for
exactly L steps, the q-th percentile over POP909 songs of the longest phrase, does the work a
trained VAE does on such a song.
`--trained_ldm_workdir` repeats the song with that trained LDM and its VAE (the real loading
path; the song is cut at the requested length, not at the first `[SEP]`-like slot, so the
decoder always sees the whole song), and checks that decoding only track slots gives the same
song. `--fid_ldm_workdir`
compares PhraseFID of the samplers on that run (`benchmarks/sampler_fid.py`).
`--reference` (needs the parity extra) times the diffusers StableAudioDiTModel denoising step at
batch 1 interleaved with our backbone on the same weights (`denoise_backbone_b1` vs
`torch_denoise_b1`, at least 5 runs each).
Each time is the median of `--runs` runs after one warm-up call (its time is printed apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from benchmarks import common
from benchmarks.bench_vae import Report, single_device_mesh, time_train_step
from phrase_jax.artifacts.vae_run import CheckpointRef
from phrase_jax.diffusion import schedules
from phrase_jax.generation import generate, slot_decoding, song_output
from phrase_jax.inference import ldm_loading, vae_loading
from phrase_jax.models import dit, vae
from phrase_jax.music import sections
from phrase_jax.stages import train_ldm

# The issue's PyTorch figures on this CPU (seconds); song rows are per 128-bar song.
ISSUE_REFERENCE_S = {
    "train_step_b8": 5.87,
    "denoise_step_b1": 0.24,
    "song_ddpm_1000_diffusion": 238.0,
    "song_ddpm_1000_end_to_end": 242.0,
}
TARGET_SONG_S = 5.0
DEFAULT_SAMPLERS = "ddim:50,dpmpp:20,dpmpp:10,dpmpp_sde:20,dpmpp_sde:10"
DIFFUSION = {"num_steps": 1000, "prediction": "epsilon"}
PARTS = ("train", "step", "song", "trained")


def random_batch(batch_size: int, config: dit.PhraseLDMConfig, *, seed: int = 0) -> dict:
    """An LDM batch (docs/design.md): scaled latents [B, N, D] and the length condition."""
    rng = np.random.default_rng(seed)
    batch = {
        "latents": rng.standard_normal((batch_size, config.n_slots, config.latent_dim)).astype(
            np.float32
        ),
        "n_bars": rng.integers(1, config.max_bars + 1, batch_size).astype(np.int32),
    }
    return {k: v for k, v in batch.items() if k == "latents" or config.conditions}


def bench_train_step(
    config: dit.PhraseLDMConfig, batch_size: int, *, runs: int, cost: dict | None = None
) -> common.Timing:
    """Times the jitted, donated train step of `phrase_jax.training` on the diffusion loss;
    `cost`: as `bench_vae.time_train_step`'s."""
    return time_train_step(
        lambda: dit.PhraseLDM(config, rngs=nnx.Rngs(0)),
        train_ldm.make_loss_fn(ml_collections.ConfigDict(DIFFUSION)),
        {"name": "adamw", "learning_rate": 5e-4, "weight_decay": 0.01, "grad_clip_norm": 0.5},
        random_batch(batch_size, config),
        runs=runs,
        cost=cost,
    )


def bench_denoise_step(
    model: dit.PhraseLDM, batch_size: int, *, runs: int, dtype: str = "float32"
) -> tuple[common.Timing, np.ndarray]:
    """Times one jitted model call on [batch_size, N, D]; returns the timing and the output."""
    config = model.config
    state = nnx.state(model)
    # Same weights, other compute dtype: only the graph (which holds the config) changes.
    other = dataclasses.replace(config, dtype=dtype)
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: dit.PhraseLDM(other, rngs=nnx.Rngs(0)))
    graphdef = nnx.graphdef(abstract)
    batch = random_batch(batch_size, config, seed=1)
    x = jnp.asarray(batch.pop("latents"))
    conds = {k: jnp.asarray(v) for k, v in batch.items()}
    t = jnp.full((batch_size,), 500, jnp.int32)
    call = jax.jit(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))
    result = {}

    def one_call():
        result["y"] = np.asarray(call(state, x, t, conds))

    return common.time_calls(one_call, runs=runs), result["y"]


def bench_reference_denoise(report: Report, batch_size: int, *, runs: int) -> None:
    """Our DiT backbone and the diffusers reference on the same weights, one denoising step
    each, interleaved (a shared machine's load then weighs on both alike)."""
    from benchmarks import torch_reference

    reference_call, ours_call = torch_reference.make_dit_denoise(batch_size)
    deviation = float(np.max(np.abs(ours_call() - reference_call())))
    times, first = {"ours": [], "torch": []}, {}
    for _ in range(runs):
        for name, call in (("ours", ours_call), ("torch", reference_call)):
            timing = common.time_calls(call, runs=1, warmup=1)
            times[name].append(timing.times_s[0])
            first.setdefault(name, timing.first_s)  # the first round's untimed call
    ours = common.Timing(first["ours"], tuple(times["ours"]))
    theirs = common.Timing(first["torch"], tuple(times["torch"]))
    report.timing(f"denoise_backbone_b{batch_size}", ours, theirs.median_s,
                  max_abs_diff_vs_torch=f"{deviation:.1e}")  # fmt: skip
    report.timing(f"torch_denoise_b{batch_size}", theirs, None,
                  jax_speedup=round(theirs.median_s / ours.median_s, 2))  # fmt: skip


def bench_memory_alone(report: Report, batch_size: int, *, runs: int) -> None:
    """The paper-size remat train step in a fresh process: its time and its own peak RSS."""
    command = [sys.executable, "-m", "benchmarks.train_step_memory", "--remat",
               "--batch", str(batch_size), "--runs", str(runs)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    report.timing(
        f"train_step_b{batch_size}_remat_alone",
        common.Timing(result["first_s"], tuple(result["times_s"])),
        None,
        peak_rss_mib=result["peak_rss_mib"],
        within_8gb=result["peak_rss_mib"] <= 8 * 1024,
    )


def untrained_pipeline(
    ldm_config: dit.PhraseLDMConfig, vae_config: vae.VAEConfig, *, max_len: int = 128
) -> ldm_loading.SamplingPipeline:
    """Randomly initialised LDM and VAE packed like `ldm_loading.load_pipeline`'s result.

    The special latents lie far from every sample (100 along three axes), so no slot counts
    as `[INST]` padding: the decoder gets every track slot, the worst case."""
    mesh = single_device_mesh()
    with nnx.use_eager_sharding(False):
        ldm_model = dit.PhraseLDM(ldm_config, rngs=nnx.Rngs(0))
        vae_model = vae.PhraseVAE(vae_config, rngs=nnx.Rngs(1))
    ldm = ldm_loading.LoadedLDM(
        model=ldm_model,
        config=ml_collections.ConfigDict({"diffusion": DIFFUSION}),
        schedule=schedules.cosine_schedule(DIFFUSION["num_steps"]),
        section_vocab=sections.SectionVocab.build([]),
        step=0,
        used_ema=False,
        workdir="(random init)",
        latents_provenance=None,
        mesh=mesh,
    )
    loaded_vae = vae_loading.LoadedVAE(
        model=vae_model,
        config=ml_collections.ConfigDict({"data": {"max_len": max_len}}),
        config_hash="",
        checkpoint=CheckpointRef(0),
        used_ema=False,
        checkpoint_dir="",
    )
    far = 100.0 * np.eye(3, ldm_config.latent_dim, dtype=np.float32)
    manifest = {
        "slots_per_bar": 4,
        "scale": 1.0,
        "clip": 4.0,
        "special_latents": dict(zip(slot_decoding.SPECIAL_NAMES, far.tolist(), strict=True)),
    }
    return ldm_loading.SamplingPipeline(ldm, loaded_vae, manifest)


def parse_samplers(text: str) -> list[tuple[str, int]]:
    """ "ddim:50,dpm_solver_pp:20" → [("ddim", 50), ("dpm_solver_pp", 20)]."""
    pairs = []
    for item in filter(None, text.split(",")):
        method, _, steps = item.partition(":")
        method = generate.SAMPLER_ALIASES.get(method, method)
        if method not in generate.samplers.METHODS or not steps.isdigit():
            raise ValueError(f"--samplers item {item!r}: use METHOD:STEPS, METHOD one of "
                             f"{generate.samplers.METHODS}")  # fmt: skip
        pairs.append((method, int(steps)))
    return pairs


def longest_phrase_lengths(data_dir: str, qs=(50, 90)) -> dict[int, int]:
    """{q: the q-th percentile over the LDM songs of `data_dir` of the song's longest phrase in
    decoder steps (tokens + `[EOS]`, first 128 bars)}. A greedy decode of a song runs until its
    longest phrase ends, so an untrained decoder run for exactly that many steps does the work a
    trained one does on such a song."""
    from data_pipelines import sources

    longest = [
        max(len(phrase) + 1 for phrase in song["slots"][: 4 * dit.PhraseLDMConfig.max_bars])
        for split in ("train", "valid", "test")
        for song in sources.read_songs(data_dir, split)
    ]
    return {q: int(np.ceil(np.percentile(longest, q))) for q in qs}


def bench_song(
    report: Report,
    pipeline: ldm_loading.SamplingPipeline,
    *,
    label: str,
    bars: int,
    samplers: list[tuple[str, int]],
    ddpm_steps: int,
    runs: int,
    end: str,
    reference: bool,
    baselines: bool = True,
) -> dict[str, list]:
    """One song of `bars` bars per sampler through `generate.generate` decoding the track slots,
    and (`baselines`) DDPM-1000 and the last sampler decoding all slots; returns {decode mode:
    [songs]} (the last run's song of each row)."""
    songs = {}
    num_train = pipeline.ldm.schedule.num_steps
    plans = [(m, n, 1.0) for m, n in samplers]
    runs_plan = [("tracks", plan) for plan in plans]
    if baselines:  # DDPM first (the reference), all slots with the last sampler
        plans = [("ddpm", ddpm_steps, num_train / ddpm_steps)] + plans
        runs_plan = [("tracks", plans[0])] + runs_plan + [("all", plans[-1])]
    with tempfile.TemporaryDirectory() as out_dir:
        for mode, (method, steps, factor) in runs_plan:
            settings = generate.SampleSettings(
                num_songs=1, bars=bars, sampler=method, steps=steps, end=end,
                batch_size=1, decode_slots=mode,
            )  # fmt: skip
            parts, last = [], {}

            def one_song(settings=settings, parts=parts, last=last):
                generated, stats = generate.generate(*pipeline, settings)
                _, written = song_output.write_songs(
                    [g.song for g in generated], out_dir, piano_roll=False
                )
                parts.append(dict(stats["timings"], **written))
                last.update(generated=generated, stats=stats)

            timing = common.time_calls(one_song, runs=runs)
            songs.setdefault(mode, []).append(last["generated"][0].song)
            timed = parts[1:]  # the first call compiles
            median = lambda key, timed=timed: float(np.median([p[key] for p in timed]))
            diffusion = median("diffusion_s") * factor
            rest = median("decode_s") + median("assembly_s") + median("midi_write_s")
            shown_steps = num_train if factor != 1.0 else steps
            name = f"{label}_{method}_{shown_steps}_{mode}"
            extra = dict(
                diffusion_s=round(diffusion, 3),
                decode_s=round(median("decode_s"), 3),
                assembly_s=round(median("assembly_s"), 4),
                midi_write_s=round(median("midi_write_s"), 4),
                end_to_end_s=round(diffusion + rest, 3),
                decoder_rows=last["stats"]["totals"]["decoder_rows"],
                decoded_slots=last["stats"]["totals"]["decoded_phrases"],
                bars=last["stats"]["totals"]["bars"],
            )
            if factor != 1.0:
                extra["extrapolated_from_steps"] = steps
            ref = None
            if reference and method == "ddpm" and shown_steps == num_train:
                ref = ISSUE_REFERENCE_S["song_ddpm_1000_end_to_end"]
                extra["reference_diffusion_s"] = ISSUE_REFERENCE_S["song_ddpm_1000_diffusion"]
            # Wall time per run; DDPM-1000 adds the untimed steps' share of its diffusion.
            walls = tuple(
                wall + (factor - 1.0) * part["diffusion_s"]
                for wall, part in zip(timing.times_s, timed, strict=True)
            )
            extra["meets_target"] = bool(np.median(walls) <= TARGET_SONG_S)
            report.timing(name, common.Timing(timing.first_s, walls), ref, **extra)
    return songs


def same_songs(left: list, right: list) -> int:
    """How many song pairs hold exactly the same bars (notes and programs)."""
    return sum(a.bars == b.bars for a, b in zip(left, right, strict=True))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="", help="append JSON lines to this file")
    parser.add_argument("--reference", action="store_true",
                        help="also time the diffusers DiT step, interleaved")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train_batches", default="8,32")
    parser.add_argument("--remat_batches", default="", help="train steps with model.remat")
    parser.add_argument("--memory_batches", default="", help="remat steps alone, peak memory")
    parser.add_argument("--step_batches", default="1,8")
    parser.add_argument("--bars", type=int, default=128)
    parser.add_argument("--max_len", type=int, default=128, help="VAE tokens per phrase")
    parser.add_argument("--real_lengths_data", default=os.path.join("data", "pop909"),
                        help="prepared data: also time songs whose longest phrase is the p50 / "
                             "p90 of its songs (skipped when missing)")  # fmt: skip
    parser.add_argument("--ddpm_steps", type=int, default=20, help="timed, scaled to 1000")
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    parser.add_argument("--trained_ldm_workdir", default="runs/ldm_lencond_cpu",
                        help="also time a trained run (skipped when missing)")  # fmt: skip
    parser.add_argument("--fid_ldm_workdir", default="", help="PhraseFID of the samplers")
    parser.add_argument("--fid_songs", type=int, default=32)
    parser.add_argument("--fid_bars", type=int, default=64)
    parser.add_argument("--skip", default="", help=f"comma list of: {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.skip.split(","))) - set(PARTS)
    if unknown:
        parser.error(f"--skip {args.skip!r}: unknown parts {sorted(unknown)}; use {PARTS}")
    if not 1 <= args.ddpm_steps <= DIFFUSION["num_steps"]:
        parser.error(f"--ddpm_steps {args.ddpm_steps}: must be in 1..{DIFFUSION['num_steps']}")
    try:
        args.sampler_list = parse_samplers(args.samplers)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(
    argv=None,
    *,
    ldm_config: dit.PhraseLDMConfig | None = None,
    vae_config: vae.VAEConfig | None = None,
) -> list[dict]:
    """Runs the benchmarks, prints them, returns (and with --json appends) the records.

    `ldm_config` / `vae_config` replace the paper models (tests use tiny ones)."""
    args = parse_args(argv)
    ldm_config = ldm_config or dit.paper_config(("length",))
    vae_config = vae_config or vae.VAEConfig()
    skip = set(filter(None, args.skip.split(",")))
    paper = ldm_config == dit.paper_config(("length",)) and vae_config == vae.VAEConfig()
    issue = ISSUE_REFERENCE_S if paper else {}
    pipeline = untrained_pipeline(ldm_config, vae_config, max_len=args.max_len)
    context = common.machine_context(
        parameters=dit.count_parameters(ldm_config)["total"],
        vae_parameters=vae.count_params(pipeline.vae.model),
    )
    print(
        f"PhraseLDM {'paper' if paper else 'custom'} config, {context['parameters']:,} params "
        f"(VAE {context['vae_parameters']:,}), {jax.default_backend()} ({os.cpu_count()} cores), "
        f"random init; CPU {context['cpu_vector_extensions'] or 'unknown'}; median of "
        f"{args.runs} runs; load average " + " ".join(f"{x:.1f}" for x in common.load_average())
    )
    report = Report(context)
    if "train" not in skip:
        remat_config = dataclasses.replace(ldm_config, remat=True)
        for config, suffix, batches in ((ldm_config, "", args.train_batches),
                                        (remat_config, "_remat", args.remat_batches)):  # fmt: skip
            for batch_size in [int(b) for b in batches.split(",") if b]:
                timing = bench_train_step(config, batch_size, runs=args.runs)
                report.timing(
                    f"train_step_b{batch_size}{suffix}", timing,
                    issue.get(f"train_step_b{batch_size}") if not suffix else None,
                    examples_per_s=round(batch_size / timing.median_s, 2),
                    peak_rss_mib_so_far=round(common.peak_rss_mib()),
                )  # fmt: skip
    if "train" not in skip and paper:
        for batch_size in [int(b) for b in args.memory_batches.split(",") if b]:
            bench_memory_alone(report, batch_size, runs=args.runs)
    if "step" not in skip and args.reference:
        bench_reference_denoise(report, 1, runs=max(args.runs, 5))
    if "step" not in skip:
        for batch_size in [int(b) for b in args.step_batches.split(",") if b]:
            timing, y32 = bench_denoise_step(pipeline.ldm.model, batch_size, runs=args.runs)
            report.timing(f"denoise_step_b{batch_size}", timing,
                          issue.get(f"denoise_step_b{batch_size}"))  # fmt: skip
            if batch_size == 1:
                timing, y16 = bench_denoise_step(
                    pipeline.ldm.model, 1, runs=args.runs, dtype="bfloat16"
                )
                deviation = float(np.max(np.abs(y16 - y32)) / max(np.std(y32), 1e-12))
                report.timing("denoise_step_b1_bf16", timing, issue.get("denoise_step_b1"),
                              max_deviation_over_std=round(deviation, 4))  # fmt: skip
    if "song" not in skip:
        bench_song(
            report, pipeline, label="song", bars=args.bars, samplers=args.sampler_list,
            ddpm_steps=args.ddpm_steps, runs=args.runs, end="condition", reference=paper,
        )  # fmt: skip
    if "song" not in skip and os.path.isdir(args.real_lengths_data):
        for q, length in longest_phrase_lengths(args.real_lengths_data).items():
            vae_config = ml_collections.ConfigDict({"data": {"max_len": min(length, args.max_len)}})
            capped = pipeline._replace(vae=dataclasses.replace(pipeline.vae, config=vae_config))
            bench_song(
                report, capped, label=f"song_p{q}_longest_phrase_{length}",
                bars=args.bars, samplers=args.sampler_list, ddpm_steps=args.ddpm_steps,
                runs=args.runs, end="condition", reference=False, baselines=False,
            )  # fmt: skip
    trained = args.trained_ldm_workdir
    if "trained" not in skip and trained and os.path.isdir(os.path.join(trained, "checkpoints")):
        loaded = ldm_loading.load_pipeline(trained, single_device_mesh())
        name = os.path.basename(os.path.normpath(trained))
        songs = bench_song(
            report, loaded, label=name, bars=args.bars, samplers=args.sampler_list,
            ddpm_steps=args.ddpm_steps, runs=args.runs, end="condition", reference=False,
        )  # fmt: skip
        report.value(f"{name}_tracks_vs_all", songs=len(songs["all"]),
                     identical_songs=same_songs(songs["all"], songs["tracks"][-1:]))  # fmt: skip
    if args.fid_ldm_workdir:
        from benchmarks import sampler_fid

        sampler_fid.compare_samplers(
            report, args.fid_ldm_workdir, [("ddpm", DIFFUSION["num_steps"])] + args.sampler_list,
            num_songs=args.fid_songs, bars=args.fid_bars,
        )  # fmt: skip
    report.value("peak_rss", mib=round(common.peak_rss_mib()),
                 load_average=[round(x, 2) for x in common.load_average()])  # fmt: skip
    if args.json:
        common.write_json_lines(args.json, report.records)
        print(f"appended {len(report.records)} records to {args.json}")
    return report.records


if __name__ == "__main__":
    main()
