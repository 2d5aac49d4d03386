"""One small interface over any diffusers autoencoder: images <-> feature maps.

``FeatureAutoencoder.encode(images) -> features`` and ``decode(features) -> images``
hide what differs between autoencoder classes: how the latent comes out
(``latent_dist`` or ``latents``), the scaling and shift factors, the stride that
inputs must be padded to, batching, device and dtype.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from PIL import Image

from hvae import patch_autoencoder
from hvae.data.images import to_pil, to_tensor
from hvae.errors import HVAEError

# Our own autoencoder classes, looked up after diffusers' by config class name.
LOCAL_CLASSES = {"PatchAutoencoder": patch_autoencoder.PatchAutoencoder}


def autoencoder_class(class_name: str) -> type:
    cls = LOCAL_CLASSES.get(class_name) or getattr(diffusers, class_name, None)
    if cls is None or not issubclass(cls, diffusers.ModelMixin):
        raise HVAEError(f"'{class_name}' is not a diffusers autoencoder class this package knows")
    return cls


def _read_config(path: str | Path, subfolder: str | None) -> dict:
    local = Path(path) / (subfolder or "")
    if Path(path).exists():
        config_file = local / "config.json"
        if not config_file.is_file():
            raise HVAEError(f"{local}: not a model folder (no config.json)")
        try:
            return json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise HVAEError(f"{config_file}: invalid JSON ({error})") from None
    # Not a local path: treat it as a hub id (needs a network or a filled cache).
    from huggingface_hub import hf_hub_download

    try:
        config_file = hf_hub_download(str(path), "config.json", subfolder=subfolder)
    except Exception as error:  # noqa: BLE001 - hub errors come in many types
        raise HVAEError(
            f"{path}: no such folder, and not loadable from the hub ({error})"
        ) from None
    return json.loads(Path(config_file).read_text())


def load_autoencoder(
    path: str | Path, subfolder: str | None = None, **kwargs
) -> diffusers.ModelMixin:
    """Load a diffusers autoencoder from a folder or hub id, choosing the class from its config."""
    config = _read_config(path, subfolder)
    class_name = config.get("_class_name")
    if not class_name:
        raise HVAEError(f"{path}: config.json has no _class_name, so the model class is unknown")
    cls = autoencoder_class(class_name)
    try:
        return cls.from_pretrained(str(path), subfolder=subfolder, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise HVAEError(f"{path}: could not load {class_name} ({error})") from None


def _config_value(model, name: str, default):
    value = getattr(model.config, name, None)
    return default if value is None else value


class FeatureAutoencoder:
    """Stage 1: images (PIL, or tensors in [-1, 1]) <-> scaled feature maps.

    ``features = (latents - shift_factor) * scaling_factor``, as diffusers
    pipelines do, so stage 2 sees roughly unit-scale inputs.
    """

    def __init__(self, model: diffusers.ModelMixin, batch_size: int = 16, bf16: bool = False):
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.bf16 = bf16
        self.scaling_factor = float(_config_value(model, "scaling_factor", 1.0))
        self.shift_factor = float(_config_value(model, "shift_factor", 0.0))
        self._stride: int | None = getattr(model, "spatial_stride", None)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, subfolder: str | None = None, **kwargs
    ) -> FeatureAutoencoder:
        return cls(load_autoencoder(path, subfolder))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def stride(self) -> int:
        """Spatial downsampling factor; probed once when the class does not declare it."""
        if self._stride is None:
            probe = torch.zeros(1, 3, 64, 64, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                self._stride = 64 // self._latents(probe).shape[-1]
        return self._stride

    @property
    def latent_channels(self) -> int:
        return int(_config_value(self.model, "latent_channels", 4))

    def _autocast(self, bf16: bool | None = None):
        if self.bf16 if bf16 is None else bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.model.encode(pixels)
        if hasattr(output, "latent_dist"):
            return output.latent_dist.mode()  # deterministic: the mean, not a sample
        if hasattr(output, "latents"):
            return output.latents
        return output[0]

    def _as_tensor(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise HVAEError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
            return images
        if isinstance(images, Image.Image):
            images = [images]
        return to_tensor(list(images))

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Images -> features (N, C, ceil(H/stride), ceil(W/stride)), float32 on the model's device."""
        pixels = self._as_tensor(images)
        height, width = pixels.shape[-2:]
        stride = self.stride
        pad_h, pad_w = (-height) % stride, (-width) % stride
        chunks = []
        for batch in pixels.split(self.batch_size):
            batch = batch.to(self.device, self.dtype)
            if pad_h or pad_w:
                # Replicate edges: zero borders would show up as dark frames after decoding.
                batch = F.pad(batch, (0, pad_w, 0, pad_h), mode="replicate")
            with self._autocast():
                latents = self._latents(batch)
            chunks.append((latents.float() - self.shift_factor) * self.scaling_factor)
        return torch.cat(chunks)

    @torch.no_grad()
    def decode(
        self, features: torch.Tensor, image_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Features -> images in [-1, 1], cropped to ``image_size`` (H, W) when given."""
        images = torch.cat([self.decode_with_grad(b) for b in features.split(self.batch_size)])
        if image_size is not None:
            images = images[..., : image_size[0], : image_size[1]]
        return images

    def decode_with_grad(self, features: torch.Tensor, bf16: bool | None = None) -> torch.Tensor:
        """``decode`` of one batch, differentiable in the features (for encoder-side search);
        ``bf16`` overrides the wrapper's precision."""
        latents = features.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        with self._autocast(bf16):
            output = self.model.decode(latents.to(self.dtype))
        sample = output.sample if hasattr(output, "sample") else output[0]
        return sample.float().clamp(-1.0, 1.0)

    def reconstruct(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        pixels = self._as_tensor(images)
        return to_pil(self.decode(self.encode(pixels), tuple(pixels.shape[-2:])))
