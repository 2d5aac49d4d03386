"""A prior fitted to where the encoder actually puts the top latent groups.

A VAE's learned prior rarely covers its aggregate posterior: the bundled scenes
model's own prior gives 3 scene-like samples in 64 at temperature 0.8, while
the same decoder fed the top groups of real scenes and the prior for the rest
gives 64 in 64. ``FittedPrior`` closes that gap the way "ex-post density
estimation" does (Ghosh et al., 2020, "From variational to deterministic
autoencoders"): after training, it fits a density to the posterior means of the
top groups, and sampling draws those groups from it; the groups below are then
drawn from the model's own conditional priors, so the hierarchy still makes the
detail. The density is a Gaussian mixture over the leading principal
components, plus independent Gaussian noise for what those components leave out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from hvae.errors import HVAEError

WEIGHTS, METADATA = "prior.safetensors", "prior.json"
MAX_POINTS = 20000  # a random subset of this many latents when more are given


class FittedPrior(nn.Module):
    """Gaussian mixture over ``components`` principal coordinates of the flattened latents
    of ``groups`` (whose shapes are ``shapes``)."""

    def __init__(
        self,
        groups: Sequence[int],
        shapes: Sequence[Sequence[int]],
        components: int,
        mixtures: int,
    ):
        super().__init__()
        self.groups = [int(g) for g in groups]
        self.shapes = [tuple(int(s) for s in shape) for shape in shapes]
        self.about: dict = {}  # what it was fitted on; saved with it
        dim = sum(math.prod(s) for s in self.shapes)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(dim, components))  # principal axes
        self.register_buffer("residual_std", torch.zeros(dim))  # what the axes leave out
        self.register_buffer("log_weights", torch.zeros(mixtures))
        self.register_buffer("centres", torch.zeros(mixtures, components))
        self.register_buffer("cholesky", torch.zeros(mixtures, components, components))

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    @property
    def components(self) -> int:
        return self.basis.shape[1]

    @property
    def mixtures(self) -> int:
        return self.centres.shape[0]

    # ------------------------------------------------------------------ fitting
    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        latents: torch.Tensor,
        groups: Sequence[int],
        shapes: Sequence[Sequence[int]],
        components: int = 64,
        mixtures: int = 32,
        iterations: int = 100,
        seed: int = 0,
    ) -> tuple[FittedPrior, float]:
        """Fit on (N, dim) flattened posterior means; returns the prior and the mean
        log-likelihood of the principal coordinates under the mixture (nats per image)."""
        z = latents.double()
        if len(z) > MAX_POINTS:  # EM holds (mixtures, points, components) tensors in float64
            keep = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
            z = z[keep[:MAX_POINTS]]
        count = z.shape[0]
        if count < 2 * mixtures:
            raise HVAEError(
                f"a {mixtures}-component prior needs at least {2 * mixtures} images, got {count}"
            )
        components = min(components, z.shape[1], count - 1)
        prior = cls(groups, shapes, components, mixtures)
        if prior.dim != z.shape[1]:
            raise HVAEError(f"latents have {z.shape[1]} dimensions, the groups {prior.dim}")
        mean = z.mean(0)
        _, _, vt = torch.linalg.svd(z - mean, full_matrices=False)
        basis = vt[:components].T
        coords = (z - mean) @ basis
        residual = (z - mean) - coords @ basis.T
        log_weights, centres, cholesky, log_likelihood = _fit_mixture(
            coords, mixtures, iterations, seed
        )
        for name, value in {
            "mean": mean,
            "basis": basis,
            "residual_std": residual.std(0),
            "log_weights": log_weights,
            "centres": centres,
            "cholesky": cholesky,
        }.items():
            getattr(prior, name).copy_(value.float())
        return prior, log_likelihood

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self, generators: Sequence[torch.Generator], temperature: float
    ) -> list[torch.Tensor]:
        """One draw per generator, as the latents of ``groups`` (one tensor per group, batch
        first). ``temperature`` scales the spread inside a mixture component and the residual
        noise; 0 gives the component centres. Each image uses only its own generator, so it
        does not depend on the batch it is drawn in."""
        rows = []
        weights = self.log_weights.double().exp()
        for generator in generators:
            device = generator.device
            k = torch.multinomial(weights.to(device), 1, generator=generator).item()
            eps = torch.randn(self.components, generator=generator, device=device)
            noise = torch.randn(self.dim, generator=generator, device=device)
            coords = self.centres[k] + temperature * (self.cholesky[k] @ eps.to(self.centres))
            rows.append(
                self.mean
                + self.basis @ coords
                + temperature * self.residual_std * noise.to(self.residual_std)
            )
        flat = torch.stack(rows)
        sizes = [math.prod(s) for s in self.shapes]
        return [
            piece.reshape(len(rows), *shape)
            for piece, shape in zip(flat.split(sizes, 1), self.shapes, strict=True)
        ]

    def fits(self, group_shapes: Sequence[Sequence[int]]) -> bool:
        """Whether this prior was fitted for latents of these shapes (a model's groups at one
        feature size): a prior fitted at one size cannot draw spatial groups at another."""
        return all(
            g < len(group_shapes) and tuple(group_shapes[g]) == shape
            for g, shape in zip(self.groups, self.shapes, strict=True)
        )

    # ------------------------------------------------------------------ storage
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))
        metadata = {
            "groups": self.groups,
            "shapes": [list(s) for s in self.shapes],
            "components": self.components,
            "mixtures": self.mixtures,
            "about": self.about,
        }
        (folder / METADATA).write_text(json.dumps(metadata, indent=2))

    @classmethod
    def load(cls, folder: Path) -> FittedPrior | None:
        """The prior saved in ``folder``, or None when there is none."""
        if not (folder / METADATA).is_file():
            return None
        try:
            metadata = json.loads((folder / METADATA).read_text())
            prior = cls(
                metadata["groups"],
                metadata["shapes"],
                metadata["components"],
                metadata["mixtures"],
            )
            prior.load_state_dict(load_file(str(folder / WEIGHTS)))
            prior.about = metadata.get("about", {})
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
            raise HVAEError(f"{folder}: could not load the fitted prior ({error})") from None
        return prior.eval()


def prior_groups(hvae, count: int | None = None) -> list[int]:
    """The top ``count`` groups, by default every group coarser than the finest: the groups that
    hold what the image is, leaving texture to the model's conditional priors."""
    groups = hvae.latent_groups
    finest = max(g.resolution for g in groups)
    count = count or sum(g.resolution < finest for g in groups) or 1
    if count > len(groups):
        raise HVAEError(f"{count} groups asked for: this model has {len(groups)} latent groups")
    return list(range(count))


