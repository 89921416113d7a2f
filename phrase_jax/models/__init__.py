"""Flax NNX models: shared layers, the T5 stacks, PhraseVAE (+ cached decoding, PyTorch import)."""
