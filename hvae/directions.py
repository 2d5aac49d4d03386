"""Attribute directions in the global latent group: fitted from labels, from image statistics, or by PCA.

Every direction is a vector in the global (1x1) group, scaled so that strength 1
moves its attribute by about one standard deviation of the attribute over the
images it was fitted on:

- labelled attributes (a CSV, CelebA's ``list_attr_celeba.txt``, folder names,
  or the scenes' true factors): the mean change of the global posterior means
  per sd of the attribute, ``Cov(z, y) / sd(y)``;
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
from torch import nn

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

    The direction is the change of the mean latent per standard deviation of the
    attribute, ``Cov(z, y) / sd(y)``: the displacement the data itself shows
    between images one sd apart. It lies where the latents vary, so the decoder
    responds to it. (The shortest step that moves a regression's prediction by
    one sd does not: with correlated latents it is tiny and points where the
    data never goes, and decoding ignores it.) R^2 is that of a ridge regression
    of the attribute on the latents: how much of the attribute the group holds.
    """
    x = latents.double()
    y = torch.as_tensor(values, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean()
    gram = xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc)
    residual = yc - xc @ w
    r2 = float(1 - residual.pow(2).sum() / yc.pow(2).sum())
    covariance = xc.T @ yc / (len(x) - 1)
    direction = covariance / yc.std()
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


class DirectionField(nn.Module):
    """Attribute edits that follow the latent space's curves: ``z -> z + write(y + s) - write(y)``.

    ``z`` is the latents of ``groups`` (the global group alone, or every group),
    flattened and reduced to their top principal components. ``read`` maps them to
    the image's attributes (in sd units); ``write`` maps attributes to the mean
    latents of images that have them. An edit reads the attributes, moves the
    chosen ones by their strengths and adds the change ``write`` predicts, so
    every other attribute fitted with the field is held where it was. Unlike a
    fixed vector this can bend: a hue that goes round the colour circle is a
    curve in latent space, not a line.

    A global field applies to images of any size. A field over every group holds
    the spatial layout too (where the floor is, how tall the object stands), so
    it edits what the global group alone cannot; it needs codes of the feature
    size it was fitted on.
    """

    def __init__(
        self,
        names: Sequence[str],
        dim: int,
        components: int,
        groups: Sequence[int] = (0,),
        hidden: int = 256,
    ):
        super().__init__()
        self.names, self.groups = list(names), list(groups)
        k = len(self.names)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(dim, components))  # principal axes
        self.read = nn.Sequential(nn.Linear(components, hidden), nn.GELU(), nn.Linear(hidden, k))
        self.write = nn.Sequential(nn.Linear(k, hidden), nn.GELU(), nn.Linear(hidden, components))

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    def coordinates(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents.float() - self.mean) @ self.basis

    @torch.no_grad()
    def shift(self, latents: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """(N, dim) flattened latents moved by ``strengths`` (K,) sds of each attribute."""
        attributes = self.read(self.coordinates(latents))
        moved = self.write(attributes + strengths.to(attributes)) - self.write(attributes)
        return (latents.float() + moved @ self.basis.T).to(latents.dtype)

    @classmethod
    def fit(
        cls,
        latents: torch.Tensor,
        labels: dict[str, np.ndarray],
        groups: Sequence[int] = (0,),
        components: int = 256,
        steps: int = 3000,
        seed: int = 0,
    ) -> tuple[DirectionField, dict[str, float]]:
        """Fit both maps on (N, dim) flattened latents and their labels; returns the field
        and each attribute's R^2 as ``read`` predicts it on the fitting set."""
        torch.manual_seed(seed)
        names = list(labels)
        y = torch.tensor(np.stack([labels[n] for n in names], 1), dtype=torch.float32)
        y = (y - y.mean(0)) / y.std(0)
        z = latents.float()
        components = min(components, z.shape[1], len(z) - 1)
        field = cls(names, z.shape[1], components, groups)
        field.mean.copy_(z.mean(0))
        _, _, vt = torch.linalg.svd(z - field.mean, full_matrices=False)
        field.basis.copy_(vt[:components].T)
        coords = field.coordinates(z)
        optimizer = torch.optim.Adam(
            [*field.read.parameters(), *field.write.parameters()], lr=3e-3, weight_decay=1e-4
        )
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                loss = (field.read(coords) - y).pow(2).mean() + (field.write(y) - coords).pow(
                    2
                ).mean()
                loss.backward()
                optimizer.step()
        field.eval()
        with torch.no_grad():
            residual = (field.read(coords) - y).pow(2).mean(0)
        return field, {n: float(1 - r) for n, r in zip(names, residual, strict=True)}


def flatten_groups(latents: Sequence[torch.Tensor], groups: Sequence[int]) -> torch.Tensor:
    """(N, dim): the latents of ``groups``, flattened and concatenated."""
    return torch.cat([latents[g].flatten(1) for g in groups], 1)


def unflatten_groups(
    flat: torch.Tensor, latents: Sequence[torch.Tensor], groups: Sequence[int]
) -> list[torch.Tensor]:
    """``latents`` with ``groups`` replaced by the pieces of ``flat`` (the inverse of flatten)."""
    result = list(latents)
    sizes = [latents[g][0].numel() for g in groups]
    for g, piece in zip(groups, flat.split(sizes, 1), strict=True):
        result[g] = piece.reshape(latents[g].shape).to(latents[g].dtype)
    return result


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
def group_latents(
    pipe, images: Sequence[Image.Image], groups: Sequence[int] = (0,), batch_size: int = 16
) -> torch.Tensor:
    """(N, dim) posterior means of ``groups``, flattened, in input order. Images may differ in
    size when only the global group is asked for; spatial groups need one size."""
    from tqdm.auto import tqdm

    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.size, []).append(i)
    if len(by_size) > 1 and any(pipe.hvae.latent_groups[g].resolution > 1 for g in groups):
        raise HVAEError(
            f"directions over spatial groups need images of one size, got {len(by_size)} sizes"
        )
    rows: list[torch.Tensor | None] = [None] * len(images)
    with tqdm(total=len(images), desc="encoding", dynamic_ncols=True) as progress:
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                codes = pipe.encode([images[i] for i in chunk])
                flat = flatten_groups(codes.latents, groups).float().cpu()
                for row, i in enumerate(chunk):
                    rows[i] = flat[row]
                progress.update(len(chunk))
    return torch.stack(rows)


