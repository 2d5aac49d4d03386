"""Reading a scene's factors back from its pixels, without any learned model of ours.

The editing benchmark needs to know what an edit did to a decoded image. This
estimator looks only at pixels and the scene geometry of ``hvae.data.shapes``:

- wall and floor hue: the mean colour of the top and bottom corners;
- orientation: the slope of the wall/floor boundary, measured with sub-pixel
  precision in the side columns (clear of the object and its shadow);
- object hue: the median colour of the bright pixels that differ from the
  background;
- scale: the height of the object above its fixed base line, from an object
  mask by hue (shading keeps the object's hue, the shadow keeps the floor's);
- shape: the 5 nearest neighbours among rendered scenes' object silhouettes.

A factor it cannot see is NaN (or None for the shape): orientation when wall
and floor have the same hue, scale and shape when the object's hue matches the
background. ``tests/test_scene_estimate.py`` checks it against true factors.
"""

from __future__ import annotations

import colorsys
import math
from functools import lru_cache

import numpy as np
from PIL import Image

from hvae.data.shapes import BASE, HORIZON, HORIZON_TILT, OBJECT_HEIGHT, ShapesDataset

NOT_SEEN = float("nan")
REFERENCE_SEED = 12  # the scenes whose silhouettes the shape reading compares against
SILHOUETTE_SIDE = 12


def hue_of(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=np.float64) / 255.0))[0]


def hue_shift(before, after):
    """Signed change of hue the short way round the colour circle, in [-0.5, 0.5): hue 0 and 1
    are the same colour, so a red read as 0.999 where it was 0.0 has barely moved."""
    return (np.asarray(after) - np.asarray(before) + 0.5) % 1.0 - 0.5


def hue_gap(a, b):
    """Distance between hues on the colour circle (hue 0 and 1 are the same)."""
    return np.abs(hue_shift(a, b))


