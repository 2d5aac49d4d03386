"""Encoder-side search for features that code better than stage 1's own.

Stage 1 was trained to reconstruct its features, never to have them rounded, so
its encoder's output is not what the codec should send: once rounded, it costs
more bits and decodes worse than features chosen with the rounding in view.
``refine_features`` searches for those by gradient descent on the rate-
distortion cost of the actual coding path (rounding passed straight through),
starting from the encoder's output and keeping the best point it visits.

Only the encoder changes. The decoder and the file format stay as they are,
so an archive written with refinement decodes anywhere an unrefined one does.

Format version 3 codes the features tile by tile, and ``refine_tile`` searches one
tile at a time: its rate is the tile's own (it is coded alone), its distortion that of
its own pixels decoded among stage 1's features around it. Memory is then bounded by
the tile, and tiles are searched side by side on worker threads.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from hvae.autoencoder import FeatureAutoencoder
from hvae.codec_settings import check_tune
from hvae.data.images import to_tensor
from hvae.entropy import rounded_rate_bits
from hvae.metrics import MS_SSIM_MIN_SIDE, ms_ssim
from hvae.model import HierarchicalVAE

# lambda = RD_WEIGHT * step^2, in (8-bit MSE) per bpp. Distortion from rounding
# grows as step^2, so this keeps each quality level near its unrefined bit rate.
# Tuned on training pictures only (benchmarks/refine_tuning.py); 120 and 270 did as well.
RD_WEIGHT = 180.0
# What the search minimises besides bits: "psnr" (MSE) or "ms-ssim" (1 - MS-SSIM, times
# MS_SSIM_SCALE to put it on the MSE's scale, so one lambda serves both; images under
# MS_SSIM_MIN_SIDE pixels, where MS-SSIM is undefined, fall back to MSE).
MS_SSIM_SCALE = 1500.0  # of 800, 1500 and 4000, the best BD-rate on MS-SSIM


def default_learning_rate(iterations: int) -> float:
    """Fewer iterations take larger steps: 0.03 at 8, 0.02 at 15, 0.01 from 30 on, the best
    of the rates tried at each of those counts."""
    return min(0.03, max(0.01, 0.3 / max(1, iterations)))


def rd_cost(
    stage1: FeatureAutoencoder,
    hvae: HierarchicalVAE,
    features: torch.Tensor,
    target: torch.Tensor,
    step: float,
    bf16: bool,
    rd_weight: float = RD_WEIGHT,
    tune: str = "psnr",
    context: tuple[torch.Tensor, tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, float, float]:
    """MSE (8-bit scale) + lambda * bpp of coding ``features`` at ``step`` and decoding them,
    against ``target`` (1, 3, H, W) in [-1, 1], with lambda = ``rd_weight`` * step^2; also
    returns the MSE and bpp themselves. ``tune="ms-ssim"`` puts (1 - MS-SSIM) in the MSE's
    place (see ``hvae.codec_settings.TUNINGS``). With ``context`` (features around them, and
    the (row, column) where they sit in it), the features are decoded in that context, and
    ``target`` is what their own positions decode to."""
    height, width = target.shape[-2:]
    bits, rebuilt = rounded_rate_bits(hvae, features, torch.tensor([step], device=features.device))
    row = column = 0
    if context is not None:
        surround, (row, column) = context
        placed = surround.clone()
        placed[..., row : row + rebuilt.shape[-2], column : column + rebuilt.shape[-1]] = rebuilt
        rebuilt = placed
    top, left = row * stage1.stride, column * stage1.stride
    decoded = stage1.decode_with_grad(rebuilt, bf16=bf16)[
        ..., top : top + height, left : left + width
    ]
    target = target.to(decoded.device)
    mse = ((decoded - target) ** 2).mean() * (255 / 2) ** 2
    distortion = mse
    if tune == "ms-ssim" and min(height, width) >= MS_SSIM_MIN_SIDE:
        distortion = MS_SSIM_SCALE * (1 - ms_ssim(decoded, target, dtype=torch.float32).mean())
    bpp = bits.sum() / (height * width)
    return distortion + rd_weight * step**2 * bpp, mse.item(), bpp.item()


def refine_features(
    stage1: FeatureAutoencoder,
    hvae: HierarchicalVAE,
    features: torch.Tensor,
    target: torch.Tensor,
    step: float,
    iterations: int,
    learning_rate: float | None = None,
    bf16: bool = False,
    rd_weight: float = RD_WEIGHT,
    tune: str = "psnr",
    context: tuple[torch.Tensor, tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Features of one image (1, C, h, w), or of one region of it in ``context`` (see
    ``rd_cost``), that cost less in ``rd_cost`` than ``features``.

    Adam with a cosine-decayed learning rate (``default_learning_rate`` unless given);
    the best point seen is returned, so the
    result never costs more than the start (by the search's own measure, which uses
    ``bf16`` for the decoder when asked and the stds before they are snapped to the table).
    """
    if features.shape[0] != 1:
        raise ValueError("refine one image at a time")
    check_tune(tune)
    if iterations <= 0:
        return features
    current = features.detach().clone().requires_grad_(True)
    if learning_rate is None:
        learning_rate = default_learning_rate(iterations)
    optimizer = torch.optim.Adam([current], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    best_cost, best = math.inf, features
    with torch.enable_grad():
        for iteration in range(iterations + 1):  # the last pass only scores the last update
            cost, _, _ = rd_cost(
                stage1, hvae, current, target, step, bf16, rd_weight, tune, context
            )
            if cost.item() < best_cost:
                best_cost, best = cost.item(), current.detach().clone()
            if iteration == iterations:
                break
            # Only the features' gradient: the models' weights get none, and are left as they are.
            (current.grad,) = torch.autograd.grad(cost, [current])
            optimizer.step()
            schedule.step()
    return best


def refine_tile(
    stage1: FeatureAutoencoder,
    hvae: HierarchicalVAE,
    image: Image.Image,
    features: torch.Tensor,
    tile: tuple[int, int, int, int],
    step: float,
    iterations: int,
    **options,
) -> torch.Tensor:
    """``refine_features`` of one tile (top, bottom, left, right) of an image's ``features``
    (padded as the codec pads them), scored on the tile's own pixels of ``image`` as decoded
    among the unrefined features within ``stage1.decode_halo`` of it: what the tile's
    neighbours will be is not known yet, and is close to that. ``options``: those of
    ``refine_features``."""
    top, bottom, left, right = tile
    halo, stride = stage1.decode_halo, stage1.stride
    read_top, read_left = max(0, top - halo), max(0, left - halo)
    surround = features[..., read_top : bottom + halo, read_left : right + halo]
    right_px, bottom_px = min(right * stride, image.width), min(bottom * stride, image.height)
    box = (left * stride, top * stride, right_px, bottom_px)
    target = to_tensor([image.crop(box)]).to(features.device)
    own = features[..., top:bottom, left:right]
    context = (surround, (top - read_top, left - read_left))
    return refine_features(stage1, hvae, own, target, step, iterations, context=context, **options)
