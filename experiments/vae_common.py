"""Shared defaults of the three PhraseVAE stages (SPEC 2); each stage file picks its mode.

    base_config(stage, model_mode, arg) -> ConfigDict for stage `train_vae`

Variants (`arg`, comma-separated):
- (none)    paper scale: the 14.29 M model, batch 128, lr 1e-4, fp32, 100k steps a stage;
- `cpu`     a small model that learns something real on a 2-core CPU in about 15 minutes for all
            three stages together (`make train-vae VARIANT=cpu`: 821 s on 2 shared cores;
            valid F1op 0.41 / F1opd 0.25 after stage 2, 0.37 / 0.22 after stage 3);
- `runlocal` a tiny model and a few steps, for CI and smoke tests.
Top-level `mode` is the run mode (`train` | `eval`); `model.mode` is the architecture
(`span_infill` | `autoencoder` | `vae`), so `:mode=eval` is unambiguous.
"""

from __future__ import annotations

import os

import ml_collections

from experiments import training_defaults, variants
from phrase_jax import run_names

VARIANT_GROUPS = (variants.SCALES,)
VARIANTS = run_names.variant_words(VARIANT_GROUPS)
# Stage name (= its run kind: runs/vae_ae_cpu) -> the stage it starts from.
STAGE_ORDER = {"vae_pretrain": "", "vae_ae": "vae_pretrain", "vae": "vae_ae"}
DEFAULT_DATA_DIR = os.path.join("data", "pop909")  # `make data`'s output; the Makefile passes it
# Padded lengths of the training batches (data.length_buckets), cut at data.max_len. Chosen on
# the POP909 train split: under 25% of the computed positions are padding (docs/results.md).
PHRASE_BUCKETS = (8, 16, 24, 32, 48, 64, 96, 128)
BAR_BUCKETS = (32, 48, 64, 80, 96, 128)


def base_config(stage: str, model_mode: str, arg: str | None) -> ml_collections.ConfigDict:
    """The full train_vae config of `stage` (a key of STAGE_ORDER) at the scale `arg` names."""
    chosen = run_names.parse_variants(arg, VARIANT_GROUPS, source=f"experiments/{stage}.py")
    previous = STAGE_ORDER[stage]
    config = ml_collections.ConfigDict()
    config.stage = "train_vae"
    config.mode = "train"  # train | eval (eval: evaluate a checkpoint, write eval_metrics.json)
    config.seed = 42
    # A previous stage's workdir: its parameters initialise this run when this workdir is new.
    config.init_from = run_names.run_dir(previous, chosen.words) if previous else ""

    config.model = ml_collections.ConfigDict(
        dict(
            mode=model_mode,
            d_model=512,
            num_heads=6,
            head_dim=64,
            d_ff=1024,
            num_encoder_layers=3,
            num_decoder_layers=3,
            relative_buckets=32,
            relative_max_distance=128,
            dropout_rate=0.1,
            num_queries=4,
            latent_dim=64,
            dtype="float32",
            param_dtype="float32",
        )
    )
    config.kl_weight = 0.01  # only the vae mode has a KL term

    config.data = ml_collections.ConfigDict(
        dict(
            dir=DEFAULT_DATA_DIR,
            max_len=128,
            num_workers=0,  # Grain prefetch processes; 0 reads in the training process
            mask_ratio=0.3,  # span infill (stage 1) only
            mean_span=3.0,
            # Training batches by length (data_pipelines/length_buckets.py): padding every
            # phrase to max_len made 86% of the computed positions padding at 128 (73% at 64;
            # the median phrase other than the one-token ones is 22 tokens); these buckets
            # leave 18% (16% at 64). Each bucket length gets tokens_per_batch // length rows
            # (the positions of batch_size x max_len); one compiled train step per bucket.
            # () pads every row to max_len with batch_size rows. Evaluation always pads.
            length_buckets=PHRASE_BUCKETS if model_mode != "span_infill" else BAR_BUCKETS,
            tokens_per_batch=128 * 128,
            # One-token phrases ([INST], b-1, [SEP]) are 45% of the POP909 phrases but only
            # three distinct sequences: train on them as 5% of each epoch's phrases (1 keeps
            # them all); every evaluation still holds them at their corpus share.
            special_phrase_rate=0.05,
        )
    )

    training_defaults.add_training_defaults(
        config, total_steps=100_000, optimizer="adam", learning_rate=1e-4, checkpoint_every=2500
    )

    config.eval = ml_collections.ConfigDict(
        dict(
            every_steps=2500,
            split="valid",
            batch_size=128,  # global
            loss_batches=16,  # valid batches for the eval loss (0 = the whole split)
            phrases=1024,  # valid phrases greedily decoded for F1 (phrase modes only)
            # The metric that picks the `best/` checkpoint: f1_opd (higher is better) for the
            # phrase stages, the valid loss for span infill, which has no latent to decode.
            best_metric="loss" if model_mode == "span_infill" else "f1_opd",
            checkpoint="latest",  # mode=eval reads `latest` or `best`
        )
    )

    if "cpu" in chosen:
        # 2+2 layers of width 128 (0.79 M parameters). Most of the budget goes to the autoencoder
        # stage, which learns the phrase compression; span infill only warms the stacks up.
        # No dropout: a run sees a tenth of an epoch, too little to overfit, and learns faster.
        config.model.update(
            d_model=128, num_heads=4, head_dim=32, d_ff=256, num_encoder_layers=2,
            num_decoder_layers=2, relative_max_distance=64, dropout_rate=0.0,
        )  # fmt: skip
        # Phrases: p99 65 tokens in POP909, so 64 positions cut about 1%; bars: p90 88.
        config.data.max_len = 96 if model_mode == "span_infill" else 64
        config.data.length_buckets = tuple(
            n for n in config.data.length_buckets if n <= config.data.max_len
        )
        config.batch_size = 32
        config.data.tokens_per_batch = config.batch_size * config.data.max_len
        config.total_steps = {"span_infill": 200, "autoencoder": 1000, "vae": 500}[model_mode]
        config.optim.update(
            learning_rate=1e-3, warmup_steps=50, schedule="cosine", end_learning_rate=1e-4
        )
        config.log_every_steps = 50
        config.checkpoint.every_steps = 250
        config.eval.update(every_steps=250, batch_size=64, loss_batches=8, phrases=512)
    elif "runlocal" in chosen:
        config.model.update(
            d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1,
            num_decoder_layers=1, relative_buckets=8, relative_max_distance=32, latent_dim=8,
        )  # fmt: skip
        config.data.max_len = 32
        config.data.length_buckets = ()  # the tiny test corpora: fixed padding
        config.batch_size = 8
        config.total_steps = 4
        config.log_every_steps = 2
        config.checkpoint.every_steps = 2
        config.eval.update(every_steps=4, batch_size=8, loss_batches=1, phrases=8)
    return config
