"""Training a pipeline's ``FeatureEditor`` on before/after pairs: rendered scenes and
their counterfactuals, or the user's pictures from a pair table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hvae.directions.editor import FeatureEditor
from hvae.directions.fitting import global_means
from hvae.directions.labels import read_pair_table, scene_labels
from hvae.directions.vectors import fit_label_direction
from hvae.errors import HVAEError

SUMMARY_SCENES = 2048  # scenes whose global latents give an editor's linear summaries


@torch.no_grad()
def scene_pairs(stage1, n: int, seed: int, size: int, per_scene: int, batch_size: int = 256):
    """Stage-1 features of ``n`` rendered scenes and of ``per_scene`` counterfactuals of each
    (``hvae.data.shapes.edit_pair``), with the strengths that lead to them: (sources,
    targets, source_index, strengths, names, units). Continuous factors are in sds over the
    ``n`` scenes, shapes in class units."""
    from tqdm.auto import tqdm

    from hvae.data.images import to_tensor
    from hvae.data.shapes import FACTOR_RANGES, SHAPES, ShapesDataset, edit_pair, render_factors

    dataset = ShapesDataset(n, seed=seed, size=size)
    factors = [dataset.factors(i) for i in range(n)]
    continuous = list(FACTOR_RANGES)
    names, units = continuous + list(SHAPES), ["sd"] * len(continuous) + ["class"] * len(SHAPES)
    spread = {name: float(np.std([getattr(f, name) for f in factors])) for name in continuous}
    scale = torch.tensor([spread.get(name, 1.0) for name in names])
    # The pairs' own stream, apart from the scenes': one more seed word.
    rng = np.random.default_rng([seed, n, per_scene])
    wanted = [(i, *edit_pair(factors[i], rng)) for i in range(n) for _ in range(per_scene)]
    source_index = torch.tensor([i for i, _, _ in wanted])
    strengths = (
        torch.tensor([[change.get(name, 0.0) for name in names] for _, _, change in wanted]) / scale
    )

    def encode(all_factors, desc):
        features = []
        for start in tqdm(range(0, len(all_factors), batch_size), desc=desc, dynamic_ncols=True):
            images = [render_factors(f, size) for f in all_factors[start : start + batch_size]]
            features.append(stage1.encode(to_tensor(images)).float().cpu())
        return torch.cat(features)

    sources = encode(factors, "rendering scenes")
    targets = encode([target for _, target, _ in wanted], "rendering counterfactuals")
    return sources, targets, source_index, strengths.float(), names, units


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
