"""phrase_jax: PhraseVAE + PhraseLDM for full-song multitrack symbolic music, in JAX/Flax NNX.

model = phrase_jax.load_pretrained("path/to/bundle")   # see phrase_jax/inference/pretrained.py
"""

__version__ = "0.1.0"
__all__ = ["load_pretrained"]


def __getattr__(name: str):
    # Lazy, so that `import phrase_jax.music` (data workers, the tokenizer) does not load JAX.
    if name == "load_pretrained":
        from phrase_jax.inference.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'phrase_jax' has no attribute {name!r}")
