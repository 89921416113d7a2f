"""PhraseVAE stage 2: the multi-query autoencoder on phrases, from stage 1 (SPEC 2).

    python -m phrase_jax.main --config experiments/vae_ae.py --workdir runs/vae_ae
    python -m phrase_jax.main --config experiments/vae_ae.py:cpu --workdir runs/vae_ae_cpu
    python -m phrase_jax.main --config experiments/vae_ae.py:runlocal,init_from=W1 \
        --workdir /tmp/vae_ae

The decoder cross-attends only to the encoder's final states at the four [C0]..[C3] query
positions. Adam lr 1e-4, batch 128 (ref); every parameter starts from `init_from` (the stage-1
workdir). The `best/` checkpoint is the one with the highest valid F1opd: stage 3 starts from it.
"""

from experiments import vae_common

VARIANT_GROUPS = vae_common.VARIANT_GROUPS
VARIANTS = vae_common.VARIANTS
RUN_KIND = "vae_ae"  # runs/vae_ae[_<scale>]


def get_config(arg=None):
    return vae_common.base_config("vae_ae", "autoencoder", arg)
