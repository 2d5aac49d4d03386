"""Attribute directions: fitted from labels, from image statistics, or by PCA.

Strength 1 moves an attribute by about one standard deviation of the attribute
over the images it was fitted on (a feature editor moves a class attribute, the
scene's shape, by one whole class instead). Labels come from a CSV (CelebA's
``list_attr_celeba.txt`` too), folder names, the scenes' true factors, or
``auto`` statistics of the pixels (brightness, saturation, warmth, contrast,
sharpness), so any unlabelled collection gets sliders. The kinds of direction:

- ``DirectionField``: ``read`` maps latents to attributes, ``write`` maps them
  back, and an edit adds ``write(y + s) - write(y)``; over the global group
  (any image size) or every group (the fitting size). It bends with the latent
  space and holds the other attributes fitted with it.
- ``MomentDirections``: per sd of the attribute, the change of every latent
  channel's mean and log spread, and of the kept detail's log spread; any size.
- ``FeatureFlows`` (``auto`` statistics only): per attribute, a linear flow of
  the stage-1 features at every position, fitted on pairs of each picture and
  the same picture adjusted in pixels (brighter, more saturated, ...); any size.
- ``FeatureEditor`` (``hvae.feature_editor``): a small network on the stage-1
  features trained on before/after pairs (scenes and their counterfactuals, or
  the user's pictures from a pair table); the fitting size.
- vectors in one group: ``Cov(z, y) / sd(y)`` (a field's linear summary), the
  ``pca`` axes of the global posterior means, or any the caller registers.

Edits keep the detail the latents leave out (``codes.detail``), so the rest of
the image survives.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn

from hvae.data.images import to_pil
from hvae.errors import HVAEError
from hvae.feature_editor import FeatureEditor

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


def _map_pixels(image: Image.Image, change) -> Image.Image:
    """``image`` with ``change`` applied to its RGB values (0-255, float), rounded and clipped."""
    rgb = change(np.asarray(image.convert("RGB"), dtype=np.float64))
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))


def _warm(image: Image.Image, amount: float) -> Image.Image:
    return _map_pixels(image, lambda rgb: rgb * np.array([1 + amount, 1.0, 1 - amount]))


def _lighten(image: Image.Image, amount: float) -> Image.Image:
    # Additive, not multiplicative: scaling would raise contrast (luma std) along with it.
    return _map_pixels(image, lambda rgb: rgb + 255 * amount)


# Pixel adjustments that move each ``auto`` statistic, as functions of (image, step) for
# steps -1 and +1; ``FeatureFlows`` learns what they do to the features. Each step moves
# its statistic by about 0.2-0.6 sd on photos: big enough to measure through stage 1,
# small enough that one linear flow describes both directions.
AUTO_ADJUSTMENTS = {
    "brightness": lambda image, step: _lighten(image, 0.06 * step),
    "saturation": lambda image, step: ImageEnhance.Color(image).enhance(1.6**step),
    "warmth": lambda image, step: _warm(image, 0.08 * step),
    "contrast": lambda image, step: ImageEnhance.Contrast(image).enhance(1.3**step),
    "sharpness": lambda image, step: ImageEnhance.Sharpness(image).enhance(1 + 0.9 * step),
}


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
    """(direction, R^2) for one attribute; ``latents`` are (N, C): global posterior means, or
    any per-image quantity (moment directions fit channel means and log spreads this way).

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


class LatentEdits:
    """For direction sets that move latents: ``edit_codes``, the pipeline's one entry point
    for every kind of direction set, through their ``apply``."""

    def edit_codes(self, codes, strengths: torch.Tensor, keep: Sequence[int] = ()) -> None:
        """Move ``codes`` (already a copy) by ``strengths`` (K,), holding attributes ``keep``."""
        codes.latents, codes.detail = self.apply(codes.latents, codes.detail, strengths, keep)
        codes.edited_groups = codes.edited_groups | set(self.groups)


