"""Stage-1 recipe: train a ``PatchAutoencoder`` on scenes or on a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hvae.autoencoder import load_autoencoder
from hvae.data import folder_images, shapes_pixels
from hvae.data.images import downscaled
from hvae.errors import HVAEError
from hvae.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr
from hvae.patch_autoencoder import PatchAutoencoder
from hvae.training import TrainConfig, process_state, train


class CropSampler:
    """Deterministic random crops: batch ``step`` depends only on (seed, step).

    With several ``scales`` each image is kept as a small pyramid, and a crop
    first picks a level: large photos then teach both fine texture (scale 1)
    and whole-object structure (smaller scales) at the same crop size.
    Levels whose short side is below the crop are left out.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        crop: int,
        batch_size: int,
        seed: int,
        scales: tuple[float, ...] = (1.0,),
    ):
        self.crop, self.batch_size, self.seed = crop, batch_size, seed
        if any(not 0 < s <= 1 for s in scales):
            raise HVAEError(f"crop scales must be in (0, 1], got {scales}")
        small = [i for i, im in enumerate(images) if min(im.shape[:2]) < crop]
        if small:
            raise HVAEError(f"{len(small)} images are smaller than the {crop}px crop; lower --crop")
        self.images = [
            level
            for image in images
            for level in (downscaled(image, s) for s in sorted(set(scales), reverse=True))
            if min(level.shape[:2]) >= crop
        ]

    def __call__(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        batch = np.empty((self.batch_size, self.crop, self.crop, 3), dtype=np.uint8)
        for b in range(self.batch_size):
            image = self.images[rng.integers(len(self.images))]
            top = rng.integers(image.shape[0] - self.crop + 1)
            left = rng.integers(image.shape[1] - self.crop + 1)
            patch = image[top : top + self.crop, left : left + self.crop]
            batch[b] = patch[:, ::-1] if rng.random() < 0.5 else patch
        return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def make_loss(
    latent_noise: float,
    ms_ssim_weight: float = 0.0,
    decoder_only: bool = False,
    quantization_steps: tuple[float, ...] = (),
    scaling_factor: float = 1.0,
):
    """The stage-1 loss. ``quantization_steps`` (in units of the scaled features, like the
    codec's ``QUALITY_STEPS``) adds a codec's quantization error to the latents: one step per
    image, drawn from the list."""

    def loss_fn(model, pixels: torch.Tensor, step: int):
        with torch.set_grad_enabled(not decoder_only):
            latents = model.encode(pixels).latents
        if latent_noise > 0:
            # Noise relative to the latents' own spread, so the decoder learns to
            # tolerate stage-2 reconstruction errors instead of the encoder
            # inflating its scale to drown the noise.
            latents = latents + latent_noise * latents.detach().float().std() * torch.randn_like(
                latents
            )
        if quantization_steps:
            # The codec rounds the scaled features to a grid of the quality's step laid
            # around the entropy model's prediction, so the error is uniform in +-step/2
            # whatever that prediction is; in latent units the step is step / scaling_factor.
            steps = torch.tensor(quantization_steps, device=latents.device) / scaling_factor
            per_image = steps[torch.randint(len(steps), (latents.shape[0],), device=latents.device)]
            latents = latents + (torch.rand_like(latents) - 0.5) * per_image.view(-1, 1, 1, 1)
        recon = model.decode(latents).sample.float()
        mse = F.mse_loss(recon, pixels)
        loss = mse + 0.1 * F.l1_loss(recon, pixels)
        # Tensors, not floats: the loop converts them on log steps only, so a GPU
        # step is not held up waiting for them before the backward pass.
        logged = {"psnr": psnr(recon.detach(), pixels).mean()}
        if ms_ssim_weight > 0:
            similarity = ms_ssim(recon, pixels, dtype=torch.float32).mean()
            loss = loss + ms_ssim_weight * (1 - similarity)
            logged["ms_ssim"] = similarity.detach()
        return loss, logged

    return loss_fn


@torch.no_grad()
def fit_scaling(model: PatchAutoencoder, pixels: torch.Tensor) -> tuple[float, float]:
    """Shift and scale that give the latents zero mean and unit variance, like SD's scaling_factor."""
    latents = torch.cat([model.encode(b).latents for b in pixels.split(64)])
    return 1.0 / float(latents.std()), float(latents.mean())


def load_patch_autoencoder(folder: str) -> PatchAutoencoder:
    """A saved ``PatchAutoencoder`` to continue training, or a clear error."""
    model = load_autoencoder(folder)
    if not isinstance(model, PatchAutoencoder):
        raise HVAEError(
            f"--init-from {folder} holds a {type(model).__name__}; continuing training needs a "
            f"{PatchAutoencoder.__name__}"
        )
    return model


def load_training_images(
    data: str, n_scenes: int, size: int, seed: int, cache_dir: str
) -> list[np.ndarray]:
    if data == "shapes":
        pixels = shapes_pixels(n_scenes, seed=seed, size=size, cache_dir=cache_dir)
        return list(pixels)
    if not Path(data).is_dir():
        raise HVAEError(f"--data must be 'shapes' or a folder of images, got {data!r}")
    images, skipped = folder_images(data)
    for message in skipped:
        print(f"skipped: {message}")
    return images


def train_autoencoder(
    data: str,
    out_dir: str,
    config: TrainConfig,
    crop: int = 64,
    latent_channels: int = 4,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    patch_size: int = 2,
    latent_noise: float = 0.05,
    n_scenes: int = 12000,
    cache_dir: str = "cache",
    resume: bool = True,
    scales: tuple[float, ...] = (1.0,),
    init_from: str | None = None,
    decoder_only: bool = False,
    ms_ssim_weight: float = 0.0,
    quantization_steps: tuple[float, ...] = (),
) -> PatchAutoencoder:
    """Train, fit the latent scaling, save to ``out_dir`` in diffusers format, and return the EMA model.

    ``init_from`` continues from a saved ``PatchAutoencoder`` (its architecture
    replaces the architecture arguments). With ``decoder_only`` its encoder and
    latent scaling stay frozen, so the features it gives do not change and every
    stage-2 model trained on them stays valid with the new decoder.
    ``ms_ssim_weight`` adds ``w * (1 - MS-SSIM)`` to the loss (crops of at least ``MS_SSIM_MIN_SIDE``).
    ``quantization_steps`` (decoder only) trains the decoder on features quantized as the
    codec quantizes them, at these steps.
    """
    if decoder_only and init_from is None:
        raise HVAEError("decoder-only training needs --init-from: a trained encoder to keep")
    if quantization_steps and not decoder_only:
        raise HVAEError(
            "quantization steps are in units of the frozen latent scaling: they need "
            "--train-decoder-only"
        )
    if any(s < 0 for s in quantization_steps):
        raise HVAEError(f"quantization steps must be >= 0, got {list(quantization_steps)}")
    if ms_ssim_weight < 0:
        raise HVAEError(f"the MS-SSIM weight must be >= 0, got {ms_ssim_weight}")
    if ms_ssim_weight > 0 and crop < MS_SSIM_MIN_SIDE:
        raise HVAEError(
            f"an MS-SSIM loss needs crops of at least {MS_SSIM_MIN_SIDE} pixels, got --crop {crop}"
        )
    state = process_state()
    with state.main_process_first():  # one process renders the scenes cache, the others read it
        images = load_training_images(data, n_scenes, crop, config.seed, cache_dir)
    sampler = CropSampler(images, crop, config.batch_size, config.seed, scales)
    torch.manual_seed(config.seed)
    if init_from is not None:
        model = load_patch_autoencoder(init_from)
    else:
        model = PatchAutoencoder(
            latent_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            patch_size=patch_size,
        )
    if decoder_only:
        model.encoder.requires_grad_(False)
    config.out_dir = str(Path(out_dir) / "run")
    config.channels_last = True
    loss_fn = make_loss(
        latent_noise,
        ms_ssim_weight,
        decoder_only,
        tuple(quantization_steps),
        float(model.config.scaling_factor),
    )
    ema = train(model, loss_fn, sampler, config, resume=resume, description="stage 1")
    if not decoder_only:  # a frozen encoder keeps the scaling stage 2 was trained with
        scale, shift = fit_scaling(ema, torch.cat([sampler(10_000 + i) for i in range(4)]))
        ema.register_to_config(scaling_factor=scale, shift_factor=shift)
    if state.is_main_process:
        ema.save_pretrained(out_dir)
    return ema
