"""A small convolutional autoencoder built for CPU speed, saved as a diffusers model.

Pixel-unshuffle folds each 2x2 patch into channels first, so every convolution
after it runs at a quarter of the pixels or fewer; that is where most of the
speed comes from. Residual stages then halve the resolution until the total
stride is reached; the decoder mirrors them and ends with pixel-shuffle.

``encode`` and ``decode`` return the same output types as diffusers'
``AutoencoderTiny`` (``.latents`` / ``.sample``), so ``hvae.autoencoder`` treats
this class like any other diffusers autoencoder.
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (ModelMixin must be importable here for pipeline loading)
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()
        # Start each block as the identity so deep stacks train from the first step.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Deterministic autoencoder with spatial stride ``patch_size * 2 ** (len(block_out_channels) - 1)``."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 8,
        block_out_channels: tuple[int, ...] = (48, 96, 160),
        layers_per_block: int = 1,
        patch_size: int = 2,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ):
        super().__init__()
        widths = list(block_out_channels)
        folded = in_channels * patch_size**2

        encoder: list[nn.Module] = [
            nn.PixelUnshuffle(patch_size),
            nn.Conv2d(folded, widths[0], 3, padding=1),
        ]
        for i, width in enumerate(widths):
            encoder.append(_stage(width, layers_per_block))
            if i + 1 < len(widths):
                encoder.append(nn.Conv2d(width, widths[i + 1], 3, stride=2, padding=1))
        encoder += [nn.SiLU(), nn.Conv2d(widths[-1], latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1)]
        for i in reversed(range(len(widths))):
            decoder.append(_stage(widths[i], layers_per_block + 1))
            if i > 0:
                decoder += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(widths[i], widths[i - 1], 3, padding=1),
                ]
        decoder += [
            nn.SiLU(),
            nn.Conv2d(widths[0], folded, 3, padding=1),
            nn.PixelShuffle(patch_size),
        ]
        self.decoder = nn.Sequential(*decoder)

    @property
    def spatial_stride(self) -> int:
        return self.config.patch_size * 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def receptive_field(self) -> tuple[int, int]:
        """How far an output looks on each side: (encoder, in pixels; decoder, in feature
        positions). Tiles with halos this wide match whole-image output exactly
        (``hvae.autoencoder.Tiling``). Each 3x3 convolution adds one position at the
        resolution it reads; a stage of ``n`` residual blocks adds ``2n``."""
        patch, levels = self.config.patch_size, len(self.config.block_out_channels)
        blocks = self.config.layers_per_block
        scales = [patch * 2**i for i in range(levels)]  # pixels per position at each level
        # Encoder: the first conv, each stage, each stride-2 conv (at the finer level), the last.
        encoder = scales[0] + sum(2 * blocks * s for s in scales) + sum(scales[:-1]) + scales[-1]
        # Decoder, in features: the first conv, each stage (one block more), each conv after an
        # upsampling (at the finer level), the last conv.
        features = [s / self.spatial_stride for s in scales]
        decoder = 1 + sum(2 * (blocks + 1) * f for f in features) + sum(features[:-1]) + features[0]
        return encoder, math.ceil(decoder)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        latents = self.encoder(x)
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        sample = self.decoder(z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
