"""Flax NNX models: shared layers, the T5 stacks, PhraseVAE (+ cached decoding), the PhraseLDM
DiT and its condition encoders. PyTorch import lives in `phrase_jax.interop`."""
