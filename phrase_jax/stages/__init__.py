"""Pipeline stages: each module exposes `run(config, workdir)` (dispatched by phrase_jax.main)."""
