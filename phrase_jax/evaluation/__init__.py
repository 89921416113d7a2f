"""Evaluation: reconstruction metrics of the PhraseVAE (and, later, generation metrics)."""
