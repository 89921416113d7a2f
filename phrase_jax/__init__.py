"""phrase_jax: PhraseVAE + PhraseLDM for full-song multitrack symbolic music, in JAX/Flax NNX."""

__version__ = "0.1.0"
