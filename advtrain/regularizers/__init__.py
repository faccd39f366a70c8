"""Regularizers of the outer minimisation: ``weight * penalty(model, batch, outputs)``."""
