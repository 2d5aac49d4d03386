"""Where attribute labels come from: pixel statistics (``auto``), a label table (CSV or
CelebA's attribute file), a before/after pair table, sub-folders, or the scenes' true
factors; and the checks every set of labels must pass before a fit."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hvae.errors import HVAEError

AUTO_STATISTICS = ("brightness", "saturation", "warmth", "contrast", "sharpness")


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
    keys, table = _read_table(path, key_columns=1)
    return [k[0] for k in keys], table


def _read_table(
    path: str | Path, key_columns: int
) -> tuple[list[list[str]], dict[str, list[float]]]:
    """(per row, its first ``key_columns`` fields; {column: numbers}) from a CSV with a header,
    or from CelebA's space-separated attribute file (a count line first)."""
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
        columns, rows = reader[0][key_columns:], reader[1:]
    keys, table = [], {c.strip(): [] for c in columns}
    what = "a file name" if key_columns == 1 else f"{key_columns} file names"
    for number, row in enumerate(rows, 1):
        if len(row) != len(columns) + key_columns:
            raise HVAEError(
                f"{path}: row {number} has {len(row)} fields, expected "
                f"{len(columns) + key_columns} ({what} and {len(columns)} labels)"
            )
        keys.append([field.strip() for field in row[:key_columns]])
        for column, value in zip(columns, row[key_columns:], strict=True):
            try:
                table[column.strip()].append(float(value))
            except ValueError:
                raise HVAEError(
                    f"{path}: row {number}, column {column.strip()!r}: {value!r} is not a number"
                ) from None
    return keys, table


def read_pair_table(
    path: str | Path,
) -> tuple[list[tuple[Path, Path]], dict[str, np.ndarray]]:
    """Before/after pairs and the change that leads from one to the other: a CSV whose header
    is ``before,after,<attribute>,...``; each row names two image files (relative to the
    CSV's folder, or absolute) and how much each attribute changes from the first to the
    second, in units of the user's choosing (strength 1 is one such unit)."""
    path = Path(path)
    if path.is_file():
        header = next(csv.reader(path.read_text().splitlines()[:1]), [])
        if [h.strip().lower() for h in header[:2]] != ["before", "after"] or len(header) < 3:
            raise HVAEError(
                f"{path}: the header must be before,after followed by at least one attribute "
                f"column; got {','.join(header) or 'nothing'}"
            )
    keys, table = _read_table(path, key_columns=2)
    root = path.parent
    pairs = [(root / before, root / after) for before, after in keys]
    missing = sorted({str(p) for pair in pairs for p in pair if not p.is_file()})
    if missing:
        raise HVAEError(
            f"{path}: {len(missing)} image file(s) not found, e.g. {', '.join(missing[:3])}"
        )
    changes = {column: np.asarray(values) for column, values in table.items()}
    still = [column for column, values in changes.items() if not values.any()]
    if still:
        raise HVAEError(
            f"{path}: column(s) {', '.join(still)} never change, so they teach nothing; "
            "drop them or add pairs that change them"
        )
    return pairs, changes


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


def check_labels(labels: dict[str, np.ndarray]) -> None:
    for name, values in labels.items():
        if not np.all(np.isfinite(values)):
            raise HVAEError(f"attribute {name!r} has missing or non-finite values")
        if np.ptp(values) == 0:
            raise HVAEError(
                f"attribute {name!r} is constant ({values[0]:g}) over these images: nothing to fit"
            )
