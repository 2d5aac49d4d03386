"""Hierarchical-VAE image compression and editing on top of diffusers autoencoders."""

from hvae.autoencoder import FeatureAutoencoder, load_autoencoder
from hvae.errors import HVAEError
from hvae.model import HierarchicalVAE, HVAECodes
from hvae.patch_autoencoder import PatchAutoencoder

__version__ = "0.1.0"
__all__ = [
    "FeatureAutoencoder",
    "HVAECodes",
    "HVAEError",
    "HierarchicalVAE",
    "PatchAutoencoder",
    "load_autoencoder",
]
