"""End-to-end codec recipe: stage 1 and its entropy model trained together on R + λ·D.

``train-codec`` fits the entropy model to a frozen stage 1, whose features were made to
reconstruct, not to be cheap to code. Here both learn at once, as learned codecs are
trained (QRes-VAE, QARV): the features get uniform noise of the quantization step (the
usual relaxation of rounding), the rate is their and the latent groups' negative
log-probability under the entropy model, and the distortion is the decoder's error on the
very features whose bits were counted.

One model codes at every rate: each image draws its own step, log-uniformly, and its
distortion weight is ``λ(step) = lmbda / step²``. Under high-rate theory (rate falls by one
bit per feature dimension as the step doubles, distortion grows with the step's square)
that weight makes each step the best one for its own λ, so the step that ``--quality``
chooses stays the rate control it was, and the encoder has no reason to rescale its
features to trade one step's rate for another's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hvae.autoencoder import load_autoencoder
from hvae.codec_settings import DEFAULT_LMBDA
from hvae.entropy import rate_bits
from hvae.errors import HVAEError
from hvae.model import HierarchicalVAE
from hvae.patch_autoencoder import PatchAutoencoder
from hvae.train_autoencoder import CropSampler, load_training_images
from hvae.train_codec import load_entropy_model
from hvae.training import TrainConfig, process_state, train

EIGHT_BIT = 127.5  # pixels in [-1, 1] to 8-bit levels


class JointCodec(torch.nn.Module):
    """Stage 1 and its entropy model as one module, so that one optimizer, one EMA and one
    checkpoint hold both, and a distributed wrapper sees one ``forward``."""

    def __init__(self, autoencoder: PatchAutoencoder, entropy_model: HierarchicalVAE):
        super().__init__()
        self.autoencoder = autoencoder
        self.hvae = entropy_model
        # The scaling stays that of the starting stage 1: the entropy model's steps, and so
        # the codec's quality table, are in units of the scaled features.
        self.scaling_factor = float(autoencoder.config.scaling_factor)
        self.shift_factor = float(getattr(autoencoder.config, "shift_factor", 0.0) or 0.0)

    def forward(
        self, pixels: torch.Tensor, steps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image bits and the reconstruction from the noisy features."""
        latents = self.autoencoder.encode(pixels).latents
        features = (latents.float() - self.shift_factor) * self.scaling_factor
        noise = torch.rand_like(features) - 0.5
        # The rate in float32: a log-probability in bf16 is off by several per cent.
        with torch.autocast(pixels.device.type, enabled=False):
            feature_bits, latent_bits = rate_bits(self.hvae, features, steps, noise)
        noisy = features + steps.float().view(-1, 1, 1, 1) * noise
        recon = self.autoencoder.decode(noisy / self.scaling_factor + self.shift_factor).sample
        return feature_bits + sum(latent_bits), recon.float()


def distortion_weight(steps: torch.Tensor, lmbda: float) -> torch.Tensor:
    """λ per image, in bits per pixel per squared 8-bit level (see the module's note)."""
    return lmbda / steps.float() ** 2


# Each image's R + λ·D is divided by λ·DISTORTION_UNIT: the same optimum for that image,
# but every image's distortion then weighs alike in the shared weights. Undivided, an
# image at step 0.1 weighs 900 times one at step 3, and the low rates learn nothing.
DISTORTION_UNIT = 100.0  # squared 8-bit levels: about what stage 1 leaves on photos (28 dB)


def make_rd_loss(lmbda: float, min_step: float, max_step: float, seed: int):
    """``(bpp + λ(step) · MSE) / (λ(step) · DISTORTION_UNIT)`` (MSE in squared 8-bit
    levels), each image at its own step."""

    def loss_fn(model, pixels: torch.Tensor, step: int):
        rng = np.random.default_rng([seed, step, 2])
        log_steps = rng.uniform(math.log(min_step), math.log(max_step), pixels.shape[0])
        steps = torch.from_numpy(np.exp(log_steps)).float().to(pixels.device)
        bits, recon = model(pixels, steps)
        bpp = bits / (pixels.shape[-2] * pixels.shape[-1])
        mse = (recon - pixels.float()).pow(2).flatten(1).mean(1) * EIGHT_BIT**2
        weight = distortion_weight(steps, lmbda)
        loss = ((bpp + weight * mse) / (weight * DISTORTION_UNIT)).mean()
        logs = {
            "bpp": bpp.detach().mean(),
            "psnr": (10 * torch.log10(255.0**2 / mse.detach().clamp_min(1e-6))).mean(),
        }
        return loss, logs

    return loss_fn


def load_joint_codec(folder: str) -> JointCodec:
    """The compression pipeline folder to start from, or a clear error."""
    path = Path(folder)
    if not (path / "autoencoder").is_dir() or not (path / "hvae").is_dir():
        raise HVAEError(
            f"--init-from {folder}: end-to-end training starts from a compression pipeline "
            "folder (autoencoder/ and hvae/), such as checkpoints/photo"
        )
    autoencoder = load_autoencoder(str(path / "autoencoder"))
    if not isinstance(autoencoder, PatchAutoencoder):
        raise HVAEError(
            f"--init-from {folder}: its autoencoder is a {type(autoencoder).__name__}; "
            f"end-to-end training needs a {PatchAutoencoder.__name__}"
        )
    # Rebuilt from its public config, so the saved model does not record where it came from.
    fresh = PatchAutoencoder.from_config(
        {k: v for k, v in autoencoder.config.items() if not k.startswith("_")}
    )
    fresh.load_state_dict(autoencoder.state_dict())
    entropy_model = load_entropy_model(folder, int(fresh.config.latent_channels))
    return JointCodec(fresh, entropy_model)


def train_rd(
    init_from: str,
    data: str,
    out_dir: str,
    config: TrainConfig,
    lmbda: float = DEFAULT_LMBDA,
    feature_crop: int = 32,
    scales: tuple[float, ...] = (1.0, 0.5, 0.25),
    min_step: float = 0.1,
    max_step: float = 3.0,
    resume: bool = True,
) -> JointCodec:
    """Train stage 1 and the entropy model of ``init_from`` together on pixel crops of
    ``data`` (their features ``feature_crop`` on a side); save a compression pipeline folder
    (autoencoder + hvae) to ``out_dir``."""
    if lmbda <= 0 or not math.isfinite(lmbda):
        raise HVAEError(f"--lmbda must be a positive number, got {lmbda}")
    if not 0 < min_step <= max_step:
        raise HVAEError(f"need 0 < --min-step <= --max-step, got {min_step} and {max_step}")
    torch.manual_seed(config.seed)
    codec = load_joint_codec(init_from)
    if feature_crop % codec.hvae.feature_multiple:
        raise HVAEError(
            f"--crop must be a multiple of {codec.hvae.feature_multiple} for this model"
        )
    crop = feature_crop * codec.autoencoder.spatial_stride
    state = process_state()
    with state.main_process_first():
        images = load_training_images(data, 0, crop, config.seed, "")
    sampler = CropSampler(images, crop, config.batch_size, config.seed, scales)
    config.out_dir = str(Path(out_dir) / "run")
    config.channels_last = True
    ema = train(
        codec,
        make_rd_loss(lmbda, min_step, max_step, config.seed),
        sampler,
        config,
        resume=resume,
        description="codec end to end",
    )
    if state.is_main_process:
        from pipelines import HVAECompressionPipeline

        HVAECompressionPipeline(autoencoder=ema.autoencoder, hvae=ema.hvae).save_pretrained(out_dir)
    return ema
