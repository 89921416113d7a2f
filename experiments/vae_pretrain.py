"""PhraseVAE stage 1: span-infill pretraining on whole bars, no bottleneck (SPEC 2).

    python -m phrase_jax.main --config experiments/vae_pretrain.py --workdir runs/vae_pretrain
    python -m phrase_jax.main --config experiments/vae_pretrain.py:cpu \
        --workdir runs/vae_pretrain_cpu
    python -m phrase_jax.main --config experiments/vae_pretrain.py:runlocal,data.dir=D \
        --workdir /tmp/vae_pretrain

The decoder cross-attends to the whole encoder sequence of a bar with about 30% of its tokens
replaced by [MASK] spans (Poisson(3) lengths) and rebuilds the clean bar. Adam lr 1e-4,
batch 128 (ref). Add `mode=eval` to evaluate the latest checkpoint.
"""

from experiments import vae_common

VARIANT_GROUPS = vae_common.VARIANT_GROUPS
VARIANTS = vae_common.VARIANTS
RUN_KIND = "vae_pretrain"  # runs/vae_pretrain[_<scale>]


def get_config(arg=None):
    return vae_common.base_config("vae_pretrain", "span_infill", arg)
