"""Flax NNX models: one set of layers (`layers`, `attention`, `relative_position`), the T5
stacks, PhraseVAE (+ cached decoding), the PhraseLDM DiT and its condition encoders. PyTorch
import lives in `phrase_jax.interop`."""
