"""Trained models loaded for inference: parameters only (the EMA's when the run kept one),
never the optimizer, and no trainer import."""