def global_means(pipe, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
    """(N, C) global-group posterior means, in input order; images may differ in size."""
    return group_latents(pipe, images, (0,), batch_size)


def fit_directions(
    pipe,
    images: Sequence[Image.Image],
    labels: dict[str, np.ndarray],
    source: str,
    all_groups: bool = False,
) -> dict[str, float]:
    """Fit and register one direction per attribute, all sharing one ``DirectionField`` over
    the global group (or, with ``all_groups``, over every group); returns each attribute's
    R^2 as the field reads it from the latents."""
    check_labels(labels)
    if len(images) < 8:
        raise HVAEError(f"need at least 8 images to fit directions, got {len(images)}")
    groups = list(range(len(pipe.hvae.latent_groups))) if all_groups else [0]
    latents = group_latents(pipe, images, groups)
    field, fits = DirectionField.fit(latents, labels, groups)
    global_latents = latents[:, : pipe.hvae.latent_groups[0].z_channels]  # group 0 comes first
    for index, (name, values) in enumerate(labels.items()):
        # The linear direction in the global group stays as the field's first-order summary:
        # what ``keep`` projects out of vector edits.
        direction, _ = fit_label_direction(global_latents, values)
        pipe.register_direction(
            name, direction, group=0, source=source, units="sd", field=field, index=index
        )
    return fits


def fit_pca(pipe, images: Sequence[Image.Image], k: int) -> dict[str, float]:
    latents = global_means(pipe, images)
    fits = {}
    for i, (axis, explained) in enumerate(fit_pca_directions(latents, k)):
        pipe.register_direction(f"pc{i + 1}", axis, group=0, source="pca", units="sd")
        fits[f"pc{i + 1}"] = explained
    return fits
