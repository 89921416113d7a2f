"""The pipeline steps, one module each, every one `run(config, workdir)` (dispatched by
`phrase_jax.main` on `config.stage`): prepare, train_vae, extract_latents, train_ldm, sample,
evaluate. What several stages share lives in library packages: artifacts/ (run folders),
inference/ (params-only loaders), generation/, evaluation/, training/."""
