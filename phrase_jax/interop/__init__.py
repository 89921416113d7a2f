"""PyTorch interop: reference checkpoints → our NNX models. `vae_from_torch` reads the official
PhraseVAE (transformers T5 + bottleneck) state dict, `ldm_from_diffusers` a diffusers
`StableAudioDiTModel` one, and `official` turns the released Hub folders into a bundle. Torch
itself is never imported here (tensors or numpy arrays are accepted; files are read with the
safetensors numpy API). Models never import this package; it imports the models."""
