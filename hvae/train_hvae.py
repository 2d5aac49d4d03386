"""Stage-2 recipe: cache stage-1 features once, train the hierarchical VAE, save a pipeline folder."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from hvae.autoencoder import FeatureAutoencoder, load_autoencoder
from hvae.data import folder_images, shapes_pixels
from hvae.errors import HVAEError
from hvae.fingerprint import fingerprint
from hvae.model import HierarchicalVAE
from hvae.training import TrainConfig, process_state, train

# Named stage-2 architectures. "flat" is the single-group baseline of about the
# same size as "base", used by benchmarks/hierarchy.py.
PRESETS = {
    "base": {},
    "flat": {"width": 90, "encoder_blocks": "16x6", "decoder_blocks": "16x1,16r7"},
    "tiny": {
        "width": 16,
        "z_channels": 4,
        "global_z_channels": 8,
        "encoder_blocks": "16x1,16d4,4x1,4d4,1x1",
        "decoder_blocks": "1x1,4m1,4x1,16m4,16x1",
    },
}


PRIOR_CROPS = 4096  # crops the sampling prior is fitted on, when training on crops


def make_hvae(preset: str, in_channels: int, sample_size: int, **overrides) -> HierarchicalVAE:
    if preset not in PRESETS:
        raise HVAEError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return HierarchicalVAE(
        in_channels=in_channels, sample_size=sample_size, **(PRESETS[preset] | overrides)
    )


def _center_square(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(image)
    side = min(pil.size)
    left, top = (pil.width - side) // 2, (pil.height - side) // 2
    return np.asarray(
        pil.crop((left, top, left + side, top + side)).resize(
            (size, size), Image.Resampling.LANCZOS
        )
    )


def cached_features(
    stage1: FeatureAutoencoder,
    data: str,
    image_size: int,
    n_scenes: int,
    seed: int,
    cache_dir: str | Path,
) -> torch.Tensor:
    """Stage-1 features of the whole training set, computed once and kept on disk.

    The cache key includes a digest of the autoencoder, so retraining stage 1
    never silently reuses stale features.
    """
    source = (
        f"shapes-n{n_scenes}-seed{seed}"
        if data == "shapes"
        else hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:12]
    )
    path = (
        Path(cache_dir)
        / f"features-{source}-{image_size}px-ae{fingerprint(stage1.model)}.safetensors"
    )
    if path.exists():
        return load_file(str(path))["features"]
    if data == "shapes":
        pixels = shapes_pixels(n_scenes, seed=seed, size=image_size, cache_dir=cache_dir)
    else:
        if not Path(data).is_dir():
            raise HVAEError(f"--data must be 'shapes' or a folder of images, got {data!r}")
        arrays, skipped = folder_images(data)
        for message in skipped:
            print(f"skipped: {message}")
        pixels = np.stack([_center_square(a, image_size) for a in arrays])
    chunks = []
    for start in tqdm(range(0, len(pixels), 64), desc="encoding features", dynamic_ncols=True):
        batch = (
            torch.from_numpy(pixels[start : start + 64])
            .permute(0, 3, 1, 2)
            .float()
            .div(127.5)
            .sub(1.0)
        )
        chunks.append(stage1.encode(batch).cpu())
    features = torch.cat(chunks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"features": features.contiguous()}, str(tmp))
    tmp.rename(path)
    return features


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


def make_loss(
    kl_warmup_steps: int,
    free_bits: float,
    final_kl_weight: float = 1.0,
    global_free_bits: float | None = None,
    global_only_rate: float = 0.0,
):
    """Negative ELBO with KL warm-up to ``final_kl_weight`` (1.0 = the true ELBO; below 1 = beta-VAE).

    ``global_free_bits`` overrides ``free_bits`` for the global (1x1) group: a floor
    there keeps scene-level information in the group that sampling and editing use,
    instead of letting it spread into the cheap spatial groups. ``global_only_rate``
    is the fraction of images decoded from the global group alone (see
    ``HierarchicalVAE.forward``); which ones depends only on the step.
    """
    if not 0.0 <= global_only_rate < 1.0:
        raise HVAEError(f"global_only_rate must be in [0, 1), got {global_only_rate}")

    def loss_fn(model, features: torch.Tensor, step: int):
        kl_weight = final_kl_weight * min(1.0, (step + 1) / max(1, kl_warmup_steps))
        floors = [
            global_free_bits
            if group.resolution == 1 and global_free_bits is not None
            else free_bits
            for group in _unwrap(model).latent_groups
        ]
        global_only = None
        if global_only_rate > 0:
            draw = torch.rand(len(features), generator=torch.Generator().manual_seed(step))
            global_only = (draw < global_only_rate).to(features.device)
        out = model(features, kl_weight=kl_weight, free_bits=floors, global_only=global_only)
        dims = features[0].numel()
        logs = {"bpd": out.bits_per_dim, "nll_bpd": out.nll_bits_per_dim, "kl_weight": kl_weight}
        logs["elbo_nats"] = -out.bits_per_dim * dims * math.log(2)  # per image
        logs |= {f"kl{i}": kl for i, kl in enumerate(out.kl_bits_per_dim)}
        logs["kl"] = sum(out.kl_bits_per_dim)
        return out.loss, {
            k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in logs.items()
        }

    return loss_fn


def batch_sampler(features: torch.Tensor, batch_size: int, seed: int):
    def batch_for_step(step: int) -> torch.Tensor:
        rng = np.random.default_rng([seed, step])
        return features[torch.from_numpy(rng.integers(0, len(features), batch_size))]

    return batch_for_step


@torch.no_grad()
def evaluate_bits_per_dim(
    model: HierarchicalVAE, features: torch.Tensor, batch_size: int = 256, seed: int = 0
) -> float:
    """Held-out negative ELBO in bits per feature dimension (one posterior sample per image)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    bits = torch.cat(
        [model.code_length_bits(b, generator=generator) for b in features.split(batch_size)]
    )
    return float(bits.mean() / features[0].numel())