def fit_to_latents(
    hvae,
    latents: torch.Tensor,
    groups: Sequence[int],
    components: int = 64,
    mixtures: int = 32,
    about: str = "",
) -> FittedPrior:
    """``FittedPrior.fit`` on (N, dim) posterior means of ``groups`` at the model's sample size,
    with fewer mixture components when there are few images (at least 50 images each)."""
    shapes = hvae.group_shapes((hvae.config.sample_size,) * 2)
    mixtures = max(1, min(mixtures, len(latents) // 50))
    prior, log_likelihood = FittedPrior.fit(
        latents, groups, [shapes[g] for g in groups], components, mixtures
    )
    prior.about = {"fitted_on": about, "log_likelihood": log_likelihood}
    print(
        f"fitted the sampling prior: a {mixtures}-component mixture over {prior.components} "
        f"principal components of groups {list(groups)} ({latents.shape[1]} dimensions) on "
        f"{about}; mean log-likelihood {log_likelihood:.1f} nats"
    )
    return prior


@torch.no_grad()
def fit_to_features(hvae, features: torch.Tensor, about: str, batch_size: int = 256) -> FittedPrior:
    """The sampling prior fitted to the posterior means of training feature maps (N, C, H, W)
    of the model's sample size: what ``hvae train`` does after training."""
    from hvae.directions import flatten_groups

    groups = prior_groups(hvae)
    rows = [
        flatten_groups(hvae.encode(features[i : i + batch_size]).latents, groups).float().cpu()
        for i in tqdm(range(0, len(features), batch_size), desc="encoding for the prior")
    ]
    return fit_to_latents(hvae, torch.cat(rows), groups, about=about)


def _fit_mixture(
    x: torch.Tensor, mixtures: int, iterations: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Full-covariance Gaussian mixture by EM on (N, D) float64 points. Returns log weights,
    centres, Cholesky factors of the covariances, and the final mean log-likelihood."""
    count, dim = x.shape
    generator = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(count, generator=generator)[:mixtures]].clone()
    # A ridge keeps every covariance invertible, even of identical points.
    ridge = (1e-3 * x.var(0).mean()).clamp_min(1e-12) * torch.eye(dim, dtype=x.dtype)
    overall = torch.cov(x.T) + ridge
    covariances = overall.expand(mixtures, dim, dim).clone()
    log_weights = torch.full((mixtures,), -math.log(mixtures), dtype=x.dtype)
    # A component holding fewer points than it has dimensions cannot estimate a covariance:
    # it collapses onto a few training latents and sampling it would copy them. Such a
    # component starts again at a random point, with the overall covariance.
    least_mass = dim + 1
    for _ in tqdm(range(iterations), desc="fitting the mixture", dynamic_ncols=True):
        cholesky = torch.linalg.cholesky(covariances)
        log_joint = _component_log_density(x, centres, cholesky) + log_weights[:, None]
        log_total = torch.logsumexp(log_joint, 0)
        responsibility = (log_joint - log_total).exp()  # (K, N)
        mass = responsibility.sum(1).clamp_min(1e-9)
        log_weights = (mass / count).log()
        centres = (responsibility @ x) / mass[:, None]
        centred = x[None] - centres[:, None]
        covariances = (
            torch.einsum("kn,knp,knq->kpq", responsibility, centred, centred) / mass[:, None, None]
            + ridge
        )
        starved = (mass < least_mass).nonzero().flatten()
        if len(starved):
            centres[starved] = x[torch.randint(count, (len(starved),), generator=generator)]
            covariances[starved] = overall
            log_weights[starved] = -math.log(mixtures)
            log_weights = log_weights - torch.logsumexp(log_weights, 0)
    cholesky = torch.linalg.cholesky(covariances)
    log_total = torch.logsumexp(
        _component_log_density(x, centres, cholesky) + log_weights[:, None], 0
    )
    return log_weights, centres, cholesky, log_total.mean().item()


def _component_log_density(
    x: torch.Tensor, centres: torch.Tensor, cholesky: torch.Tensor
) -> torch.Tensor:
    """(K, N) log N(x_n; centre_k, L_k L_k^T)."""
    centred = (x[None] - centres[:, None]).transpose(1, 2)  # (K, D, N)
    whitened = torch.linalg.solve_triangular(cholesky, centred, upper=False)
    log_det = 2 * torch.diagonal(cholesky, dim1=1, dim2=2).log().sum(1)
    dim = x.shape[1]
    return -0.5 * (whitened**2).sum(1) - 0.5 * (log_det[:, None] + dim * math.log(2 * math.pi))
