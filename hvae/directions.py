"""Attribute directions in the global latent group: fitted from labels, from image statistics, or by PCA.

Every direction is a vector in the global (1x1) group, scaled so that strength 1
moves its attribute by about one standard deviation of the attribute over the
images it was fitted on:

- labelled attributes (a CSV, CelebA's ``list_attr_celeba.txt``, folder names,
  or the scenes' true factors): a ridge regression of the attribute on the
  global posterior means gives w; the direction is ``sd(y) * w / |w|^2``, the
  shortest step that moves the regression's prediction by one sd;
- ``auto``: the same, with labels computed from the pixels (brightness,
  saturation, warmth, contrast, sharpness), so any unlabelled collection gets
  sliders;
- ``pca``: the top principal axes of the global posterior means, each scaled
  by its standard deviation.

The global group is pooled over all positions, so directions apply to images of
any size. Edits keep the detail the latents leave out (``codes.detail``), so the
rest of the image survives a move of the global group.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hvae.errors import HVAEError

AUTO_STATISTICS = ("brightness", "saturation", "warmth", "contrast", "sharpness")


# ---------------------------------------------------------------- labels
def image_statistics(image: Image.Image) -> dict[str, float]:
    """The ``auto`` attributes of one image, computed from its pixels alone."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    laplacian = (
        -4 * luma[1:-1, 1:-1] + luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]
    )
    return {
        "brightness": float(luma.mean()),
        "saturation": float(hsv[..., 1].mean()),
        "warmth": float((rgb[..., 0] - rgb[..., 2]).mean()),
        "contrast": float(luma.std()),
        "sharpness": float(np.abs(laplacian).mean()) if laplacian.size else 0.0,
    }


