"""Hierarchical-VAE image compression and editing on top of diffusers autoencoders."""

from importlib import import_module

from hvae.errors import HVAEError

__version__ = "0.1.0"

# The model classes import torch and diffusers (seconds); they load on first use, so that
# ``import hvae.<anything>`` (and with it ``hvae --help``) stays fast.
_LAZY = {
    "FeatureAutoencoder": "hvae.autoencoder",
    "load_autoencoder": "hvae.autoencoder",
    "HierarchicalVAE": "hvae.model",
    "HVAECodes": "hvae.model",
    "PatchAutoencoder": "hvae.patch_autoencoder",
}
__all__ = ["HVAEError", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'hvae' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
