"""Directions as vectors in one latent group: an attribute's ``Cov(z, y) / sd(y)`` (also a
field's linear summary, and each moment of ``MomentDirections``) and the ``pca`` axes."""

from __future__ import annotations

import numpy as np
import torch

from hvae.errors import HVAEError


def fit_label_direction(
    latents: torch.Tensor, values: np.ndarray, ridge: float = 1e-3
) -> tuple[torch.Tensor, float]:
    """(direction, R^2) for one attribute; ``latents`` are (N, C): global posterior means, or
    any per-image quantity (moment directions fit channel means and log spreads this way).

    The direction is the change of the mean latent per standard deviation of the
    attribute, ``Cov(z, y) / sd(y)``: the displacement the data itself shows
    between images one sd apart. It lies where the latents vary, so the decoder
    responds to it. (The shortest step that moves a regression's prediction by
    one sd does not: with correlated latents it is tiny and points where the
    data never goes, and decoding ignores it.) R^2 is that of a ridge regression
    of the attribute on the latents: how much of the attribute the group holds.
    """
    x = latents.double()
    y = torch.as_tensor(values, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean()
    gram = xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc)
    residual = yc - xc @ w
    r2 = float(1 - residual.pow(2).sum() / yc.pow(2).sum())
    covariance = xc.T @ yc / (len(x) - 1)
    direction = covariance / yc.std()
    return direction.float(), r2


def fit_pca_directions(latents: torch.Tensor, k: int) -> list[tuple[torch.Tensor, float]]:
    """The top ``k`` principal axes of the (N, C) global means, each one sd long, with the
    fraction of variance each explains."""
    if not 1 <= k <= latents.shape[1]:
        raise HVAEError(f"--pca K must be in [1, {latents.shape[1]}], got {k}")
    centred = (latents - latents.mean(0)).double()
    _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
    variance = singular.pow(2) / max(1, len(latents) - 1)
    total = float(variance.sum())
    # Sign convention: the largest-magnitude entry positive, so refits agree.
    axes = []
    for i in range(k):
        axis = vt[i] * torch.sign(vt[i][vt[i].abs().argmax()])
        axes.append(((axis * variance[i].sqrt()).float(), float(variance[i]) / total))
    return axes