def _corner_colours(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w, _ = pixels.shape
    k = max(2, h // 16)
    wall = np.concatenate([pixels[:k, :k], pixels[:k, -k:]]).reshape(-1, 3).mean(0)
    floor = np.concatenate([pixels[-k:, :k], pixels[-k:, -k:]]).reshape(-1, 3).mean(0)
    return wall, floor


def _boundary_slope(pixels: np.ndarray, wall: np.ndarray, floor: np.ndarray) -> float | None:
    """Slope of the wall/floor boundary (image heights per image width), or None if unseen."""
    h, w, _ = pixels.shape
    gap = floor - wall
    if np.linalg.norm(gap) < 40:
        return None
    columns = np.r_[0 : int(0.15 * w), int(0.85 * w) : w]
    floorness = np.clip(((pixels[:, columns] - wall) @ gap) / (gap @ gap), 0, 1)
    wall_height = (1 - floorness).sum(0) / h  # sub-pixel: partly covered rows count in part
    return float(np.polyfit((columns + 0.5) / w, wall_height, 1)[0])


def _measure(image: Image.Image) -> tuple[dict, np.ndarray | None]:
    """Every factor but the shape, and the object's silhouette features (None if unseen)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w, _ = pixels.shape
    wall, floor = _corner_colours(pixels)
    factors = {
        "wall_hue": hue_of(wall),
        "floor_hue": hue_of(floor),
        "orientation": NOT_SEEN,
        "object_hue": NOT_SEEN,
        "scale": NOT_SEEN,
    }
    slope = _boundary_slope(pixels, wall, floor)
    if slope is not None:
        factors["orientation"] = math.degrees(math.asin(np.clip(slope / HORIZON_TILT, -1, 1)))
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    on_wall = ys[:, None] < HORIZON + (slope or 0.0) * (xs[None, :] - 0.5)
    inside = np.zeros((h, w), dtype=bool)
    inside[:, int(0.1 * w) : int(0.9 * w)] = True

    distance = np.linalg.norm(pixels - np.where(on_wall[..., None], wall, floor), axis=2)
    distinct = (distance > 60) & inside
    if distinct.sum() < 8:
        return factors, None
    candidates = pixels[distinct]
    bright = candidates[candidates.max(1) > 0.6 * candidates.max()]
    factors["object_hue"] = object_hue = hue_of(np.median(bright, 0))
    if (
        min(hue_gap(object_hue, factors["wall_hue"]), hue_gap(object_hue, factors["floor_hue"]))
        < 0.05
    ):
        return factors, None

    hues = np.asarray(image.convert("HSV"), dtype=np.float64)[..., 0] / 255.0
    background_hue = np.where(on_wall, factors["wall_hue"], factors["floor_hue"])
    objectness = np.clip(hue_gap(hues, background_hue) / hue_gap(object_hue, background_hue), 0, 1)
    objectness[~inside] = 0
    base_row = BASE * h
    centre = objectness[:, int(0.45 * w) : int(0.55 * w) + 1].mean(1)
    rows = np.nonzero(centre >= 0.5)[0]
    if not len(rows) or rows[0] > base_row - 4:
        return factors, None
    r = rows[0]
    above = centre[r - 1] if r > 0 else 0.0
    top = r + (0.5 - above) / max(1e-6, centre[r] - above) - 0.5  # sub-pixel crossing
    extent = base_row - top
    factors["scale"] = extent / (OBJECT_HEIGHT * h)

    # Silhouette and shading in the object's box, at a fixed resolution.
    import torch
    import torch.nn.functional as F

    half = 0.55 * extent
    top_row, bottom_row = int(max(0, top - 1)), int(min(h, base_row + 1))
    left, right = int(max(0, w / 2 - half)), int(min(w, w / 2 + half + 1))
    box = (slice(top_row, bottom_row), slice(left, right))
    brightness = pixels.max(2) / 255.0
    planes = np.stack([objectness[box], (objectness[box] >= 0.5) * brightness[box]])
    small = F.interpolate(
        torch.from_numpy(planes)[None].float(), size=(SILHOUETTE_SIDE,) * 2, mode="area"
    )[0].numpy()
    shading = small[1] / max(1e-6, float(small[1].max()))
    return factors, np.concatenate([small[0].ravel(), shading.ravel()])


@lru_cache(maxsize=4)
def _references(size: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    for image, truth in ShapesDataset(n, seed=REFERENCE_SEED, size=size):
        _, silhouette = _measure(image)
        if silhouette is not None:
            features.append(silhouette)
            labels.append(truth.shape)
    return np.array(features), np.array(labels)


def estimate(image: Image.Image, references: int = 3000) -> dict:
    """The factors of one rendered (or decoded) scene; unseen ones are NaN, or None for the shape."""
    factors, silhouette = _measure(image)
    factors["shape"] = None
    if silhouette is not None:
        features, labels = _references(image.size[1], references)
        nearest = labels[np.argsort(np.linalg.norm(features - silhouette, axis=1))[:5]]
        names, counts = np.unique(nearest, return_counts=True)
        factors["shape"] = str(names[counts.argmax()])
    return factors


def has_scene_layout(image: Image.Image) -> bool:
    """Whether the wall corners share one saturated colour and the floor corners another: the
    layout every scene has, and what a blurred or colour-bleeding sample lacks."""
    pixels = np.asarray(image.convert("RGB")).astype(float)
    top_left, top_right = pixels[2, 2], pixels[2, -3]
    bottom_left, bottom_right = pixels[-3, 2], pixels[-3, -3]
    walls_agree = np.abs(top_left - top_right).max() < 40
    floors_agree = np.abs(bottom_left - bottom_right).max() < 40
    saturated = all(
        colorsys.rgb_to_hsv(*(corner / 255.0))[1] > 0.7 for corner in (top_left, bottom_left)
    )
    return bool(walls_agree and floors_agree and saturated)


def count_scene_like(images) -> int:
    return sum(has_scene_layout(image) for image in images)
