"""PhraseVAE stage 3: the 64-d VAE on phrases, from stage 2 (SPEC 2).

    python -m phrase_jax.main --config experiments/vae.py --workdir runs/vae
    python -m phrase_jax.main --config experiments/vae.py:cpu --workdir runs/vae_cpu
    python -m phrase_jax.main --config experiments/vae.py:mode=eval --workdir runs/vae

The bottleneck (LayerNorm(2048), Dense 2048->128 mean/log-variance, Dense 64->2048) is new;
everything else starts from `init_from` (the stage-2 workdir, its `best/` checkpoint when
present). Loss = token-mean cross-entropy + 0.01 KL. AdamW lr 1e-4, weight decay 1e-3,
batch 128 (ref).
"""

from experiments import vae_common

VARIANT_GROUPS = vae_common.VARIANT_GROUPS
VARIANTS = vae_common.VARIANTS
RUN_KIND = "vae"  # runs/vae[_<scale>]


def get_config(arg=None):
    config = vae_common.base_config("vae", "vae", arg)
    config.optim.name = "adamw"
    config.optim.weight_decay = 1e-3
    return config
