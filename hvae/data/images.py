"""Reading images from disk with readable errors, and converting between PIL and tensors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hvae.errors import HVAEError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Refuse images whose pixel count could exhaust memory (decompression bombs).
MAX_PIXELS = 64_000_000


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB image, or raise ``HVAEError`` saying why not."""
    path = Path(path)
    if not path.exists():
        raise HVAEError(f"{path}: no such file")
    if path.is_dir():
        raise HVAEError(f"{path}: is a folder, expected an image file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise HVAEError(
                    f"{path}: {width}x{height} pixels is over the limit of {max_pixels}"
                )
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise HVAEError(f"{path}: not an image that Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise HVAEError(f"{path}: unreadable image ({error})") from None


def pad_to_multiple(pixels: torch.Tensor, multiple: int) -> torch.Tensor:
    """(N, C, H, W) pixels padded at the bottom and right, by repeating the edge, to sides
    that are multiples of ``multiple``; decoders crop back to the original size."""
    import torch.nn.functional as F

    pad_h, pad_w = (-pixels.shape[-2]) % multiple, (-pixels.shape[-1]) % multiple
    if not pad_h and not pad_w:
        return pixels
    return F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")


def downscaled(image: np.ndarray, scale: float) -> np.ndarray:
    """An (H, W, 3) uint8 array resized by ``scale`` (<= 1) with Lanczos filtering."""
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image paths.

    Files named explicitly are kept whatever their suffix, so a mislabelled
    image still gets read and a non-image gets a clear error later.
    """
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found += sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif item.exists():
            found.append(item)
        else:
            raise HVAEError(f"{item}: no such file or folder")
    return found


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> float tensor (N, 3, H, W) in [-1, 1]."""
    if not images:
        raise HVAEError("no images given")
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise HVAEError(f"images in one batch must share a size, got {sorted(sizes)}")
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float tensor (N, 3, H, W) in [-1, 1] -> PIL images (rounded, clipped)."""
    pixels = images.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255)
    pixels = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p, "RGB") for p in pixels]
