"""The prepared GPU run (`make gpu-run`): the paper-size PhraseVAE (three stages) and the
paper-size `lencond` PhraseLDM trained on POP909 with short schedules in about 9 minutes of one
H100/H200, then sampled and evaluated, plus paper-size step timings (fp32 vs bf16, attention
implementations), all in one folder of at most 60 MB. Read by `benchmarks/gpu_run.py`, not by
phrase_jax.main.

    make gpu-run                                   # outputs/gpu_run, data/pop909 (make data)
    python -m benchmarks.gpu_run --out outputs/gpu_run
    python -m benchmarks.gpu_run --out /tmp/gpu_run \
        --settings chorales,runlocal,data_dir=data/chorales      # a CPU smoke run

Variants (comma-separated): a dataset, `pop909` (default) or `chorales`; `runlocal` (the
stages' tiny runlocal models, a few steps, generous time: CPU tests).

Each stage's config is its experiment file at `stage_variants` ("": the paper scale, each
file's defaults), then the values under the stage's key here (the keys of experiments/demo.py:
`vae_pretrain`, `vae_ae`, `vae`, `extract`, `ldm`, `sample`, `evaluate`), then this run's paths.
On top of them the run plans time (benchmarks/gpu_run.py):
- `total_budget_s` is the whole run's wall clock; `budget_s.<phase>` each phase's share. A
  training phase gets `time_limit_s` = what is left of the total minus the shares of the phases
  after it (at most `max_stretch` times its own share): the trainer stops and checkpoints when
  it is up, so the later phases always run, and time an earlier phase did not use goes on.
- `calibrate`: the timing phase measures the bf16 train step of the very models the run trains
  (same batch and length); each training phase's `total_steps` (its cosine schedule) becomes
  what fits its time limit: (limit - compile - `setup_s`) * `efficiency` / step time, between
  `min_steps` and `max_scale` x the planned `total_steps` below (the plan when no timing).
- The planned steps assume an H100 (docs/results.md, "GPU run", derives them from FLOPs).

Precision: bf16 compute with fp32 master weights (`model.dtype=bfloat16`, parameters, Adam
moments and the EMA float32; norms, softmax and logits accumulate in float32, the VAE's
bottleneck runs in float32).
"""

from __future__ import annotations

import ml_collections

from experiments import demo as demo_experiment
from phrase_jax import run_names

DATASETS = demo_experiment.DATASETS
VARIANT_GROUPS = (DATASETS, ("runlocal",))
VARIANTS = tuple(word for group in VARIANT_GROUPS for word in group)
# Phases in run order; the stage phases are phrase_jax/demo.py's PHASES (their keys here).
PHASES = (
    "data",
    "timings",
    "vae_pretrain",
    "vae_ae",
    "vae",
    "extract",
    "ldm",
    "sample",
    "evaluate",
    "export",
)


def _stage(**values) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(values)


def _vae_stage(total_steps: int, max_len: int, *, phrases: int) -> ml_collections.ConfigDict:
    """A paper-size VAE stage on a short schedule: batch 512 (4x the paper's), bf16 compute,
    a warmed-up cosine lr with a clip (the paper's constant 1e-4 is for 100k steps)."""
    return _stage(
        total_steps=total_steps,
        time_limit_s=0.0,  # set by the run's time plan
        batch_size=512,
        log_every_steps=100,
        model=_stage(dtype="bfloat16", param_dtype="float32"),
        # Grain reads in the training process (num_workers 0, safe on any machine); where the
        # host cannot feed the GPU (stopped_by_time, steps/s below the timed step), try 4-8.
        data=_stage(max_len=max_len, num_workers=0),
        optim=_stage(
            learning_rate=3e-4,
            warmup_steps=100,
            schedule="cosine",
            end_learning_rate=3e-5,
            grad_clip_norm=1.0,
        ),
        # One checkpoint kept (every 1000 steps, and always at the last step).
        checkpoint=_stage(every_steps=1000, max_to_keep=1),
        # One validation, at the last step; F1 on `phrases` greedily decoded valid phrases.
        eval=_stage(every_steps=10**9, batch_size=512, loss_batches=8, phrases=phrases),
    )