class DirectionField(LatentEdits, nn.Module):
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

    kind = "field"

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

    @property
    def any_size(self) -> bool:
        """Whether codes of any feature size edit (only the pooled global group is used)."""
        return self.groups == [0]

    def describe(self) -> dict:
        """What rebuilds this field before its weights load (a ``fields.json`` entry)."""
        return {
            "kind": "field",
            "names": self.names,
            "groups": self.groups,
            "dim": self.dim,
            "components": self.basis.shape[1],
            "hidden": self.read[0].out_features,
        }

    def apply(
        self,
        latents: list[torch.Tensor],
        detail: torch.Tensor | None,
        strengths: torch.Tensor,
        keep: Sequence[int] = (),
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Codes' latents and kept detail moved by ``strengths`` (K,); the detail is kept.
        ``keep`` changes nothing: the field already holds every attribute it was fitted with."""
        flat = flatten_groups(latents, self.groups)
        if flat.shape[1] != self.dim:
            raise HVAEError(
                f"directions {', '.join(self.names)} were fitted on codes of another feature "
                f"size (their groups hold {self.dim} numbers, these {flat.shape[1]}); "
                "use images of the size they were fitted on"
            )
        return unflatten_groups(self.shift(flat, strengths), latents, self.groups), detail

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


class MomentDirections(LatentEdits, nn.Module):
    """Attribute edits as changes of every latent channel's mean and spread, at any size.

    For each attribute, group and channel it stores how the channel's spatial mean
    and the log of its spatial std change per sd of the attribute over the fitting
    images (``Cov(moment, y) / sd(y)``), and the same for the log std of each
    channel of the kept detail. An edit shifts each channel's mean and scales its
    deviations from the mean by those amounts (as AdaIN restyles a feature map).
    Means carry colour and light; spreads carry contrast, and the detail's spread
    sharpness, which no shift of a pooled global latent can change. Being
    per-channel, it applies to codes of any size.
    """

    kind = "moments"
    any_size = True

    def __init__(self, names: Sequence[str], group_channels: Sequence[int], detail_channels: int):
        super().__init__()
        self.names = list(names)
        self.groups = list(range(len(group_channels)))
        k = len(self.names)
        for g, channels in enumerate(group_channels):
            self.register_buffer(f"shift{g}", torch.zeros(k, channels))
            self.register_buffer(f"log_scale{g}", torch.zeros(k, channels))
        self.register_buffer("detail_log_scale", torch.zeros(k, detail_channels))

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "names": self.names,
            "group_channels": [getattr(self, f"shift{g}").shape[1] for g in self.groups],
            "detail_channels": self.detail_log_scale.shape[1],
        }

    def _parts(self) -> list[torch.Tensor]:
        return [
            *(getattr(self, f"{kind}{g}") for g in self.groups for kind in ("shift", "log_scale")),
            self.detail_log_scale,
        ]

    @torch.no_grad()
    def apply(
        self,
        latents: list[torch.Tensor],
        detail: torch.Tensor | None,
        strengths: torch.Tensor,
        keep: Sequence[int] = (),
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Latents and detail moved by ``strengths`` (K,). Each moved attribute's direction
        (all its shifts and log scales as one vector) is first projected orthogonally to
        those of the attributes ``keep`` (indices), as ``keep`` does for vector edits. That
        vector mixes mean shifts (latent units) with log scales (unitless), so "orthogonal"
        weighs both as they come; it is a first-order way to hold the kept statistics."""
        channels = [getattr(self, f"shift{g}").shape[1] for g in self.groups]
        if [z.shape[1] for z in latents] != channels:
            raise HVAEError(
                f"directions {', '.join(self.names)} were fitted on a model whose groups have "
                f"{channels} channels; these codes have {[z.shape[1] for z in latents]}"
            )
        parts = self._parts()
        matrix = torch.cat(parts, 1)  # (K, every shift and log scale)
        combined = matrix.new_zeros(matrix.shape[1])
        for k, strength in enumerate(strengths.tolist()):
            if strength:
                held = [matrix[j] for j in keep if j != k]
                combined += strength * project_out(matrix[k], held)
        pieces = iter(combined.split([p.shape[1] for p in parts]))
        moved = []
        for z in latents:
            shift = next(pieces).to(z)[None, :, None, None]
            scale = next(pieces).exp().to(z)[None, :, None, None]
            mean = z.mean((2, 3), keepdim=True)
            moved.append(mean + scale * (z - mean) + shift)
        detail_scale = next(pieces).exp()
        if detail is not None:
            detail = detail * detail_scale.to(detail)[None, :, None, None]
        return moved, detail

    @classmethod
    def fit(
        cls,
        moments: dict[str, list[torch.Tensor]],
        labels: dict[str, np.ndarray],
    ) -> tuple[MomentDirections, dict[str, float]]:
        """Fit on ``channel_moments`` of the images and their labels; returns the directions and
        each attribute's R^2 from the global group's latents (a ridge regression).

        Each attribute is fitted on its own, so a direction carries what comes with its
        attribute in the data (in photos, saturated pictures tend to be dark); ``keep``
        at edit time removes that. Regressing all attributes jointly instead measured
        worse: the saturation slider moved saturation monotonically on 4 of 10 held-out
        pictures instead of 6."""
        names = list(labels)
        means, log_stds = moments["means"], moments["log_stds"]
        directions = cls(names, [m.shape[1] for m in means], moments["detail_log_stds"].shape[1])
        fits = {}
        for k, name in enumerate(names):
            for g, (mean, log_std) in enumerate(zip(means, log_stds, strict=True)):
                getattr(directions, f"shift{g}")[k] = fit_label_direction(mean, labels[name])[0]
                getattr(directions, f"log_scale{g}")[k] = fit_label_direction(
                    log_std, labels[name]
                )[0]
            directions.detail_log_scale[k] = fit_label_direction(
                moments["detail_log_stds"], labels[name]
            )[0]
            fits[name] = fit_label_direction(means[0], labels[name])[1]
        return directions.eval(), fits


FLOW_BANDS = 3  # the image mean, the smooth deviation from it, and the detail
FLOW_BOX = 3  # the box filter that separates the smooth band from the detail


def feature_bands(features: torch.Tensor, valid: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, 3C, H, W): the features' mean over the image, the smooth band's deviation from
    it (a FLOW_BOX box mean), and the detail band; the three add up to the features.
    ``valid`` (rows, columns) limits the mean to the image's own cells, not its padding."""
    half = FLOW_BOX // 2
    smooth = F.avg_pool2d(F.pad(features, (half,) * 4, mode="replicate"), FLOW_BOX, 1)
    rows, columns = valid or features.shape[-2:]
    mean = features[..., :rows, :columns].mean((2, 3), keepdim=True).expand_as(features)
    return torch.cat([mean, smooth - mean, features - smooth], 1)


def flow_features(
    features: torch.Tensor, generator: torch.Tensor, valid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Features moved along the flow ``exp(generator)``, which acts on each position's
    [image mean; smooth deviation; detail; 1]; the moved bands add back up to features.
    Computed in float32 at least: summing the bands back in bf16 would add rounding noise."""
    dtype = torch.promote_types(features.dtype, torch.float32)
    bands = feature_bands(features.to(dtype), valid)
    step = torch.linalg.matrix_exp(generator.double()).to(bands)
    moved = torch.einsum("dc,nchw->ndhw", step[:-1, :-1], bands)
    moved = moved + step[:-1, -1][None, :, None, None]
    return moved.unflatten(1, (FLOW_BANDS, features.shape[1])).sum(1).to(features.dtype)


class FeatureFlows(nn.Module):
    """Attribute edits as linear flows of the stage-1 features, the same at every position.

    Per attribute, a generator ``G`` acts on each position's bands (the image's mean
    features, the smooth deviation from them, the detail) and a constant; strength
    ``s`` maps them by ``exp(s G)``, and the bands add back up to features. ``G`` is
    fitted on pairs: each picture and the same picture adjusted in pixels
    (``AUTO_ADJUSTMENTS``: brighter, more saturated, ...), as the least-squares
    change of the bands per sd of the statistic, both measured through stage 1.

    Why this form: colour and light are per-pixel linear maps, and the features
    carry them nearly so; the mean band lets contrast pivot about the picture's
    own mean, and the detail band lets sharpness scale fine structure. The
    exponential keeps large strengths sensible (desaturating approaches grey
    instead of passing through it), and several edits add generators before one
    exponential. Fitted on pairs, a direction carries what its adjustment changes,
    not what merely comes with the attribute across pictures (in photos, saturated
    ones tend to be dark), which regressing across pictures picks up.

    ``keep`` solves a joint fit instead: on the pairs of the moved and the kept
    attributes' adjustments, the band changes are regressed on the changes of all
    those statistics together, so the moved attribute's generator is its change
    with the kept ones held (to first order). Each adjustment's normal equations
    over every attribute are stored, so any subset can be kept; without ``keep``
    the same solve over one adjustment's pairs gives the stored generators.

    It moves no latents: an edit adds its generator to ``codes.feature_flow``, and
    decoding applies it to the features (the latents decoded plus the kept detail).
    """

    kind = "feature-flow"
    any_size = True
    groups: tuple[int, ...] = ()
    ridge = 1e-4  # relative to the mean diagonal of the normal equations

    def __init__(self, names: Sequence[str], channels: int):
        super().__init__()
        self.names = list(names)
        self.channels = channels
        size, k = self.state_size, len(names)
        self.register_buffer("generators", torch.zeros(k, size, size))
        # Per adjustment: normal equations of band changes on (statistic change x state).
        self.register_buffer("grams", torch.zeros(k, k * size, k * size, dtype=torch.float64))
        self.register_buffer("crosses", torch.zeros(k, k * size, size - 1, dtype=torch.float64))

    @property
    def state_size(self) -> int:
        """Bands of every channel, plus the constant."""
        return FLOW_BANDS * self.channels + 1

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "names": self.names,
            "channels": self.channels,
            "bands": FLOW_BANDS,
            "box": FLOW_BOX,
        }

    def edit_codes(self, codes, strengths: torch.Tensor, keep: Sequence[int] = ()) -> None:
        """Add the edit's generator to ``codes.feature_flow`` (``codes`` is already a copy).
        A zero edit adds nothing, so it decodes exactly as the unedited codes."""
        generator = self.generator(strengths, keep)
        if generator.any():
            previous = codes.feature_flow
            codes.feature_flow = generator if previous is None else previous + generator

    def generator(self, strengths: torch.Tensor, keep: Sequence[int] = ()) -> torch.Tensor:
        """The generator of an edit by ``strengths`` (K,), each moved attribute holding the
        attributes ``keep`` (indices)."""
        combined = torch.zeros_like(self.generators[0])
        for k, strength in enumerate(strengths.tolist()):
            if strength:
                held = [j for j in keep if j != k]
                combined += strength * (self.solve(k, held) if held else self.generators[k])
        return combined

    def solve(self, k: int, held: Sequence[int] = ()) -> torch.Tensor:
        """Attribute ``k``'s generator fitted on the pairs of the adjustments of ``k`` and
        ``held``, jointly with the held attributes' generators."""
        size, attributes = self.state_size, [k, *held]
        rows = torch.cat([torch.arange(j * size, (j + 1) * size) for j in attributes])
        gram = self.grams[attributes].sum(0)[rows][:, rows]
        cross = self.crosses[attributes].sum(0)[rows]
        generator = torch.zeros_like(self.generators[k])
        generator[:-1] = solve_ridge(gram, cross, self.ridge)[:size].T.float()
        return generator

    def add_pair(self, k: int, state: torch.Tensor, change: torch.Tensor, stats: torch.Tensor):
        """Add one pair of adjustment ``k``: ``state`` (S, P) the original's bands and constant
        at P positions, ``change`` (S - 1, P) the bands' change, ``stats`` (K,) every
        statistic's change in sds."""
        inputs = (stats.double()[:, None, None] * state.double()[None]).flatten(0, 1)
        self.grams[k] += inputs @ inputs.T
        self.crosses[k] += inputs @ change.double().T

    @classmethod
    @torch.no_grad()
    def fit(
        cls, stage1, images: Sequence[Image.Image], grey_copies: bool = True
    ) -> tuple[FeatureFlows, dict[str, float]]:
        """Fit on ``images`` (any sizes) through ``stage1`` (a ``FeatureAutoencoder``), and on a
        grey copy of each unless ``grey_copies`` is off (which halves the time); returns the flows
        and, per attribute, the (centred) R^2 with which its flow predicts the band changes
        of its own pairs."""
        from tqdm.auto import tqdm

        if len(images) < 2:
            raise HVAEError(f"feature flows need at least 2 images to fit, got {len(images)}")
        names = list(AUTO_ADJUSTMENTS)

        def through_stage1(image):
            features = stage1.encode([image])
            decoded = to_pil(stage1.decode(features, (image.height, image.width)))[0]
            bands = feature_bands(features)[0].flatten(1).double().cpu()
            return torch.cat([bands, torch.ones_like(bands[:1])]), image_statistics(decoded)

        # Grey copies of the pictures teach what an adjustment cannot do: saturating a grey
        # picture changes nothing. Such a pair is entered as a request of the usual size
        # (the step's mean change over the pictures) that changed nothing; with its own
        # change of the statistic (none) it would constrain nothing, and the saturation
        # flow tinted grey photos both ways. The rule needs the step's mean, so it applies
        # to the copies, which come last; a picture already grey is covered by its copy.
        greys = [image.convert("L").convert("RGB") for image in images] if grey_copies else []
        pictures = [*images, *greys]
        originals = [through_stage1(i) for i in tqdm(pictures, desc="encoding", dynamic_ncols=True)]
        spread = {
            n: max(float(np.std([stats[n] for _, stats in originals[: len(images)]])), 1e-12)
            for n in names
        }
        flows = cls(names, (originals[0][0].shape[0] - 1) // FLOW_BANDS)
        totals = []  # per adjustment: (count, sum, sum of squares) of the band changes
        progress = tqdm(
            total=len(names) * 2 * len(pictures), desc="fitting flows", dynamic_ncols=True
        )
        for k, name in enumerate(names):
            count, total, squares = 0, 0.0, 0.0
            for step in (-1, 1):
                usual = 0.0  # the step's mean change of the statistic over the pictures
                for index, (image, (state, stats)) in enumerate(
                    zip(pictures, originals, strict=True)
                ):
                    moved, moved_stats = through_stage1(AUTO_ADJUSTMENTS[name](image, step))
                    change = (moved - state)[:-1]
                    stat_changes = torch.tensor(
                        [(moved_stats[n] - stats[n]) / spread[n] for n in names]
                    )
                    if index < len(images):
                        usual += float(stat_changes[k]) / len(images)
                    elif abs(float(stat_changes[k])) < 0.01 * abs(usual):
                        stat_changes[k] = usual
                    flows.add_pair(k, state, change, stat_changes)
                    count += change.shape[1]
                    total = total + change.sum(1)
                    squares += float(change.pow(2).sum())
                    progress.update()
            totals.append((count, total, squares))
        progress.close()
        fits = {}
        for k, name in enumerate(names):
            flows.generators[k] = flows.solve(k)
            fits[name] = flows.r_squared(k, *totals[k])
        return flows.eval(), fits

    def r_squared(self, k: int, count: int, total: torch.Tensor, squares: float) -> float:
        """Centred R^2 of attribute ``k``'s generator on its own pairs, from the normal
        equations (no pair is kept in memory) and the changes' count, sum and squares."""
        size = self.state_size
        block = slice(k * size, (k + 1) * size)
        gram, cross = self.grams[k][block, block], self.crosses[k][block]
        weights = self.generators[k][:-1].double().T
        residual = squares - 2 * (weights * cross).sum() + (weights * (gram @ weights)).sum()
        centred = squares - float(total.pow(2).sum()) / max(count, 1)
        return 1 - float(residual) / max(centred, 1e-12)


def solve_ridge(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """Least-squares weights from normal equations, with a ridge relative to their scale."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * gram.diagonal().mean() * eye, cross)


DirectionSet = DirectionField | MomentDirections | FeatureFlows | FeatureEditor


def load_direction_set(spec: dict) -> DirectionSet:
    """An empty direction set built from its ``describe()`` entry, ready for its weights."""
    if spec.get("kind") == FeatureEditor.kind:
        return FeatureEditor(
            spec["names"], spec["units"], spec["channels"], spec["width"], spec["blocks"]
        )
    if spec.get("kind", "field") == "moments":
        return MomentDirections(spec["names"], spec["group_channels"], spec["detail_channels"])
    if spec.get("kind") == "feature-flow":
        made = (spec.get("bands", FLOW_BANDS), spec.get("box", FLOW_BOX))
        if made != (FLOW_BANDS, FLOW_BOX):
            raise HVAEError(
                f"these feature flows were fitted with {made[0]} bands and a {made[1]}-cell box; "
                f"this version uses {FLOW_BANDS} and {FLOW_BOX}: refit them"
            )
        return FeatureFlows(spec["names"], spec["channels"])
    return DirectionField(
        spec["names"], spec["dim"], spec["components"], spec["groups"], spec["hidden"]
    )


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
    # An orthonormal basis of the span from the SVD, not QR: kept directions that repeat or
    # depend on each other span fewer dimensions than their count, and QR would add
    # arbitrary ones and strip an unrelated part of the edit.
    u, singular, _ = torch.linalg.svd(basis, full_matrices=False)
    span = u[:, singular > singular.max() * 1e-9] if singular.max() > 0 else u[:, :0]
    flat = vector.flatten().double()
    return (flat - span @ (span.T @ flat)).reshape(vector.shape).to(vector.dtype)


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


@torch.no_grad()
def channel_moments(pipe, images: Sequence[Image.Image]) -> dict[str, list[torch.Tensor]]:
    """Per image (any sizes): every group's channel means and log spatial stds, and the log
    std of each channel of the kept detail. ``MomentDirections.fit`` takes these."""
    from tqdm.auto import tqdm

    means: list[list[torch.Tensor]] = [[] for _ in pipe.hvae.latent_groups]
    log_stds: list[list[torch.Tensor]] = [[] for _ in pipe.hvae.latent_groups]
    detail = []
    for image in tqdm(images, desc="encoding", dynamic_ncols=True):
        codes = pipe.encode([image])
        for g, z in enumerate(codes.latents):
            z = z[0].flatten(1).float().cpu()
            means[g].append(z.mean(1))
            log_stds[g].append(z.std(1, correction=0).clamp_min(1e-6).log())
        detail.append(
            codes.detail[0].flatten(1).float().cpu().std(1, correction=0).clamp_min(1e-6).log()
        )
    return {
        "means": [torch.stack(m) for m in means],
        "log_stds": [torch.stack(s) for s in log_stds],
        "detail_log_stds": torch.stack(detail),
    }


DIRECTION_KINDS = ("field", "all-groups-field", "moments", "feature-flow", "feature-editor")
SUMMARY_SCENES = 2048  # scenes whose global latents give an editor's linear summaries


def fit_directions(
    pipe,
    images: Sequence[Image.Image],
    labels: dict[str, np.ndarray],
    source: str,
    kind: str = "field",
) -> dict[str, float]:
    """Fit and register one direction per attribute, all sharing one direction set: a
    ``DirectionField`` over the global group ("field") or over every group
    ("all-groups-field"), ``MomentDirections`` ("moments") or ``FeatureFlows``
    ("feature-flow", auto labels only). Returns each attribute's R^2 as the set reads it
    from the latents (for flows: as each flow predicts its fitting pairs' feature changes)."""
    check_labels(labels)
    if kind not in DIRECTION_KINDS:
        raise HVAEError(f"kind must be one of {', '.join(DIRECTION_KINDS)}, got {kind!r}")
    if kind == "feature-editor":
        raise HVAEError(
            "a feature editor is trained on pairs, not labels: use fit_scene_editor "
            "(hvae directions fit --scenes N --kind feature-editor)"
        )
    if len(images) < 8:
        raise HVAEError(f"need at least 8 images to fit directions, got {len(images)}")
    if kind == "feature-flow":
        if source != "auto" or not set(labels) <= set(AUTO_ADJUSTMENTS):
            raise HVAEError(
                "feature flows are fitted on pixel adjustments of the auto statistics "
                f"({', '.join(AUTO_ADJUSTMENTS)}); use --auto with --kind feature-flow "
                f"(got {source} labels: {', '.join(labels)})"
            )
        field, fits = FeatureFlows.fit(pipe.stage1, images)
        global_latents = global_means(pipe, images)
    elif kind == "moments":
        moments = channel_moments(pipe, images)
        field, fits = MomentDirections.fit(moments, labels)
        global_latents = moments["means"][0]
    else:
        groups = list(range(len(pipe.hvae.latent_groups))) if kind != "field" else [0]
        latents = group_latents(pipe, images, groups)
        field, fits = DirectionField.fit(latents, labels, groups)
        global_latents = latents[:, : pipe.hvae.latent_groups[0].z_channels]  # group 0 first
    for name, values in labels.items():
        # The linear direction in the global group stays as the field's first-order summary:
        # what ``keep`` projects out of vector edits.
        direction, _ = fit_label_direction(global_latents, values)
        pipe.register_direction(
            name, direction, 0, source, "sd", field=field, index=field.names.index(name)
        )
    return fits


def fit_scene_editor(
    pipe,
    n: int,
    seed: int,
    per_scene: int = 3,
    steps: int = 4000,
    lr: float = 1e-3,
    resume: bool = False,
    width: int = 32,
    mixed_precision: str = "auto",
) -> dict[str, float]:
    """Fit and register a ``FeatureEditor`` on ``n`` rendered scenes and ``per_scene``
    counterfactuals of each (with ``resume``, train the pipeline's own editor further on
    them); returns each attribute's share of its held-out pairs' feature change that the
    editor predicts (``FeatureEditor.fit``)."""
    from hvae.feature_editor import scene_pairs

    if n < 8:
        raise HVAEError(f"need at least 8 scenes to fit an editor, got {n}")
    start = _editor_to_resume(pipe, resume)
    size = pipe.training_image_size
    pairs = scene_pairs(pipe.stage1, n, seed, size, per_scene)
    images, labels = scene_labels(min(n, SUMMARY_SCENES), seed, size)
    global_latents = global_means(pipe, images)
    # The first-order summary in the global group, as for the other sets: what ``keep``
    # projects out of vector edits.
    summaries = {name: fit_label_direction(global_latents, labels[name])[0] for name in pairs[4]}
    return _fit_editor(
        pipe, pairs, summaries, "scene pairs", steps, lr, start, width, mixed_precision
    )


def fit_pair_editor(
    pipe,
    table: str | Path,
    steps: int = 4000,
    lr: float = 1e-3,
    resume: bool = False,
    width: int = 32,
    mixed_precision: str = "auto",
) -> dict[str, float]:
    """Fit and register a ``FeatureEditor`` on the user's before/after pairs
    (``read_pair_table``); strengths are the table's changes as given, and images must be
    the pipeline's training size, the size the editor then edits at."""
    from hvae.data.images import load_image

    pairs, changes = read_pair_table(table)
    start = _editor_to_resume(pipe, resume)
    size = pipe.training_image_size
    befores = sorted({before for before, _ in pairs})
    images = {p: load_image(p) for p in [*befores, *(after for _, after in pairs)]}
    wrong = sorted(str(p) for p, image in images.items() if image.size != (size, size))
    if wrong:
        raise HVAEError(
            f"{len(wrong)} pair image(s) are not {size}×{size}, the size this pipeline's editor "
            f"edits at, e.g. {', '.join(wrong[:3])}"
        )
    index = {p: i for i, p in enumerate(befores)}
    sources = pipe.stage1.encode([images[p] for p in befores]).float().cpu()
    targets = pipe.stage1.encode([images[after] for _, after in pairs]).float().cpu()
    source_index = torch.tensor([index[before] for before, _ in pairs])
    names = list(changes)
    strengths = torch.tensor(np.stack([changes[n] for n in names], 1), dtype=torch.float32)
    # The first-order summary in the global group: the least-squares change of the global
    # latents per unit of each attribute, over the pairs.
    # Each picture is encoded once, however many pairs start from it.
    moved = (
        global_means(pipe, [images[a] for _, a in pairs])
        - global_means(pipe, [images[b] for b in befores])[source_index]
    )
    per_unit = torch.linalg.lstsq(strengths.double(), moved.double()).solution.float()
    summaries = dict(zip(names, per_unit, strict=True))
    units = [f"unit of {Path(table).name}"] * len(names)
    pair_set = (sources, targets, source_index, strengths, names, units)
    return _fit_editor(pipe, pair_set, summaries, "pairs", steps, lr, start, width, mixed_precision)


def pipeline_editor(pipe, purpose: str) -> FeatureEditor:
    """The pipeline's one feature editor; ``purpose`` starts the error when it has none or several."""
    editors = {
        id(d.field): d.field
        for d in pipe._directions.values()
        if isinstance(d.field, FeatureEditor)
    }
    if len(editors) != 1:
        raise HVAEError(f"{purpose} the pipeline's feature editor; it has {len(editors)}")
    (editor,) = editors.values()
    return editor


def _editor_to_resume(pipe, resume: bool) -> FeatureEditor | None:
    """The pipeline's own editor when ``resume`` asks for it (checked before any pair is made)."""
    return pipeline_editor(pipe, "--resume continues") if resume else None


def _fit_editor(
    pipe, pairs, summaries, source, steps, lr, start, width, mixed_precision
) -> dict[str, float]:
    """Train an editor on ``pairs`` (``FeatureEditor.fit``'s first six arguments), or continue
    ``start``, and register one direction per attribute."""
    from hvae.training import resolve_precision

    # The editor trains on the CPU even on a machine with a GPU, so "auto" asks the CPU.
    bf16 = resolve_precision(mixed_precision, on_gpu=False) == "bf16"
    editor, fits = FeatureEditor.fit(
        *pairs, steps=steps, lr=lr, start=start, width=width, bf16=bf16
    )
    for index, (name, units) in enumerate(zip(editor.names, editor.units, strict=True)):
        pipe.register_direction(name, summaries[name], 0, source, units, editor, index)
    return fits


def fit_pca(pipe, images: Sequence[Image.Image], k: int) -> dict[str, float]:
    latents = global_means(pipe, images)
    fits = {}
    for i, (axis, explained) in enumerate(fit_pca_directions(latents, k)):
        pipe.register_direction(f"pc{i + 1}", axis, group=0, source="pca", units="sd")
        fits[f"pc{i + 1}"] = explained
    return fits
