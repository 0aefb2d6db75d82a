"""Memorization and quality metrics for diffusion models, torchmetrics-style, with offline feature spaces."""
