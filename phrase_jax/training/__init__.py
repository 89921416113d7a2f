"""Training infrastructure: mesh and sharding rules, optimizer, train/eval steps, orbax
checkpoints, metrics. Model-agnostic: used unchanged by the VAE and the diffusion transformer."""
