"""What the kinds of direction set share: the edit entry point of the sets that move
latents, the round trip between per-group latents and one flat vector, and the linear
algebra behind ``keep`` and the flows' fits."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LatentEdits:
    """For direction sets that move latents: ``edit_codes``, the pipeline's one entry point
    for every kind of direction set, through their ``apply``."""

    def edit_codes(self, codes, strengths: torch.Tensor, keep: Sequence[int] = ()) -> None:
        """Move ``codes`` (already a copy) by ``strengths`` (K,), holding attributes ``keep``."""
        codes.latents, codes.detail = self.apply(codes.latents, codes.detail, strengths, keep)
        codes.edited_groups = codes.edited_groups | set(self.groups)


def flatten_groups(latents: Sequence[torch.Tensor], groups: Sequence[int]) -> torch.Tensor:
    """(N, dim): the latents of ``groups``, flattened and concatenated."""
    return torch.cat([latents[g].flatten(1) for g in groups], 1)


def unflatten_groups(
    flat: torch.Tensor, latents: Sequence[torch.Tensor], groups: Sequence[int]
) -> list[torch.Tensor]:
    """``latents`` with ``groups`` replaced by the pieces of ``flat`` (the inverse of flatten)."""
    result = list(latents)
    sizes = [latents[g][0].numel() for g in groups]
    for g, piece in zip(groups, flat.split(sizes, 1), strict=True):
        result[g] = piece.reshape(latents[g].shape).to(latents[g].dtype)
    return result


def project_out(vector: torch.Tensor, others: Sequence[torch.Tensor]) -> torch.Tensor:
    """``vector`` minus its component in the span of ``others`` (conditional editing)."""
    if not others:
        return vector
    basis = torch.stack([o.flatten().double() for o in others], 1)
    # An orthonormal basis of the span from the SVD, not QR: kept directions that repeat or
    # depend on each other span fewer dimensions than their count, and QR would add
    # arbitrary ones and strip an unrelated part of the edit.
    u, singular, _ = torch.linalg.svd(basis, full_matrices=False)
    span = u[:, singular > singular.max() * 1e-9] if singular.max() > 0 else u[:, :0]
    flat = vector.flatten().double()
    return (flat - span @ (span.T @ flat)).reshape(vector.shape).to(vector.dtype)


def solve_ridge(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """Least-squares weights from normal equations, with a ridge relative to their scale."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * gram.diagonal().mean() * eye, cross)
