"""Fitting directions through a pipeline: encode the images, fit one direction set on
their labels (or PCA axes), and register a direction per attribute."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from hvae.directions.base import flatten_groups
from hvae.directions.field import DirectionField
from hvae.directions.flows import AUTO_ADJUSTMENTS, FeatureFlows
from hvae.directions.labels import check_labels
from hvae.directions.moments import MomentDirections
from hvae.directions.vectors import fit_label_direction, fit_pca_directions
from hvae.errors import HVAEError


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


def fit_pca(pipe, images: Sequence[Image.Image], k: int) -> dict[str, float]:
    latents = global_means(pipe, images)
    fits = {}
    for i, (axis, explained) in enumerate(fit_pca_directions(latents, k)):
        pipe.register_direction(f"pc{i + 1}", axis, group=0, source="pca", units="sd")
        fits[f"pc{i + 1}"] = explained
    return fits
