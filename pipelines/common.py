"""What both pipelines share: loading a pipeline folder with this project's errors, and the
stage-1 wrapper of its autoencoder."""

from __future__ import annotations

from pathlib import Path

from hvae.autoencoder import FeatureAutoencoder
from hvae.errors import HVAEError


def load_pipeline_folder(load, pretrained_model_name_or_path, **kwargs):
    """``load`` (a DiffusionPipeline.from_pretrained) with our errors: a folder that is not a
    pipeline, or a part that fails to load, is an HVAEError that names the folder."""
    path = Path(pretrained_model_name_or_path)
    if path.exists() and not (path / "model_index.json").is_file():
        raise HVAEError(f"{path}: not a pipeline folder (no model_index.json)")
    try:
        return load(pretrained_model_name_or_path, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HVAEError(
            f"{pretrained_model_name_or_path}: could not load the pipeline ({error})"
        ) from None


def cached_stage1(pipe) -> FeatureAutoencoder:
    """The pipeline's ``FeatureAutoencoder``, one per autoencoder: building it anew on every
    call would re-probe the stride (a forward pass) for classes that do not declare it."""
    cached = getattr(pipe, "_stage1", None)
    if cached is None or cached.model is not pipe.autoencoder:
        cached = pipe._stage1 = FeatureAutoencoder(pipe.autoencoder)
    return cached