def train_hvae(
    autoencoder: str,
    data: str,
    out_dir: str,
    config: TrainConfig,
    preset: str = "base",
    image_size: int = 64,
    n_scenes: int = 12000,
    kl_warmup_steps: int = 500,
    free_bits: float = 0.01,
    kl_weight: float = 1.0,
    global_free_bits: float | None = None,
    global_only_rate: float = 0.0,
    crop_scales: tuple[float, ...] | None = None,
    cache_dir: str = "cache",
    save_pipeline: bool = True,
    resume: bool = True,
    sample_prior: bool = True,
    **model_overrides,
) -> HierarchicalVAE:
    """Train stage 2 on ``autoencoder``'s features of ``data``; save a pipeline folder to ``out_dir``,
    with a sampling prior fitted to the training features (``hvae.latent_prior``) unless
    ``sample_prior`` is False."""
    ae_model = load_autoencoder(autoencoder)
    stage1 = FeatureAutoencoder(ae_model)
    # Build the model first: an architecture that does not fit the feature size
    # should fail before minutes of feature caching, not after.
    feature_side = -(-image_size // stage1.stride)
    torch.manual_seed(config.seed)
    try:
        model = make_hvae(preset, stage1.latent_channels, feature_side, **model_overrides)
    except ValueError as error:
        raise HVAEError(
            f"stage-2 architecture does not fit {feature_side}x{feature_side} features: {error}"
        ) from None
    state = process_state()
    with state.main_process_first():  # one process fills the cache, the others read it
        if crop_scales:
            from hvae.train_codec import crop_sampler, feature_pyramid

            maps = feature_pyramid(stage1, data, crop_scales, feature_side, cache_dir)
            batches = crop_sampler(maps, feature_side, config.batch_size, config.seed)
        else:
            features = cached_features(stage1, data, image_size, n_scenes, config.seed, cache_dir)
            batches = batch_sampler(features, config.batch_size, config.seed)
    config.out_dir = str(Path(out_dir) / "run")
    ema = train(
        model,
        make_loss(kl_warmup_steps, free_bits, kl_weight, global_free_bits, global_only_rate),
        batches,
        config,
        resume=resume,
        description="stage 2",
    )
    if save_pipeline and state.is_main_process:
        from hvae.latent_prior import fit_to_features
        from pipelines import HVAEPipeline

        pipe = HVAEPipeline(autoencoder=ae_model, hvae=ema)
        if sample_prior:
            if crop_scales:
                count = -(-PRIOR_CROPS // config.batch_size)
                batch_steps = range(config.steps, config.steps + count)  # crops no step trained on
                training = torch.cat([batches(step) for step in batch_steps])[:PRIOR_CROPS]
                about = f"{len(training)} random crops of the training features"
            else:
                training, about = features, f"the {len(features)} training feature maps"
            pipe.fitted_prior = fit_to_features(ema, training, about)
        pipe.save_pretrained(out_dir)
    return ema
