"""Image quality metrics shared by the demo, the tests and the benchmarks."""

from __future__ import annotations

import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between image batches in [-1, 1] (peak-to-peak range 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).div(4.0)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
