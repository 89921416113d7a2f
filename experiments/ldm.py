"""PhraseLDM training (SPEC 4-5) on the latents of experiments/extract.py.

    python -m phrase_jax.main --config experiments/ldm.py:uncond --workdir runs/ldm_uncond
    python -m phrase_jax.main --config experiments/ldm.py:lencond --workdir runs/ldm_lencond
    python -m phrase_jax.main --config experiments/ldm.py:seccond --workdir runs/ldm_seccond
    python -m phrase_jax.main --config experiments/ldm.py:lencond,cpu --workdir runs/ldm_lencond_cpu
    make train-ldm VARIANT=lencond,cpu

Variants (comma-separated):
- condition: `uncond` (default), `lencond` (10-bar length bucket, ref), `seccond` (section
  string through the section encoder); `bars` adds the exact bar count (1..128) to either;
- scale: (none) the paper model (29.5 M, batch 128, AdamW lr 5e-4, wd 0.01, clip 0.5, 200k
  steps, fp32, seed 42); `cpu` a small model that learns something on 2 CPU cores in about
  5 minutes; `runlocal` a tiny model and 4 steps for CI, on the runlocal VAE's 8-d latents.
Options: `diffusion.prediction=v` (v-prediction), `model.time_scale=1.0` (ref's raw integer
steps in the Fourier features), `ema_decay=0` (no EMA), `compute_dtype=bfloat16`,
`model.remat=True` (activation rematerialisation: paper batch sizes in less memory).
"""

from __future__ import annotations

import ml_collections

from experiments import training_defaults, variants
from phrase_jax import run_names

# Each condition variant -> the model's conditions.
CONDITION_VARIANTS = {"uncond": (), "lencond": ("length",), "seccond": ("sections",)}
VARIANT_GROUPS = variants.LDM_GROUPS
VARIANT_DEFAULTS = variants.LDM_DEFAULTS
VARIANTS = run_names.variant_words(VARIANT_GROUPS)
RUN_KIND = "ldm"  # runs/ldm_<condition>[_bars][_<scale>]


def get_config(arg=None):
    chosen = run_names.parse_variants(
        arg, VARIANT_GROUPS, defaults=VARIANT_DEFAULTS, source="experiments/ldm.py"
    )
    conditions = CONDITION_VARIANTS[chosen.pick(variants.CONDITIONS)]
    if "bars" in chosen:
        conditions += ("bars",)
    sections = "sections" in conditions
    scales = chosen.only(variants.SCALES)

    config = ml_collections.ConfigDict()
    config.stage = "train_ldm"
    config.seed = 42
    # The latents of the VAE at the same scale (runs/latents[_<scale>], experiments/extract.py).
    config.latents = ml_collections.ConfigDict(dict(dir=run_names.run_dir("latents", scales)))
    config.data = ml_collections.ConfigDict(dict(num_workers=0))
    # PhraseLDMConfig fields (phrase_jax/models/dit.py); defaults = the paper model.
    config.model = ml_collections.ConfigDict(
        dict(
            n_slots=512,
            latent_dim=64,
            width=512,
            num_layers=6,
            num_heads=16,
            head_dim=32,
            num_kv_heads=8,
            ff_dim=2048,
            rope_dim=16,
            rope_theta=10000.0,
            time_features=128,
            time_scale=1e-3,  # t/1000; 1.0 = ref's raw integer steps
            cond_dim=128,
            # Sections widen the cross-attention input to 256 (dit.paper_config explains).
            memory_dim=256 if sections else 128,
            norm_eps=1e-5,
            conditions=conditions,
            condition_dropout=0.1,  # classifier-free guidance
            length_buckets=128,
            max_bars=128,
            section_vocab_size=128,
            section_embed_dim=128,
            section_layers=3,
            section_heads=8,
            section_ff_dim=1024,
            section_dropout=0.1,
            max_sections=30,
            dtype="float32",
            remat=False,  # True: recompute activations in the backward pass (less memory)
        )
    )
    config.diffusion = ml_collections.ConfigDict(dict(num_steps=1000, prediction="epsilon"))

    training_defaults.add_training_defaults(
        config, total_steps=200_000, optimizer="adamw", learning_rate=5e-4, weight_decay=0.01,
        grad_clip_norm=0.5, ema_decay=0.9999, checkpoint_every=5000,
    )  # fmt: skip
    # Valid loss on fixed batches (songs, t, noise) of a seeded endless shuffle.
    config.eval = ml_collections.ConfigDict(
        dict(every_steps=5000, split="valid", batch_size=32, batches=8)
    )

    if "cpu" in scales:
        config.model.update(
            width=64,
            num_layers=2,
            num_heads=4,
            head_dim=16,
            num_kv_heads=2,
            ff_dim=128,
            rope_dim=8,
            time_features=32,
            cond_dim=32,
            memory_dim=64 if sections else 32,
            section_embed_dim=32,
            section_layers=1,
            section_heads=4,
            section_ff_dim=128,
        )
        config.batch_size = 16
        config.total_steps = 600
        config.ema_decay = 0.99
        config.optim.update(
            learning_rate=1e-3, schedule="cosine", warmup_steps=50, end_learning_rate=1e-4
        )
        config.log_every_steps = 50
        config.checkpoint.every_steps = 200
        config.eval.update(every_steps=200, batch_size=16, batches=4)
    elif "runlocal" in scales:
        config.model.update(
            latent_dim=8,
            width=32,
            num_layers=1,
            num_heads=2,
            head_dim=16,
            num_kv_heads=1,
            ff_dim=32,
            rope_dim=8,
            time_features=16,
            cond_dim=16,
            memory_dim=32 if sections else 16,
            section_embed_dim=16,
            section_layers=1,
            section_heads=2,
            section_ff_dim=32,
        )
        config.batch_size = 8
        config.total_steps = 4
        config.ema_decay = 0.9
        config.log_every_steps = 2
        config.checkpoint.every_steps = 2
        config.eval.update(every_steps=4, batch_size=8, batches=1)
    return config
