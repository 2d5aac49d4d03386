"""Reading images from disk with readable errors, and converting between PIL and tensors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hvae.errors import HVAEError

# The one size check (also run by the archive parser, which must not import torch, hence
# its home); callers that know their model's pixel multiple pass it.
from hvae.safe_io import MAX_PIXELS, check_image_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Set in ``Image.info`` of images whose transparent pixels ``as_rgb`` painted onto white.
FLATTENED_ALPHA = "hvae_flattened_alpha"


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB. Transparent pixels are composited onto white, as a browser or viewer
    shows them on a white page (converting straight to RGB would keep whatever color they
    hide, often black); the result then carries ``info[FLATTENED_ALPHA]``."""
    if image.mode == "RGB" or not image.has_transparency_data:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:  # an alpha channel, but all opaque
        return rgba.convert("RGB")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB")
    flat.info[FLATTENED_ALPHA] = True
    return flat


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS, multiple: int = 1) -> Image.Image:
    """Open ``path`` as an RGB image (transparency composited onto white, see ``as_rgb``), or
    raise ``HVAEError`` saying why not; sizes are checked with ``check_image_size`` before
    the pixels are decoded."""
    path = Path(path)
    if not path.exists():
        raise HVAEError(f"{path}: no such file")
    if path.is_dir():
        raise HVAEError(f"{path}: is a folder, expected an image file")
    try:
        with Image.open(path) as image:
            try:
                check_image_size(*image.size, multiple=multiple, max_pixels=max_pixels)
            except HVAEError as error:
                raise HVAEError(f"{path}: {error}") from None
            return as_rgb(image)
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
    arrays = np.stack([np.asarray(as_rgb(image), dtype=np.uint8) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float tensor (N, 3, H, W) in [-1, 1] -> PIL images (rounded, clipped)."""
    pixels = images.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255)
    pixels = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p, "RGB") for p in pixels]
