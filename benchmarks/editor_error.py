"""How far a feature editor's output is from the true counterfactual, on training and held-out scenes.

For each hue direction, each scene is moved by ±1 canonical sd (kept in range);
the true counterfactual is rendered and passed through stage 1. Reported per
direction and scene set:

- feature error: |editor(features) - counterfactual features|² as a share of
  |features - counterfactual features|² (0 is perfect; a share of the change);
- the orientation the pixel reader sees shift under the edit (median, degrees),
  for the editor and for the true counterfactual, and how often the editor's
  shift reaches half a canonical step (a preservation failure in
  ``benchmarks/editing.py``).

The same error on training and held-out scenes means the editor is short of
capacity or steps, not of data. The editor runs on the stage-1 features of the
scene itself (not on stage-2 decodes), so this isolates the editor.

    python benchmarks/editor_error.py [--model checkpoints/shapes] [--n 64]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hvae.data.images import to_pil, to_tensor
from hvae.data.scene_estimate import estimate
from hvae.data.shapes import FACTOR_RANGES, HUES, ORIENTATIONS, ShapesDataset, render
from hvae.demo import HELD_OUT_SEED
from hvae.directions import FeatureEditor, pipeline_editor
from pipelines import HVAEPipeline

HUE_DIRECTIONS = ("floor_hue", "wall_hue", "object_hue")


@torch.no_grad()
def measure(pipe, editor: FeatureEditor, spread: dict, scenes, name: str) -> dict:
    stage1 = pipe.stage1
    images, truths = zip(*scenes, strict=True)
    truths = [t.as_dict() for t in truths]
    sources = stage1.encode(list(images))
    before = [estimate(image) for image in to_pil(stage1.decode(sources))]
    errors, changes, shifts, true_shifts = [], [], [], []
    low, high = FACTOR_RANGES[name]
    for sign in (-1.0, 1.0):
        targets = [
            t | {name: float(np.clip(t[name] + sign * np.std(HUES), low, high))} for t in truths
        ]
        strengths = torch.zeros(len(truths), len(editor.names))
        strengths[:, editor.names.index(name)] = torch.tensor(
            [(a[name] - t[name]) / spread[name] for a, t in zip(targets, truths, strict=True)]
        )
        true_features = stage1.encode(
            to_tensor([render(**t, size=images[0].size[0]) for t in targets])
        )
        edited = editor(sources, strengths)
        errors.append(float((edited - true_features).pow(2).sum()))
        changes.append(float((sources - true_features).pow(2).sum()))
        for features, out in ((edited, shifts), (true_features, true_shifts)):
            after = [estimate(image) for image in to_pil(stage1.decode(features))]
            out += [a["orientation"] - b["orientation"] for a, b in zip(after, before, strict=True)]
    half_step = (ORIENTATIONS[1] - ORIENTATIONS[0]) / 2
    shifts, true_shifts = np.abs(shifts), np.abs(true_shifts)
    return {
        "feature_error": sum(errors) / sum(changes),
        "orientation_shift": float(np.nanmedian(shifts)),
        "true_orientation_shift": float(np.nanmedian(true_shifts)),
        "orientation_broken": float(np.nanmean(shifts >= half_step)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/shapes")
    parser.add_argument("--n", type=int, default=64, help="scenes per set")
    parser.add_argument("--training-scenes", type=int, default=12000, help="the editor's --scenes")
    parser.add_argument("--training-seed", type=int, default=0, help="the editor's --seed")
    args = parser.parse_args()

    pipe = HVAEPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    editor = pipeline_editor(pipe, "this benchmark measures")
    size = pipe.training_image_size
    training = ShapesDataset(args.training_scenes, seed=args.training_seed, size=size)
    # Strengths are in sds over the fitting scenes, as the fit measured them.
    spread = {
        name: float(np.std([getattr(training.factors(i), name) for i in range(len(training))]))
        for name in HUE_DIRECTIONS
    }
    sets = {
        "training": [training[i] for i in range(args.n)],
        "held-out": [
            ShapesDataset(args.n, seed=HELD_OUT_SEED, size=size)[i] for i in range(args.n)
        ],
    }
    print(f"model {pipe.fingerprint()}; {args.n} scenes per set; edits of ±1 canonical sd")
    print(
        "| direction | scenes | feature error (share of the change) | orientation shift, median (°) "
        "| true counterfactual's shift (°) | orientation broken |"
    )
    print("|---|---|---|---|---|---|")
    for name in HUE_DIRECTIONS:
        for label, scenes in sets.items():
            r = measure(pipe, editor, spread, scenes, name)
            print(
                f"| {name} | {label} | {r['feature_error']:.4f} | {r['orientation_shift']:.2f} "
                f"| {r['true_orientation_shift']:.2f} | {r['orientation_broken']:.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
