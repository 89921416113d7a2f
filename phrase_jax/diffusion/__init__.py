"""Diffusion for PhraseLDM: cosine DDPM schedule, training loss, samplers (SPEC 5)."""
