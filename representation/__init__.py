"""Feature maps learnt from the unlabelled pool (no labels), on which the Bayesian models are trained."""

from representation.spectral import SpectralConfig, SpectralEmbedding, nearest_neighbors

__all__ = ["SpectralConfig", "SpectralEmbedding", "nearest_neighbors"]
