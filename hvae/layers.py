"""The building blocks of ``HierarchicalVAE`` (``hvae.model``): the block-spec parser, the
discretised Gaussian likelihood, VDVAE's bottleneck block, and one latent group's
top-down step with its prior and residual posterior."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]
# Chooses a group's latent from (prior mean, prior log std, posterior mean or None).
# Entropy coding uses it to quantize latents, and to decode them group by group.
PickFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
_TOKEN = re.compile(r"^(\d+)([xdmr])(\d+)$")


def parse_spec(spec: str, allowed: str) -> list[tuple[int, str, int]]:
    """``"16x2,16d2"`` -> ``[(16, "x", 2), (16, "d", 2)]``, with a clear error for typos (the
    syntax is in ``hvae.model``'s docstring)."""
    tokens = []
    for token in spec.replace(" ", "").split(","):
        match = _TOKEN.match(token)
        if not match or match.group(2) not in allowed:
            raise ValueError(
                f"bad block token {token!r} in {spec!r}; expected <res><one of {allowed}><n>"
            )
        tokens.append((int(match.group(1)), match.group(2), int(match.group(3))))
    return tokens


def discretized_gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bin_width: float
) -> torch.Tensor:
    """log P(bin of width ``bin_width`` centred on x) under N(mean, exp(log_scale)^2), elementwise.

    The mass is computed on the tail side of the mean, where both CDF values are
    small and their difference keeps its precision; in the far tail, where even
    that underflows, the density times the bin width takes over.
    """
    distance = (x - mean).abs()
    inv_scale = torch.exp(-log_scale)
    upper = (distance + bin_width / 2) * inv_scale
    lower = (distance - bin_width / 2) * inv_scale
    mass = torch.special.ndtr(-lower) - torch.special.ndtr(-upper)
    log_density = (
        -0.5 * (distance * inv_scale) ** 2
        - log_scale
        - 0.5 * math.log(2 * math.pi)
        + math.log(bin_width)
    )
    return torch.where(mass > 1e-8, torch.log(mass.clamp_min(1e-12)), log_density)


class Block(nn.Module):
    """VDVAE's bottleneck block: 1x1 -> 3x3 -> 3x3 -> 1x1 with GELUs (1x1 only at the global level)."""

    def __init__(
        self,
        cin: int,
        hidden: int,
        cout: int,
        residual: bool,
        spatial: bool,
        out_scale: float = 1.0,
    ):
        super().__init__()
        k = 3 if spatial else 1
        self.residual = residual
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(cin, hidden, 1),
                nn.Conv2d(hidden, hidden, k, padding=k // 2),
                nn.Conv2d(hidden, hidden, k, padding=k // 2),
                nn.Conv2d(hidden, cout, 1),
            ]
        )
        with torch.no_grad():
            self.convs[-1].weight.mul_(out_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = conv(F.gelu(h))
        return x + h if self.residual else h


def residual_block(width: int, hidden: int, resolution: int, depth_scale: float) -> Block:
    """A width-preserving residual block, scaled down by depth so deep stacks start near identity."""
    return Block(
        width,
        hidden,
        width,
        residual=True,
        spatial=resolution > 1,
        out_scale=depth_scale,
    )


@dataclass
class GroupState:
    """Everything one latent group produced in one top-down pass."""

    z: torch.Tensor
    prior_mean: torch.Tensor
    prior_log_scale: torch.Tensor
    posterior_mean: torch.Tensor | None = None
    posterior_log_scale: torch.Tensor | None = None
    kl: torch.Tensor | None = None  # elementwise KL(q || p) in nats


class LatentGroup(nn.Module):
    """One top-down step that owns a latent group: prior, residual posterior, and state update."""

    def __init__(
        self,
        resolution: int,
        width: int,
        hidden: int,
        z_channels: int,
        depth_scale: float,
    ):
        super().__init__()
        spatial = resolution > 1
        self.resolution, self.z_channels = resolution, z_channels
        self.posterior = Block(
            2 * width,
            hidden,
            2 * z_channels,
            residual=False,
            spatial=spatial,
            out_scale=0.1,
        )
        # Zero output at init: the prior starts as N(0, 1) and adds nothing to the state.
        self.prior = Block(
            width,
            hidden,
            2 * z_channels + width,
            residual=False,
            spatial=spatial,
            out_scale=0.0,
        )
        self.z_proj = nn.Conv2d(z_channels, width, 1)
        with torch.no_grad():
            self.z_proj.weight.mul_(depth_scale)
        self.resnet = Block(
            width, hidden, width, residual=True, spatial=spatial, out_scale=depth_scale
        )

    def forward(
        self,
        x: torch.Tensor,
        activation: torch.Tensor | None,
        z: torch.Tensor | None,
        noise: NoiseFn,
        temperature: float,
        use_mean: bool,
        pick: PickFn | None = None,
        prior_only: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, GroupState]:
        prior_out = self.prior(x)
        prior_mean, prior_log_scale, state_update = prior_out.split(
            [self.z_channels, self.z_channels, x.shape[1]], 1
        )
        state = GroupState(z=None, prior_mean=prior_mean, prior_log_scale=prior_log_scale)  # type: ignore[arg-type]

        if activation is not None:
            delta_mean, delta_log_scale = self.posterior(torch.cat([x, activation], 1)).chunk(2, 1)
            state.posterior_mean = prior_mean + delta_mean
            state.posterior_log_scale = prior_log_scale + delta_log_scale
            # KL between the residual posterior and the prior, in closed form (NVAE eq. 2).
            ratio = torch.exp(2 * delta_log_scale)
            state.kl = (
                0.5 * (delta_mean**2 * torch.exp(-2 * prior_log_scale) + ratio - 1.0)
                - delta_log_scale
            )
            if z is None and pick is None:
                z = state.posterior_mean
                if not use_mean:
                    z = z + torch.exp(state.posterior_log_scale) * noise(z.shape)
            if prior_only is not None:
                # These images decode this group at its prior mean: nothing is sent, so no KL.
                dropped = prior_only[:, None, None, None]
                z = torch.where(dropped, prior_mean, z)
                state.kl = state.kl.masked_fill(dropped, 0.0)
        if z is None and pick is not None:
            z = pick(prior_mean, prior_log_scale, state.posterior_mean)
        if z is None:
            z = prior_mean
            if temperature > 0:
                z = z + temperature * torch.exp(prior_log_scale) * noise(prior_mean.shape)
        state.z = z
        x = x + state_update
        x = x + self.z_proj(z.to(x.dtype))
        return self.resnet(x), state
