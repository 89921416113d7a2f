"""The end-to-end training demo (`make demo-train`): every stage at a size that runs in about
15 minutes on an idle 2-core CPU, all outputs in one folder. Read by `phrase_jax.demo`, not by
phrase_jax.main.

    make demo-train                                     # outputs/demo_train, Bach chorales
    make demo-train DEMO_DATASET=pop909 POP909_DIR=/path/to/pop909
    python -m phrase_jax.demo --out outputs/demo_train
    python -m phrase_jax.demo --out /tmp/demo --settings runlocal,songs=12

Variants (comma-separated): a dataset, `chorales` (default; the Bach chorales shipped inside
music21, 5 slots per bar = four voices + b-1) or `pop909` (4 slots per bar); and `runlocal`
(tiny models, a few steps, a dozen songs: CI and smoke tests).

Each stage's config is its own experiment file at the variant `stage_variants` names (the `cpu`
scale, or `runlocal`), then the values under the stage's key here (`vae_pretrain`, `vae_ae`,
`vae`, `extract`, `ldm`, `sample`, `evaluate`, each a subset of that experiment's keys), then
the paths the orchestrator fills in (data dirs, workdirs, `init_from`, the LDM's slot count).
Override any of them like any experiment key: `--settings ldm.total_steps=3000` (a re-run
resumes from the finished steps). Settings that change a model's shape (sizes, `max_bars`,
`condition`) need a fresh output folder: the training stages refuse another model's checkpoints.
"""

from __future__ import annotations

import ml_collections

from phrase_jax import run_names

DATASETS = ("chorales", "pop909")
VARIANT_GROUPS = (DATASETS, ("runlocal",))
VARIANTS = run_names.variant_words(VARIANT_GROUPS)

# Dataset facts the stages need: the LDM's bar budget (songs longer than `max_bars` stay out
# of the LDM corpus), the length generated songs are asked for, the melody track that the
# memorisation metric compares (chorales: the soprano, program 40; POP909: MELODY, 13), and
# the VAE's token budgets (phrase and bar p99 + the batch's extra tokens: chorale phrases are
# short, p99 25 tokens, bars p99 83).
DATASET_FACTS = {
    "chorales": dict(max_bars=32, sample_bars=16, melody_program=40, phrase_len=40, bar_len=96),
    "pop909": dict(max_bars=128, sample_bars=64, melody_program=13, phrase_len=64, bar_len=96),
}


def _stage(**values) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(values)


def get_config(arg=None):
    chosen = run_names.parse_variants(
        arg, VARIANT_GROUPS, defaults=("chorales",), source="experiments/demo.py"
    )
    dataset = chosen.pick(DATASETS)
    runlocal = "runlocal" in chosen
    facts = DATASET_FACTS[dataset]

    config = ml_collections.ConfigDict()
    config.dataset = dataset
    config.pop909_dir = ""  # "" = $POP909_DIR (read by the demo's entry, not here)
    config.songs = 0  # the first N songs by name (0 = all)
    config.workers = 0  # prepare's worker processes (0 = all cores)
    config.max_bars = facts["max_bars"]  # LDM slots = max_bars * slots_per_bar
    config.stage_variants = "runlocal" if runlocal else "cpu"
    # The LDM's condition variants (experiments/ldm.py): the 10-bar length bucket (ref) and the
    # exact bar count, so songs end at the requested length ("end: condition") instead of at
    # the first slot that looks like [SEP], which a briefly trained LDM places far too early.
    config.condition = "lencond,bars"

    eval_once = dict(every_steps=10**9)  # one validation, at the last step (train_vae forces it)
    config.vae_pretrain = _stage(
        total_steps=150,
        data=_stage(max_len=facts["bar_len"]),
        checkpoint=_stage(every_steps=150),
        eval=_stage(**eval_once, loss_batches=4),
    )
    config.vae_ae = _stage(
        total_steps=700,
        data=_stage(max_len=facts["phrase_len"]),
        checkpoint=_stage(every_steps=350),
        eval=_stage(**eval_once, loss_batches=4, phrases=256),
    )
    config.vae = _stage(
        total_steps=350,
        data=_stage(max_len=facts["phrase_len"]),
        checkpoint=_stage(every_steps=350),
        eval=_stage(**eval_once, loss_batches=4, phrases=256),
    )
    config.extract = _stage(batch_size=512)
    # The LDM is where steps pay off most: 2000 steps halve the decoded slots that disagree
    # with their position compared with 800 (19% -> 9% on the chorales).
    config.ldm = _stage(
        total_steps=2000,
        batch_size=16,
        checkpoint=_stage(every_steps=500),
        eval=_stage(every_steps=1000, batches=2),
    )
    sampling = dict(sampler="dpm_solver_pp", steps=25, bars=facts["sample_bars"])
    config.sample = _stage(num_songs=8, batch_size=8, decode_chunk=512, **sampling)
    config.evaluate = _stage(
        num_songs=8,
        batch_size=8,
        decode_chunk=512,
        reference_songs=100,
        melody_program=facts["melody_program"],
        plot_songs=2,
        **sampling,
    )

    if runlocal:
        # The runlocal stage variants are already tiny; keep their sizes, fewer songs.
        config.songs = 12
        config.workers = 1  # a dozen songs: worker start-up would cost more than it saves
        config.vae_pretrain = _stage(total_steps=2, checkpoint=_stage(every_steps=2))
        config.vae_ae = _stage(total_steps=2, checkpoint=_stage(every_steps=2))
        config.vae = _stage(total_steps=2, checkpoint=_stage(every_steps=2))
        config.extract = _stage(batch_size=64)
        config.ldm = _stage(total_steps=2, checkpoint=_stage(every_steps=2),
                            eval=_stage(every_steps=2))  # fmt: skip
        sampling = dict(sampler="ddim", steps=2, bars=4)
        config.sample = _stage(num_songs=2, batch_size=2, decode_chunk=64, **sampling)
        config.evaluate = _stage(
            num_songs=2,
            batch_size=2,
            decode_chunk=64,
            reference_songs=4,
            melody_program=facts["melody_program"],
            plot_songs=1,
            **sampling,
        )
    return config