def get_config(arg=None):
    chosen = run_names.parse_variants(
        arg, VARIANT_GROUPS, defaults=("pop909",), source="experiments/gpu_run.py"
    )
    dataset = chosen.pick(DATASETS)
    facts = demo_experiment.DATASET_FACTS[dataset]

    config = ml_collections.ConfigDict()
    config.dataset = dataset
    # Prepared data, reused read-only when it holds manifest.json, else prepared there (outside
    # the output folder: its shards would not fit the size limit). "" = <out>/data/<dataset>.
    config.data_dir = f"data/{dataset}"
    config.pop909_dir = ""  # "" = $POP909_DIR (read by the run's entry, not here)
    config.songs = 0  # the first N songs by name when preparing (0 = all)
    config.workers = 0  # prepare's worker processes (0 = all cores)
    config.max_bars = facts["max_bars"]  # LDM slots = max_bars * slots_per_bar
    config.stage_variants = ""  # "": the paper-size models of every experiment file
    config.condition = "lencond"  # the paper's length-conditioned PhraseLDM (10-bar buckets)

    # 9 minutes are 540 s; 30 s stay outside the plan for start-up (imports, CUDA) and for what
    # a phase runs past its limit (a training phase's last checkpoint and evaluation).
    config.total_budget_s = 510.0
    # Each phase's share (seconds); they sum to 485 s: a training phase may use the rest (and
    # what earlier phases left) up to `max_stretch` x its share.
    config.budget_s = _stage(
        data=20.0,  # 0 when `make data` already ran; else about 10-20 s on 16 cores
        timings=80.0,  # four paper-size train-step compiles (bf16 first) + attention
        vae_pretrain=35.0,
        vae_ae=95.0,
        vae=55.0,
        extract=20.0,
        ldm=115.0,
        sample=20.0,
        evaluate=40.0,
        export=5.0,
    )
    config.max_stretch = 1.5  # a training phase may use up to 1.5x its share of unused time
    config.min_time_limit_s = 15.0  # never less than this for a training phase
    # setup_s: the loader, the model and its warm start, the last checkpoint and evaluation
    # (a VAE stage decodes `eval.phrases` greedily: one more compile).
    config.calibrate = _stage(
        enabled=True, efficiency=0.8, setup_s=15.0, min_steps=50, max_scale=4.0
    )
    config.timings = _stage(
        runs=3,  # timed calls per measurement (after one warm-up call)
        fp32=True,  # also time the fp32 steps (the bf16 ones calibrate the schedules)
        attention=True,  # DiT self-attention: ours vs jax.nn.dot_product_attention xla / cudnn
    )
    config.max_output_mb = 60.0
    # Training checkpoints, latents and a bundle are far larger than the folder may be (the
    # paper models' fp32 weights alone are 175 MB): they are deleted at the end unless kept.
    config.keep_weights = False
    config.export = True  # a bundle in <out>/bundle when it fits max_output_mb (tiny models)

    # Planned steps on an H100 (bf16): stage 2 learns the compression, so it gets the most.
    config.vae_pretrain = _vae_stage(600, facts["bar_len"], phrases=256)  # (no F1: no latent)
    config.vae_ae = _vae_stage(4000, facts["phrase_len"], phrases=2048)
    config.vae = _vae_stage(1500, facts["phrase_len"], phrases=2048)
    config.extract = _stage(batch_size=4096)
    config.ldm = _stage(
        total_steps=1000,
        time_limit_s=0.0,
        batch_size=128,  # the paper's batch: 715 training songs, 5.6 steps an epoch
        log_every_steps=100,
        model=_stage(dtype="bfloat16"),
        data=_stage(num_workers=0),
        optim=_stage(
            learning_rate=5e-4, warmup_steps=200, schedule="cosine", end_learning_rate=5e-5
        ),
        # 0.9999 (the paper's, for 200k steps) would leave the EMA mostly at its random start
        # after 1000 steps (0.9999^1000 = 0.90); 0.995 forgets it within them (0.007).
        ema_decay=0.995,
        checkpoint=_stage(every_steps=1000, max_to_keep=1),
        eval=_stage(every_steps=10**9, batch_size=64, batches=4),
    )
    # Same batch and chunk in both phases: the evaluation reuses the sampling's compiled code.
    sampling = dict(
        sampler="dpm_solver_pp_sde",
        steps=20,
        bars=facts["sample_bars"],
        batch_size=10,
        decode_chunk=2560,
    )
    config.sample = _stage(num_songs=10, **sampling)
    config.evaluate = _stage(
        num_songs=20,  # the reference protocol's count
        reference_songs=100,
        # Melody memorisation costs 1.5 ms per (song, training melody) pair on one core: the
        # 83 real and 20 generated songs against all 715 training melodies would take 110 s.
        # 100 training melodies (15 s) keep it inside the phase's share; MR is then a lower
        # bound of the protocol's (a copy of one of the other 615 melodies goes unseen).
        memorisation_train_songs=100,
        melody_program=facts["melody_program"],
        plot_songs=3,
        **sampling,
    )

    if "runlocal" in chosen:
        # The stages' runlocal models, a few steps; budgets far above what they need, so only a
        # test that lowers one sees a time limit bite.
        config.stage_variants = "runlocal"
        config.songs = 12
        config.workers = 1
        config.total_budget_s = 1800.0
        config.budget_s.update(
            timings=240.0, vae_pretrain=120.0, vae_ae=120.0, vae=120.0, ldm=120.0, evaluate=120.0
        )
        config.calibrate.update(min_steps=2, max_scale=2.0)
        config.timings.runs = 1
        for name in ("vae_pretrain", "vae_ae", "vae"):
            config[name] = _stage(
                total_steps=2,
                time_limit_s=0.0,
                batch_size=8,
                model=_stage(dtype="bfloat16", param_dtype="float32"),
                checkpoint=_stage(every_steps=2, max_to_keep=1),
                eval=_stage(every_steps=10**9, batch_size=8, loss_batches=1, phrases=8),
            )
        config.extract = _stage(batch_size=64)
        config.ldm = _stage(
            total_steps=2,
            time_limit_s=0.0,
            batch_size=8,
            model=_stage(dtype="bfloat16"),
            checkpoint=_stage(every_steps=2, max_to_keep=1),
            eval=_stage(every_steps=10**9),
        )
        sampling = dict(sampler="ddim", steps=2, bars=4, batch_size=2, decode_chunk=64)
        config.sample = _stage(num_songs=2, **sampling)
        config.evaluate = _stage(
            num_songs=2,
            reference_songs=4,
            melody_program=facts["melody_program"],
            plot_songs=1,
            **sampling,
        )
    return config