def auto_labels(images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
    stats = [image_statistics(image) for image in images]
    return {name: np.array([s[name] for s in stats]) for name in AUTO_STATISTICS}


def read_label_table(path: str | Path) -> tuple[list[str], dict[str, list[float]]]:
    """(file names, {column: values}) from a CSV with a header whose first column names the
    file, or from CelebA's ``list_attr_celeba.txt`` (a count line, a header line of attribute
    names, then ``file v1 v2 ...`` rows separated by spaces; ±1 values work as they are)."""
    path = Path(path)
    if not path.is_file():
        raise HVAEError(f"{path}: no such label file")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        raise HVAEError(f"{path}: needs a header line and at least one row")
    if lines[0].strip().isdigit():  # CelebA: count, then attribute names, then rows
        columns = lines[1].split()
        rows = [line.split() for line in lines[2:]]
        rows = [r for r in rows if r]
    else:
        reader = list(csv.reader(lines))
        columns, rows = reader[0][1:], reader[1:]
    names, table = [], {c.strip(): [] for c in columns}
    for number, row in enumerate(rows, 1):
        if len(row) != len(columns) + 1:
            raise HVAEError(
                f"{path}: row {number} has {len(row)} fields, expected {len(columns) + 1} "
                f"(a file name and {len(columns)} labels)"
            )
        names.append(row[0].strip())
        for column, value in zip(columns, row[1:], strict=True):
            try:
                table[column.strip()].append(float(value))
            except ValueError:
                raise HVAEError(
                    f"{path}: row {number}, column {column.strip()!r}: {value!r} is not a number"
                ) from None
    return names, table


def labels_for(
    images: dict[str, Path], table_names: list[str], table: dict[str, list[float]], source: str
) -> tuple[list[Path], dict[str, np.ndarray]]:
    """Match label rows to image files by file name; the images without a row are an error."""
    index = {name: i for i, name in enumerate(table_names)}
    by_name = {Path(name).name: i for name, i in index.items()}
    missing = [name for name in images if name not in index and Path(name).name not in by_name]
    if missing:
        raise HVAEError(
            f"{source}: no labels for {len(missing)} image(s), e.g. {', '.join(missing[:3])}"
        )
    order = [index.get(name, by_name.get(Path(name).name)) for name in images]
    labels = {column: np.asarray(values)[order] for column, values in table.items()}
    return list(images.values()), labels


def folder_labels(paths: Sequence[Path], root: Path) -> dict[str, np.ndarray]:
    """One binary attribute per first-level folder under ``root`` (1 inside it, 0 elsewhere)."""
    folders = [
        p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in paths
    ]
    names = sorted({f for f in folders if f is not None})
    if len(names) < 2:
        raise HVAEError(
            f"{root}: folder labels need images in at least two sub-folders, found {names or 'none'}"
        )
    return {name: np.array([float(f == name) for f in folders]) for name in names}


def scene_labels(n: int, seed: int, size: int) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
    """``n`` rendered scenes and their true factors; each shape is a binary attribute."""
    from hvae.data.shapes import SHAPES, ShapesDataset

    dataset = ShapesDataset(n, seed=seed, size=size)
    images, factors = zip(*(dataset[i] for i in range(n)), strict=True)
    labels = {
        name: np.array([getattr(f, name) for f in factors])
        for name in ("floor_hue", "wall_hue", "object_hue", "scale", "orientation")
    }
    for shape in SHAPES:
        labels[shape] = np.array([float(f.shape == shape) for f in factors])
    return list(images), labels


# ---------------------------------------------------------------- fitting
def check_labels(labels: dict[str, np.ndarray]) -> None:
    for name, values in labels.items():
        if not np.all(np.isfinite(values)):
            raise HVAEError(f"attribute {name!r} has missing or non-finite values")
        if np.ptp(values) == 0:
            raise HVAEError(
                f"attribute {name!r} is constant ({values[0]:g}) over these images: nothing to fit"
            )


def fit_label_direction(
    latents: torch.Tensor, values: np.ndarray, ridge: float = 1e-3
) -> tuple[torch.Tensor, float]:
    """(direction, R^2) for one attribute; ``latents`` are (N, C) global posterior means.

    Adding the direction once moves the ridge regression's prediction of the
    attribute by one standard deviation of ``values``.
    """
    x = latents.double()
    y = torch.as_tensor(values, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean()
    gram = xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc)
    residual = yc - xc @ w
    r2 = float(1 - residual.pow(2).sum() / yc.pow(2).sum())
    direction = float(yc.std()) * w / w.pow(2).sum()
    return direction.float(), r2


def fit_pca_directions(latents: torch.Tensor, k: int) -> list[tuple[torch.Tensor, float]]:
    """The top ``k`` principal axes of the (N, C) global means, each one sd long, with the
    fraction of variance each explains."""
    if not 1 <= k <= latents.shape[1]:
        raise HVAEError(f"--pca K must be in [1, {latents.shape[1]}], got {k}")
    centred = (latents - latents.mean(0)).double()
    _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
    variance = singular.pow(2) / max(1, len(latents) - 1)
    total = float(variance.sum())
    # Sign convention: the largest-magnitude entry positive, so refits agree.
    axes = []
    for i in range(k):
        axis = vt[i] * torch.sign(vt[i][vt[i].abs().argmax()])
        axes.append(((axis * variance[i].sqrt()).float(), float(variance[i]) / total))
    return axes


def project_out(vector: torch.Tensor, others: Sequence[torch.Tensor]) -> torch.Tensor:
    """``vector`` minus its component in the span of ``others`` (conditional editing)."""
    if not others:
        return vector
    basis = torch.stack([o.flatten().double() for o in others], 1)
    q, _ = torch.linalg.qr(basis)
    flat = vector.flatten().double()
    return (flat - q @ (q.T @ flat)).reshape(vector.shape).to(vector.dtype)


# ---------------------------------------------------------------- the pipeline side
@torch.no_grad()
def global_means(pipe, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
    """(N, C) global-group posterior means, in input order; images may differ in size."""
    from tqdm.auto import tqdm

    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.size, []).append(i)
    means = torch.zeros(len(images), pipe.hvae.latent_groups[0].z_channels)
    with tqdm(total=len(images), desc="encoding", dynamic_ncols=True) as progress:
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                codes = pipe.encode([images[i] for i in chunk])
                means[chunk] = codes.latents[0][:, :, 0, 0].float().cpu()
                progress.update(len(chunk))
    return means


def fit_directions(
    pipe, images: Sequence[Image.Image], labels: dict[str, np.ndarray], source: str
) -> dict[str, float]:
    """Fit and register one direction per attribute; returns each fit's R^2."""
    check_labels(labels)
    if len(images) < 8:
        raise HVAEError(f"need at least 8 images to fit directions, got {len(images)}")
    latents = global_means(pipe, images)
    fits = {}
    for name, values in labels.items():
        direction, r2 = fit_label_direction(latents, values)
        pipe.register_direction(name, direction, group=0, source=source, units="sd")
        fits[name] = r2
    return fits


def fit_pca(pipe, images: Sequence[Image.Image], k: int) -> dict[str, float]:
    latents = global_means(pipe, images)
    fits = {}
    for i, (axis, explained) in enumerate(fit_pca_directions(latents, k)):
        pipe.register_direction(f"pc{i + 1}", axis, group=0, source="pca", units="sd")
        fits[f"pc{i + 1}"] = explained
    return fits
