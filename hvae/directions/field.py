"""``DirectionField``: attribute edits that bend with the latent space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hvae.directions.base import LatentEdits, flatten_groups, unflatten_groups
from hvae.errors import HVAEError


class DirectionField(LatentEdits, nn.Module):
    """Attribute edits that follow the latent space's curves: ``z -> z + write(y + s) - write(y)``.

    ``z`` is the latents of ``groups`` (the global group alone, or every group),
    flattened and reduced to their top principal components. ``read`` maps them to
    the image's attributes (in sd units); ``write`` maps attributes to the mean
    latents of images that have them. An edit reads the attributes, moves the
    chosen ones by their strengths and adds the change ``write`` predicts, so
    every other attribute fitted with the field is held where it was. Unlike a
    fixed vector this can bend: a hue that goes round the colour circle is a
    curve in latent space, not a line.

    A global field applies to images of any size. A field over every group holds
    the spatial layout too (where the floor is, how tall the object stands), so
    it edits what the global group alone cannot; it needs codes of the feature
    size it was fitted on.
    """

    kind = "field"

    def __init__(
        self,
        names: Sequence[str],
        dim: int,
        components: int,
        groups: Sequence[int] = (0,),
        hidden: int = 256,
    ):
        super().__init__()
        self.names, self.groups = list(names), list(groups)
        k = len(self.names)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(dim, components))  # principal axes
        self.read = nn.Sequential(nn.Linear(components, hidden), nn.GELU(), nn.Linear(hidden, k))
        self.write = nn.Sequential(nn.Linear(k, hidden), nn.GELU(), nn.Linear(hidden, components))

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    @property
    def any_size(self) -> bool:
        """Whether codes of any feature size edit (only the pooled global group is used)."""
        return self.groups == [0]

    def describe(self) -> dict:
        """What rebuilds this field before its weights load (a ``fields.json`` entry)."""
        return {
            "kind": "field",
            "names": self.names,
            "groups": self.groups,
            "dim": self.dim,
            "components": self.basis.shape[1],
            "hidden": self.read[0].out_features,
        }

    def apply(
        self,
        latents: list[torch.Tensor],
        detail: torch.Tensor | None,
        strengths: torch.Tensor,
        keep: Sequence[int] = (),
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Codes' latents and kept detail moved by ``strengths`` (K,); the detail is kept.
        ``keep`` changes nothing: the field already holds every attribute it was fitted with."""
        flat = flatten_groups(latents, self.groups)
        if flat.shape[1] != self.dim:
            raise HVAEError(
                f"directions {', '.join(self.names)} were fitted on codes of another feature "
                f"size (their groups hold {self.dim} numbers, these {flat.shape[1]}); "
                "use images of the size they were fitted on"
            )
        return unflatten_groups(self.shift(flat, strengths), latents, self.groups), detail

    def coordinates(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents.float() - self.mean) @ self.basis

    @torch.no_grad()
    def shift(self, latents: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """(N, dim) flattened latents moved by ``strengths`` (K,) sds of each attribute."""
        attributes = self.read(self.coordinates(latents))
        moved = self.write(attributes + strengths.to(attributes)) - self.write(attributes)
        return (latents.float() + moved @ self.basis.T).to(latents.dtype)

    @classmethod
    def fit(
        cls,
        latents: torch.Tensor,
        labels: dict[str, np.ndarray],
        groups: Sequence[int] = (0,),
        components: int = 256,
        steps: int = 3000,
        seed: int = 0,
    ) -> tuple[DirectionField, dict[str, float]]:
        """Fit both maps on (N, dim) flattened latents and their labels; returns the field
        and each attribute's R^2 as ``read`` predicts it on the fitting set."""
        torch.manual_seed(seed)
        names = list(labels)
        y = torch.tensor(np.stack([labels[n] for n in names], 1), dtype=torch.float32)
        y = (y - y.mean(0)) / y.std(0)
        z = latents.float()
        components = min(components, z.shape[1], len(z) - 1)
        field = cls(names, z.shape[1], components, groups)
        field.mean.copy_(z.mean(0))
        _, _, vt = torch.linalg.svd(z - field.mean, full_matrices=False)
        field.basis.copy_(vt[:components].T)
        coords = field.coordinates(z)
        optimizer = torch.optim.Adam(
            [*field.read.parameters(), *field.write.parameters()], lr=3e-3, weight_decay=1e-4
        )
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                loss = (field.read(coords) - y).pow(2).mean() + (field.write(y) - coords).pow(
                    2
                ).mean()
                loss.backward()
                optimizer.step()
        field.eval()
        with torch.no_grad():
            residual = (field.read(coords) - y).pow(2).mean(0)
        return field, {n: float(1 - r) for n, r in zip(names, residual, strict=True)}
