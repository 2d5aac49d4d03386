"""Edit success and preservation on held-out scenes, measured without the model.

For every bundled direction whose factor we can estimate from pixels alone
(floor_hue, wall_hue, object_hue), each held-out scene is edited at
strengths -1 and +1 and decoded. The factors of the edited image are estimated
from region colour statistics and an object mask, and compared with the same
estimates on the zero-edit decode (so stage-1 error is not counted):

- success: the target factor moves the intended way by at least half a
  canonical step (hue 0.8/9/2);
- preservation: every other estimated factor stays within half a step.

Held-out scenes use a seed no recipe trains on, and any scene whose factor
combination occurs in the 12,000 training scenes is dropped. Scale,
orientation and shape have no reliable model-free estimator here yet: those
directions are listed as not measured.

    python benchmarks/editing.py --n 128
"""

from __future__ import annotations

import argparse
import colorsys
import json

import numpy as np
import torch

from hvae.data.images import to_pil, to_tensor
from hvae.data.shapes import HUES, SCALES, ShapesDataset
from hvae.demo import HELD_OUT_SEED, pipeline_image_size
from hvae.metrics import psnr
from pipelines import HVAEPipeline

HUE_HALF_STEP = (HUES[1] - HUES[0]) / 2
SCALE_HALF_STEP = (SCALES[1] - SCALES[0]) / 2
# Scale is estimated (sqrt of the object mask's area) and its error printed, but it is not
# scored: its median error on true factors (about 0.08) is over twice its half step, since
# the area also depends on shape and orientation.
ESTIMATED = ("floor_hue", "wall_hue", "object_hue")
ESTIMATOR_CHECKED = (*ESTIMATED, "scale")


def _hue(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(rgb / 255.0))[0]


def estimate(image, scale_fit: tuple[float, float] | None = None) -> dict[str, float]:
    """Factors from pixels: corner colours for wall and floor, an object mask for the rest."""
    pixels = np.asarray(image, dtype=np.float64)
    h, w, _ = pixels.shape
    k = max(2, h // 16)
    wall = np.concatenate([pixels[:k, :k], pixels[:k, -k:]]).reshape(-1, 3).mean(0)
    floor = np.concatenate([pixels[-k:, :k], pixels[-k:, -k:]]).reshape(-1, 3).mean(0)
    centre = pixels[:, w // 4 : 3 * w // 4].reshape(-1, 3)
    far = np.minimum(np.linalg.norm(centre - wall, axis=1), np.linalg.norm(centre - floor, axis=1))
    obj = centre[far > 60]
    bright = obj[obj.max(1) > 0.6 * obj.max()] if len(obj) else obj
    factors = {
        "wall_hue": _hue(wall),
        "floor_hue": _hue(floor),
        "object_hue": _hue(np.median(bright, 0)) if len(bright) else float("nan"),
    }
    root_area = np.sqrt(len(obj) / (h * w))
    factors["scale"] = (
        scale_fit[0] * root_area + scale_fit[1] if scale_fit is not None else root_area
    )
    return factors


def fit_scale(size: int, n: int = 512) -> tuple[float, float]:
    """Linear map from sqrt(object area) to scale, fitted on rendered scenes (no model)."""
    dataset = ShapesDataset(n, seed=7, size=size)
    roots, scales = [], []
    for image, factors in dataset:
        roots.append(estimate(image)["scale"])
        scales.append(factors.scale)
    slope, intercept = np.polyfit(roots, scales, 1)
    return float(slope), float(intercept)


def held_out(n: int, size: int):
    training = ShapesDataset(12000, seed=0, size=size)
    seen = {tuple(training.factors(i).as_dict().values()) for i in range(len(training))}
    dataset = ShapesDataset(4 * n, seed=HELD_OUT_SEED, size=size)
    scenes = []
    for i in range(len(dataset)):
        if tuple(dataset.factors(i).as_dict().values()) not in seen:
            scenes.append(dataset[i])
        if len(scenes) == n:
            break
    return scenes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/shapes")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    pipe = HVAEPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = pipeline_image_size(pipe)
    scale_fit = fit_scale(size)
    scenes_and_factors = held_out(args.n, size)
    scenes = [image for image, _ in scenes_and_factors]

    codes = pipe.encode(scenes)
    stage1 = pipe.stage1
    pixels = to_tensor(scenes)
    stage1_psnr = psnr(stage1.decode(stage1.encode(pixels)), pixels).mean()
    zero = pipe.decode_tensor(codes)
    zero_psnr = psnr(zero, pixels).mean()
    base = [estimate(image, scale_fit) for image in to_pil(zero)]
    # The estimator against the true factors: how far it can be trusted.
    truth = [factors.as_dict() for _, factors in scenes_and_factors]
    on_inputs = [estimate(image, scale_fit) for image in scenes]
    tolerance = {
        "floor_hue": HUE_HALF_STEP,
        "wall_hue": HUE_HALF_STEP,
        "object_hue": HUE_HALF_STEP,
        "scale": SCALE_HALF_STEP,
    }

    rows = []
    for name in pipe.directions:
        if name not in ESTIMATED:
            rows.append({"direction": name, "measured": False})
            continue
        successes = preserved = total = 0
        for sign in (-1.0, 1.0):
            edited = to_pil(pipe.decode_tensor(pipe.edit(codes, {name: sign})))
            for before, image in zip(base, edited, strict=True):
                after = estimate(image, scale_fit)
                moved = (after[name] - before[name]) * sign
                successes += bool(moved >= tolerance[name])
                others = [f for f in ESTIMATED if f != name]
                preserved += all(abs(after[f] - before[f]) < tolerance[f] for f in others)
                total += 1
        rows.append(
            {
                "direction": name,
                "measured": True,
                "success": successes / total,
                "preservation": preserved / total,
            }
        )

    estimator_error = {
        f: float(np.nanmedian([abs(t[f] - e[f]) for t, e in zip(truth, on_inputs, strict=True)]))
        for f in ESTIMATOR_CHECKED
    }
    print(
        f"{len(scenes)} held-out scenes with unseen factor combinations; model {pipe.fingerprint()}"
    )
    print(f"zero-edit PSNR {float(zero_psnr):.2f} dB, stage-1 PSNR {float(stage1_psnr):.2f} dB")
    print("| direction | success (±1) | preservation (±1) |")
    print("|---|---|---|")
    for row in rows:
        if row["measured"]:
            print(f"| {row['direction']} | {row['success']:.1%} | {row['preservation']:.1%} |")
        else:
            print(f"| {row['direction']} | not measured (no pixel estimator) | – |")
    measured = [r for r in rows if r["measured"]]
    if measured:
        print(
            f"| all measured | {np.mean([r['success'] for r in measured]):.1%} "
            f"| {np.mean([r['preservation'] for r in measured]):.1%} |"
        )
    print(
        "median |estimate - true factor| on the inputs (half steps: hue "
        f"{HUE_HALF_STEP:.3f}, scale {SCALE_HALF_STEP:.3f}): "
        + ", ".join(f"{k} {v:.3f}" for k, v in estimator_error.items())
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "rows": rows,
                    "zero_edit_psnr": float(zero_psnr),
                    "stage1_psnr": float(stage1_psnr),
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
