"""Codec recipe: train a rate-conditioned HVAE as the entropy model of stage-1 features.

Each training image is encoded whole, at every pyramid scale, once (the
features are cached on disk, keyed by the autoencoder's fingerprint); batches
are random crops of those feature maps. Every crop gets its own quantization
step, drawn log-uniformly over the range the quality levels use, so one model
learns to code at every rate. The loss is the rate alone: the stage-1
autoencoder is fixed, so the distortion at a given step is fixed too.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from hvae.autoencoder import FeatureAutoencoder, load_autoencoder
from hvae.data import folder_images
from hvae.data.images import downscaled
from hvae.entropy import rate_bits
from hvae.errors import HVAEError
from hvae.fingerprint import fingerprint
from hvae.model import HierarchicalVAE
from hvae.training import TrainConfig, process_state, train

# The codec's entropy model: groups at 1/8 (the features' own resolution), 1/16,
# 1/32 and 1/64 of the image, plus a global group. "sample_size" 16 is a label:
# any feature map whose sides are multiples of 8 works.
CODEC_PRESETS = {
    "base": {
        "width": 64,
        "z_channels": 8,
        "global_z_channels": 16,
        "encoder_blocks": "16x2,16d2,8x2,8d2,4x2,4d2,2x1,2d2,1x1",
        "decoder_blocks": "1x1,2m1,2x1,4m2,4x1,8m4,8x1,16m8,16x1,16r1",
    },
    "tiny": {
        "width": 16,
        "z_channels": 4,
        "global_z_channels": 4,
        "encoder_blocks": "16x1,16d4,4x1,4d4,1x1",
        "decoder_blocks": "1x1,4m1,4x1,16m4,16x1",
    },
}


def make_codec_model(preset: str, in_channels: int) -> HierarchicalVAE:
    if preset not in CODEC_PRESETS:
        raise HVAEError(
            f"unknown codec preset {preset!r}; choose one of {', '.join(CODEC_PRESETS)}"
        )
    return HierarchicalVAE(
        in_channels=in_channels, sample_size=16, rate_conditioned=True, **CODEC_PRESETS[preset]
    )


def feature_pyramid(
    stage1: FeatureAutoencoder, data: str, scales: tuple[float, ...], crop: int, cache_dir: str
) -> list[torch.Tensor]:
    """Features (C, h, w) of every image in ``data`` at every scale whose map holds a crop."""
    key = hashlib.sha256(f"{Path(data).resolve()}|{sorted(scales)}".encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"codec-features-{key}-ae{fingerprint(stage1.model)}.safetensors"
    if path.exists():
        stored = load_file(str(path))
        return [stored[k] for k in sorted(stored, key=int)]
    if not Path(data).is_dir():
        raise HVAEError(f"--data must be a folder of images, got {data!r}")
    arrays, skipped = folder_images(data)
    for message in skipped:
        print(f"skipped: {message}")
    maps = []
    for array in tqdm(arrays, desc="encoding features", dynamic_ncols=True):
        for scale in sorted(set(scales), reverse=True):
            level = downscaled(array, scale)
            pixels = torch.from_numpy(level.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
            features = stage1.encode(pixels)[0].cpu()
            if min(features.shape[-2:]) >= crop:
                maps.append(features.contiguous())
    if not maps:
        raise HVAEError(f"no image in {data} is large enough for {crop}x{crop} feature crops")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({str(i): m for i, m in enumerate(maps)}, str(tmp))
    tmp.rename(path)
    return maps


def crop_sides(crop: int | tuple[int, ...]) -> tuple[int, ...]:
    return (crop,) if isinstance(crop, int) else tuple(crop)


def crop_sampler(maps: list[torch.Tensor], crop: int | tuple[int, ...], batch_size: int, seed: int):
    """Batch ``step`` of random feature crops, a pure function of (seed, step).

    With several crop sides, each step draws its height and width from them, and holds
    ``batch_size`` crops of the smallest side's area: every step sees about as many
    feature positions. Only maps that hold a crop are drawn from.
    """
    sides = crop_sides(crop)
    shapes = [(h, w) for h in sides for w in sides]
    fitting = {
        shape: [m for m in maps if m.shape[-2] >= shape[0] and m.shape[-1] >= shape[1]]
        for shape in shapes
    }
    for (h, w), holding in fitting.items():
        if not holding:
            raise HVAEError(
                f"no training feature map holds a {h}x{w} crop; lower the largest --crop"
            )

    def batch_for_step(step: int) -> torch.Tensor:
        rng = np.random.default_rng([seed, step])
        # One side keeps the draws of the single-size sampler that earlier runs resume with.
        h, w = shapes[rng.integers(len(shapes))] if len(shapes) > 1 else shapes[0]
        count = max(1, round(batch_size * min(sides) ** 2 / (h * w)))
        candidates = fitting[(h, w)]
        batch = []
        for _ in range(count):
            features = candidates[rng.integers(len(candidates))]
            top = rng.integers(features.shape[-2] - h + 1)
            left = rng.integers(features.shape[-1] - w + 1)
            batch.append(features[:, top : top + h, left : left + w])
        return torch.stack(batch)

    return batch_for_step


def make_rate_loss(min_step: float, max_step: float, seed: int):
    """Bits per feature dimension, each crop at its own log-uniform step."""

    def loss_fn(model, features: torch.Tensor, step: int):
        rng = np.random.default_rng([seed, step, 1])
        log_steps = rng.uniform(math.log(min_step), math.log(max_step), features.shape[0])
        steps = torch.from_numpy(np.exp(log_steps)).float().to(features.device)
        feature_bits, latent_bits = rate_bits(model, features, steps)
        dims = features[0].numel()
        total = feature_bits + sum(latent_bits)
        logs = {
            "bpd": float(total.detach().mean() / dims),
            "feature_bpd": float(feature_bits.detach().mean() / dims),
        }
        logs |= {
            f"z{i}_bpd": float(bits.detach().mean() / dims) for i, bits in enumerate(latent_bits)
        }
        return total.mean() / dims, logs

    return loss_fn


def load_entropy_model(folder: str, in_channels: int) -> HierarchicalVAE:
    """A saved rate-conditioned HVAE to continue training: a compression pipeline folder
    (its ``hvae/``) or the model folder itself, or a clear error."""
    path = Path(folder)
    if (path / "hvae" / "config.json").is_file():
        path = path / "hvae"
    if not (path / "config.json").is_file():
        raise HVAEError(f"--init-from {folder}: no compression pipeline or HVAE folder there")
    loaded = HierarchicalVAE.from_pretrained(str(path))
    # Rebuilt from its public config, so that the model saved at the end does not record
    # where this one was loaded from ("_name_or_path").
    model = HierarchicalVAE.from_config(
        {k: v for k, v in loaded.config.items() if not k.startswith("_")}
    )
    model.load_state_dict(loaded.state_dict())
    if not model.config.rate_conditioned:
        raise HVAEError(f"--init-from {folder}: its HVAE is not rate-conditioned, not a codec")
    if model.config.in_channels != in_channels:
        raise HVAEError(
            f"--init-from {folder}: its HVAE codes {model.config.in_channels} feature channels, "
            f"the autoencoder gives {in_channels}"
        )
    return model


def train_codec(
    autoencoder: str,
    data: str,
    out_dir: str,
    config: TrainConfig,
    preset: str = "base",
    crop: int | tuple[int, ...] = 32,
    scales: tuple[float, ...] = (1.0, 0.5, 0.25),
    min_step: float = 0.1,
    max_step: float = 3.0,
    cache_dir: str = "cache",
    resume: bool = True,
    init_from: str | None = None,
) -> HierarchicalVAE:
    """Train the entropy model on ``autoencoder``'s features of ``data``; save a
    compression pipeline folder (autoencoder + hvae) to ``out_dir``. ``init_from``
    continues from a saved entropy model (its architecture replaces ``preset``).
    Several ``crop`` sides mix crop shapes (see ``crop_sampler``), so that the model does not
    learn one map size: every whole image it codes is larger than a training crop."""
    ae_model = load_autoencoder(autoencoder)
    stage1 = FeatureAutoencoder(ae_model, batch_size=1)
    torch.manual_seed(config.seed)
    if init_from is not None:
        model = load_entropy_model(init_from, stage1.latent_channels)
    else:
        model = make_codec_model(preset, stage1.latent_channels)
    sides = crop_sides(crop)
    if any(side % model.feature_multiple for side in sides):
        raise HVAEError(f"--crop must be a multiple of {model.feature_multiple} for this model")
    state = process_state()
    with state.main_process_first():
        maps = feature_pyramid(stage1, data, scales, min(sides), cache_dir)
    config.out_dir = str(Path(out_dir) / "run")
    ema = train(
        model,
        make_rate_loss(min_step, max_step, config.seed),
        crop_sampler(maps, crop, config.batch_size, config.seed),
        config,
        resume=resume,
        description="codec",
    )
    if state.is_main_process:
        from pipelines import HVAECompressionPipeline

        HVAECompressionPipeline(autoencoder=ae_model, hvae=ema).save_pretrained(out_dir)
    return ema
