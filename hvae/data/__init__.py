"""Datasets: the synthetic scenes, image folders, and pixel arrays cached on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hvae.data.images import find_images, load_image
from hvae.data.shapes import ShapesDataset
from hvae.errors import HVAEError

DEFAULT_CACHE = Path("cache")


def shapes_pixels(
    n: int, seed: int, size: int = 128, cache_dir: str | Path = DEFAULT_CACHE
) -> np.ndarray:
    """``n`` rendered scenes as a uint8 array (n, size, size, 3), cached on disk."""
    path = Path(cache_dir) / f"shapes-n{n}-seed{seed}-{size}px.npy"
    if path.exists():
        return np.load(path)
    dataset = ShapesDataset(n, seed=seed, size=size)
    pixels = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in tqdm(range(n), desc="rendering scenes", dynamic_ncols=True):
        pixels[i] = np.asarray(dataset[i][0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, pixels)
    tmp.rename(path)
    return pixels


def folder_images(
    folder: str | Path, max_side: int | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Every readable image under ``folder`` as uint8 arrays, plus the paths skipped and why."""
    arrays, skipped = [], []
    paths = find_images([folder])
    if not paths:
        raise HVAEError(f"{folder}: no images found")
    for path in tqdm(paths, desc="reading images", dynamic_ncols=True):
        try:
            image = load_image(path)
        except HVAEError as error:
            skipped.append(str(error))
            continue
        if max_side and max(image.size) > max_side:
            image.thumbnail((max_side, max_side))
        arrays.append(np.asarray(image))
    if not arrays:
        raise HVAEError(f"{folder}: none of the {len(paths)} images could be read")
    return arrays, skipped


__all__ = ["ShapesDataset", "find_images", "folder_images", "load_image", "shapes_pixels"]
