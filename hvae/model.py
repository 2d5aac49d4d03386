"""Stage 2: a top-down hierarchical VAE over stage-1 feature maps (VDVAE / NVAE family).

The architecture is two one-line specs, as in VDVAE. Each comma-separated token
is ``<resolution><op><n>``; resolutions are labels relative to ``sample_size``
(the feature map's side), and ``1`` means the global group (pooled over all
positions), so one model encodes feature maps of any size.

Encoder (bottom-up) ops:
  ``16x2``  two residual blocks at resolution 16
  ``16d2``  average-pool by 2 (16 -> 8); ``4d4`` pools 4 -> 1, i.e. globally
Decoder (top-down) ops:
  ``1x1``   one latent group (with its own prior and posterior) at resolution 1
  ``4m1``   go from resolution 1 to 4 (broadcast from 1, nearest-upsample otherwise)
  ``16r2``  two residual blocks without latents

Each latent group has a prior p(z_i | z_<i) computed from the top-down state and a
residual posterior q(z_i | x, z_<i) = N(mu_p + dmu, sigma_p * exp(dlog)) as in
NVAE, so its KL has a closed form that stays small when the posterior follows the
prior. The likelihood is a Gaussian over features discretised at ``bin_width``;
its negative log-likelihood plus the KLs is a real code length (bits-back).

With a decoder spec holding a single ``x1`` token the same class is a flat VAE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from hvae.layers import (
    GroupState,
    LatentGroup,
    NoiseFn,
    PickFn,
    discretized_gaussian_log_prob,
    parse_spec,
    residual_block,
)


@dataclass
class HVAEOutput:
    loss: torch.Tensor  # training objective, nats per feature dimension
    bits_per_dim: torch.Tensor  # negative ELBO in bits per feature dimension (batch mean)
    nll_bits_per_dim: torch.Tensor
    kl_bits_per_dim: list[torch.Tensor]  # one per latent group
    reconstruction: torch.Tensor


@dataclass
class HVAECodes:
    """Stage-2 codes of a batch: one latent tensor per group, top (global) group first."""

    latents: list[torch.Tensor]
    feature_size: tuple[int, int]
    posteriors: list[tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=list
    )  # (mean, log std) per group
    priors: list[tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=list
    )  # p(z_i | z_<i): (mean, log std)
    image_size: tuple[int, int] | None = None  # set by pipelines, to crop decoded images back
    # Set by encode: features minus the decode of these latents, i.e. the detail the
    # latents leave out. Edits move the latents and keep it, so detail survives an edit.
    detail: torch.Tensor | None = None
    edited_groups: frozenset[int] = frozenset()  # set by edits: the groups whose latents moved
    # Set by feature-flow edits: the generator decoding applies to the features (see
    # hvae.directions.FeatureFlows); None when no such edit was made.
    feature_flow: torch.Tensor | None = None
    # Set by feature-editor edits: (the editor, the strengths of its attributes) that decoding
    # runs on the features (see hvae.directions.editor); None when no such edit was made.
    feature_editor: tuple | None = None
    unedited: list[torch.Tensor] | None = None  # set by edits: the latents before the first edit
    # Decodes that depend only on the unedited latents, kept by the pipeline between edits of
    # the same codes (so a slider move costs one stage-2 pass). Shared by clones.
    base_cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.latents[0].shape[0]

    def clone(self) -> HVAECodes:
        return HVAECodes(
            latents=[z.clone() for z in self.latents],
            feature_size=self.feature_size,
            posteriors=list(self.posteriors),
            priors=list(self.priors),
            image_size=self.image_size,
            detail=self.detail,
            edited_groups=self.edited_groups,
            feature_flow=self.feature_flow,
            feature_editor=self.feature_editor,
            unedited=self.unedited,
            base_cache=self.base_cache,
        )

    def residuals(self) -> list[torch.Tensor]:
        """Each group's latent relative to its prior at encoding, in prior stds: what an edit
        of a higher group keeps, so that lower groups follow the new context."""
        if len(self.priors) != len(self.latents):
            raise ValueError("these codes carry no priors (they were not made by encode)")
        return [
            (z - m) * torch.exp(-s) for z, (m, s) in zip(self.latents, self.priors, strict=True)
        ]


class HierarchicalVAE(ModelMixin, ConfigMixin):
    """Top-down hierarchical VAE over feature maps; see the module docstring for the block specs."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        sample_size: int = 16,
        width: int = 64,
        hidden_ratio: float = 0.5,
        z_channels: int = 8,
        global_z_channels: int = 32,
        encoder_blocks: str = "16x2,16d2,8x2,8d2,4x2,4d4,1x1",
        decoder_blocks: str = "1x1,4m1,4x2,8m4,8x3,16m8,16x3",
        bin_width: float = 1 / 16,
        min_log_scale: float = -7.0,
        rate_conditioned: bool = False,
    ):
        super().__init__()
        hidden = max(8, int(width * hidden_ratio))
        encoder_spec = parse_spec(encoder_blocks, "xd")
        decoder_spec = parse_spec(decoder_blocks, "xmr")
        for resolution, _, _ in encoder_spec + decoder_spec:
            if resolution > sample_size or sample_size % resolution:
                raise ValueError(
                    f"block resolution {resolution} does not divide sample_size {sample_size}: "
                    "the specs' resolutions are labels for a feature map of side sample_size"
                )
        n_groups = sum(n for _, op, n in decoder_spec if op == "x")
        if n_groups == 0:
            raise ValueError("the decoder spec has no latent group ('x' token)")
        n_decoder_blocks = sum(n for _, op, n in decoder_spec if op in "xr")
        depth_scale = 1.0 / math.sqrt(n_decoder_blocks)

        # A rate-conditioned model (the codec's entropy model) is told the quantization step:
        # the encoder as an extra input channel, the top-down path through the top state.
        self.stem = nn.Conv2d(in_channels + int(rate_conditioned), width, 3, padding=1)
        self.rate_embedding = (
            nn.Sequential(nn.Linear(1, width), nn.GELU(), nn.Linear(width, width))
            if rate_conditioned
            else None
        )
        self.encoder = nn.ModuleList()
        self._encoder_ops: list[tuple[int, str, int]] = []
        for resolution, op, n in encoder_spec:
            for _ in range(n if op == "x" else 1):
                module = (
                    residual_block(width, hidden, resolution, depth_scale)
                    if op == "x"
                    else nn.Identity()
                )
                self.encoder.append(module)
                self._encoder_ops.append((resolution, op, n))
        encoded = {r for r, _, _ in encoder_spec} | {
            r // n for r, op, n in encoder_spec if op == "d"
        }

        self.decoder = nn.ModuleList()
        self._decoder_ops: list[tuple[int, str, int]] = []
        for resolution, op, n in decoder_spec:
            if op == "x" and resolution not in encoded:
                raise ValueError(
                    f"latent group at resolution {resolution} has no encoder activation at that resolution"
                )
            for _ in range(n if op in "xr" else 1):
                if op == "x":
                    zc = global_z_channels if resolution == 1 else z_channels
                    module = LatentGroup(resolution, width, hidden, zc, depth_scale)
                elif op == "r":
                    module = residual_block(width, hidden, resolution, depth_scale)
                else:
                    module = nn.Identity()
                self.decoder.append(module)
                self._decoder_ops.append((resolution, op, n))
        top_resolution = decoder_spec[0][0]
        self.decoder_bias = nn.ParameterDict(
            {
                str(r): nn.Parameter(torch.zeros(1, width, 1, 1))
                for r in {top_resolution} | {r for r, op, _ in decoder_spec if op == "m"}
            }
        )
        self.head = nn.Conv2d(width, 2 * in_channels, 1)

    # ----------------------------------------------------------------- structure
    @property
    def latent_groups(self) -> list[LatentGroup]:
        """The latent groups in top-down order (global first); index i matches ``codes.latents[i]``."""
        return [m for m in self.decoder if isinstance(m, LatentGroup)]

    def group_shapes(self, feature_size: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(channels, height, width) of every group's latent for features of ``feature_size``."""
        return [
            (g.z_channels, *self._spatial(g.resolution, feature_size)) for g in self.latent_groups
        ]

    def _spatial(self, resolution: int, feature_size: tuple[int, int]) -> tuple[int, int]:
        if resolution == 1:
            return (1, 1)
        factor = self.config.sample_size // resolution
        return (feature_size[0] // factor, feature_size[1] // factor)

    @property
    def feature_multiple(self) -> int:
        """Feature maps' height and width must be multiples of this (the coarsest spatial group's factor)."""
        coarsest = min(
            (r for r, _, _ in self._decoder_ops if r > 1),
            default=self.config.sample_size,
        )
        return self.config.sample_size // coarsest

    def check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 4 or features.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected features (N, {self.config.in_channels}, H, W), got {tuple(features.shape)}"
            )
        multiple = self.feature_multiple
        if features.shape[-2] % multiple or features.shape[-1] % multiple:
            raise ValueError(
                f"feature height and width must be multiples of {multiple}, got {tuple(features.shape[-2:])}"
            )

    def quantize(self, features: torch.Tensor) -> torch.Tensor:
        """Snap features to the grid whose bins the likelihood is defined on."""
        bin_width = self.config.bin_width
        return torch.round(features / bin_width) * bin_width

    # ----------------------------------------------------------------- passes
    def _bottom_up(
        self, features: torch.Tensor, log_step: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        if self.rate_embedding is not None:
            step_plane = log_step.to(features.dtype)[:, None, None, None]
            features = torch.cat([features, step_plane.expand(-1, 1, *features.shape[-2:])], 1)
        x = self.stem(features)
        activations: dict[int, torch.Tensor] = {}
        for module, (resolution, op, n) in zip(self.encoder, self._encoder_ops, strict=True):
            if op == "x":
                x = module(x)
                activations[resolution] = x
            elif resolution // n == 1:
                x = x.mean((2, 3), keepdim=True)
                activations[1] = x
            else:
                x = F.avg_pool2d(x, n)
                activations[resolution // n] = x
        return activations

    def _top_down(
        self,
        batch: int,
        feature_size: tuple[int, int],
        activations: dict[int, torch.Tensor] | None = None,
        latents: Sequence[torch.Tensor | None] | None = None,
        noise: NoiseFn | None = None,
        temperature: float = 1.0,
        use_mean: bool = False,
        pick: PickFn | None = None,
        log_step: torch.Tensor | None = None,
        prior_only: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[GroupState]]:
        device, dtype = self.head.weight.device, self.head.weight.dtype
        if noise is None:
            noise = lambda shape: torch.randn(shape, device=device, dtype=dtype)  # noqa: E731
        top = self._decoder_ops[0][0]
        x = self.decoder_bias[str(top)].expand(batch, -1, *self._spatial(top, feature_size))
        if self.rate_embedding is not None:
            x = x + self.rate_embedding(log_step.to(dtype)[:, None])[:, :, None, None]
        states: list[GroupState] = []
        for module, (resolution, op, _) in zip(self.decoder, self._decoder_ops, strict=True):
            if op == "m":
                target = self._spatial(resolution, feature_size)
                x = (
                    x.expand(-1, -1, *target)
                    if x.shape[-1] == 1 and x.shape[-2] == 1
                    else F.interpolate(x, size=target, mode="nearest")
                )
                x = x + self.decoder_bias[str(resolution)]
            elif op == "r":
                x = module(x)
            else:
                index = len(states)
                given = latents[index] if latents is not None and index < len(latents) else None
                activation = activations[resolution] if activations is not None else None
                dropped = prior_only if resolution > 1 else None
                x, state = module(x, activation, given, noise, temperature, use_mean, pick, dropped)
                states.append(state)
        return x, states

    def _likelihood(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 even under autocast: a bf16 mean is off by a large fraction of a bin.
        with torch.autocast(x.device.type, enabled=False):
            mean, log_scale = self.head(F.gelu(x.to(self.head.weight.dtype))).chunk(2, 1)
        return mean, log_scale.clamp_min(self.config.min_log_scale)

    # ----------------------------------------------------------------- training
    def forward(
        self,
        features: torch.Tensor,
        kl_weight: float = 1.0,
        free_bits: float | Sequence[float] = 0.0,
        global_only: torch.Tensor | None = None,
    ) -> HVAEOutput:
        """Negative ELBO of ``features`` with one posterior sample.

        ``kl_weight`` (KL warm-up) and ``free_bits`` (nats per latent dimension,
        applied to each group's batch-mean KL; one number, or one per group) shape
        only the training loss; ``bits_per_dim`` is the true negative ELBO unless
        ``global_only`` is given.

        ``global_only`` (bool, one per image) decodes those images from the global
        group alone, every spatial group at its prior mean. Training with a fraction
        of such images makes the global group carry what the image is (colours,
        shape, pose) instead of leaving it to the spatial groups, which is what
        editing the global group needs; their bits are then not a true ELBO.
        """
        self.check_features(features)
        features = self.quantize(features.to(self.head.weight.dtype))
        size = (features.shape[-2], features.shape[-1])
        activations = self._bottom_up(features)
        x, states = self._top_down(
            features.shape[0], size, activations=activations, prior_only=global_only
        )
        mean, log_scale = self._likelihood(x)
        dims = features[0].numel()
        nll = (
            -discretized_gaussian_log_prob(
                features, mean.float(), log_scale.float(), self.config.bin_width
            )
            .flatten(1)
            .sum(1)
        )
        kls = [s.kl.float().flatten(1).sum(1) for s in states]
        objective = nll.mean()
        if isinstance(free_bits, (int, float)):
            free_bits = [free_bits] * len(states)
        for s, kl, floor in zip(states, kls, free_bits, strict=True):
            objective = objective + kl_weight * kl.mean().clamp_min(floor * s.kl[0].numel())
        to_bits = 1.0 / (dims * math.log(2))
        total = nll + torch.stack(kls).sum(0)
        return HVAEOutput(
            loss=objective / dims,
            bits_per_dim=total.mean() * to_bits,
            nll_bits_per_dim=nll.mean() * to_bits,
            kl_bits_per_dim=[kl.mean() * to_bits for kl in kls],
            reconstruction=mean,
        )

    # ----------------------------------------------------------------- entropy coding
    def coding_pass(
        self,
        features: torch.Tensor | None,
        step: torch.Tensor,
        pick: PickFn,
        feature_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[GroupState]]:
        """One top-down pass of a rate-conditioned model whose latents ``pick`` chooses.

        ``step`` (one per image) is the quantization step of the features. With
        ``features`` the posteriors are inferred (encoding, training); without
        them only priors exist, as when a decoder rebuilds latents from a
        bitstream. Returns the likelihood's mean and log std, and every group's state.
        """
        if self.rate_embedding is None:
            raise ValueError("this model was not trained as an entropy model (rate_conditioned)")
        log_step = step.to(self.head.weight.dtype).log()
        if features is not None:
            self.check_features(features)
            feature_size = (features.shape[-2], features.shape[-1])
            activations = self._bottom_up(features.to(self.head.weight.dtype), log_step)
        else:
            activations = None
        x, states = self._top_down(
            step.shape[0], feature_size, activations, pick=pick, log_step=log_step
        )
        mean, log_scale = self._likelihood(x)
        return mean, log_scale, states

    # ----------------------------------------------------------------- inference API
    @torch.no_grad()
    def encode(
        self,
        features: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> HVAECodes:
        """Posterior of every group; latents are the posterior means unless ``sample``.

        ``detail`` is the features minus the decode of these latents. The top-down pass that
        infers the latents already computes that decode, since it feeds the chosen latents
        forward exactly as ``decode`` does, so the detail costs no second pass.
        """
        self.check_features(features)
        original = features.float()
        features = self.quantize(features.to(self.head.weight.dtype))
        size = (features.shape[-2], features.shape[-1])
        noise = self._noise_fn(generator)
        x, states = self._top_down(
            features.shape[0],
            size,
            self._bottom_up(features),
            noise=noise,
            use_mean=not sample,
        )
        return HVAECodes(
            latents=[s.z for s in states],
            feature_size=size,
            posteriors=[(s.posterior_mean, s.posterior_log_scale) for s in states],
            priors=[(s.prior_mean, s.prior_log_scale) for s in states],
            detail=original - self._likelihood(x)[0].float(),
        )

    @torch.no_grad()
    def decode(
        self,
        latents: HVAECodes | Sequence[torch.Tensor | None],
        temperature: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        feature_size: tuple[int, int] | None = None,
        residuals: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Latents -> feature map (the likelihood mean). Groups given as None are drawn from their prior,
        or, with ``residuals`` (one per None group, in order), set to prior mean + prior std * residual."""
        if isinstance(latents, HVAECodes):
            feature_size, latents = latents.feature_size, latents.latents
        noise = self._noise_fn(generator)
        if residuals is not None:
            remaining = iter(residuals)
            noise = lambda shape: next(remaining).to(self.head.weight.dtype)  # noqa: E731
        known = [z for z in latents if z is not None]
        if not known:
            raise ValueError(
                "decode needs at least one latent tensor; use sample() to draw all of them"
            )
        batch = known[0].shape[0]
        feature_size = feature_size or self._infer_feature_size(latents)
        x, _ = self._top_down(
            batch,
            feature_size,
            latents=list(latents),
            noise=noise,
            temperature=1.0 if residuals is not None else temperature,
        )
        return self._likelihood(x)[0].float()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        feature_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` feature maps from the prior; ``temperature`` scales every group's prior std."""
        size = feature_size or (self.config.sample_size, self.config.sample_size)
        x, _ = self._top_down(n, size, noise=self._noise_fn(generator), temperature=temperature)
        return self._likelihood(x)[0].float()

    @torch.no_grad()
    def code_length_bits(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image negative ELBO in bits (one posterior sample): what bits-back coding would spend."""
        self.check_features(features)
        features = self.quantize(features.to(self.head.weight.dtype))
        size = (features.shape[-2], features.shape[-1])
        x, states = self._top_down(
            features.shape[0],
            size,
            self._bottom_up(features),
            noise=self._noise_fn(generator),
        )
        mean, log_scale = self._likelihood(x)
        nll = (
            -discretized_gaussian_log_prob(features, mean, log_scale, self.config.bin_width)
            .flatten(1)
            .sum(1)
        )
        kl = sum(s.kl.flatten(1).sum(1) for s in states)
        return (nll + kl) / math.log(2)

    def _noise_fn(self, generator) -> NoiseFn:
        device, dtype = self.head.weight.device, self.head.weight.dtype
        # A list of generators gives each image its own stream (diffusers' convention), which is
        # what makes samples independent of batch size.
        return lambda shape: randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def _infer_feature_size(self, latents: Sequence[torch.Tensor | None]) -> tuple[int, int]:
        for group, z in zip(self.latent_groups, latents, strict=False):
            if z is not None and group.resolution > 1:
                factor = self.config.sample_size // group.resolution
                return (z.shape[-2] * factor, z.shape[-1] * factor)
        return (self.config.sample_size, self.config.sample_size)
