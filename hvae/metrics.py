"""Image quality metrics shared by the demo, the tests and the benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between image batches in [-1, 1] (peak-to-peak range 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).div(4.0)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor):
    """Mean SSIM and mean contrast-structure term per image, for images in [0, 1]."""
    channels = x.shape[1]
    kernel_h = window.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    kernel_v = window.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, kernel_h, groups=channels), kernel_v, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    sigma_xx = blur(x * x) - mu_x**2
    sigma_yy = blur(y * y) - mu_y**2
    sigma_xy = blur(x * y) - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim.flatten(1).mean(1), cs.flatten(1).mean(1)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# The fifth scale, after four halvings, must still hold the 11-tap window.
MS_SSIM_MIN_SIDE = 11 * 2 ** (len(MS_SSIM_WEIGHTS) - 1)


def ms_ssim(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-image MS-SSIM (Wang et al. 2003: 5 scales, 11-tap Gaussian, sigma 1.5) for images in
    [-1, 1]; needs a short side of at least ``MS_SSIM_MIN_SIDE`` (176) pixels.

    It is differentiable; training losses pass ``dtype=torch.float32``, which is
    about twice as fast on CPU, while reported scores keep float64."""
    if min(a.shape[-2:]) < MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE}, "
            f"got {tuple(a.shape[-2:])}"
        )
    # Under bf16 autocast the blurs would run in bf16, and the variance terms
    # (blur(x * x) - mu ** 2) lose most of their precision; so autocast is off here.
    with torch.autocast(a.device.type, enabled=False):
        x, y = (a.to(dtype) + 1) / 2, (b.to(dtype) + 1) / 2
        window = _gaussian_window().to(device=a.device, dtype=dtype)
        factors = []
        for level, weight in enumerate(MS_SSIM_WEIGHTS):
            ssim, cs = _ssim_terms(x, y, window)
            last = level == len(MS_SSIM_WEIGHTS) - 1
            factors.append((ssim if last else cs).clamp_min(0) ** weight)
            if not last:
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        return torch.stack(factors).prod(0).float()
