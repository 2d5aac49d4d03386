"""User-facing pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from pipelines.compression_pipeline import HVAECompressionPipeline
from pipelines.hvae_pipeline import HVAEPipeline

__all__ = ["HVAECompressionPipeline", "HVAEPipeline"]
