"""User-facing pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from pipelines.hvae_pipeline import HVAEPipeline

__all__ = ["HVAEPipeline"]
