"""Edit success and preservation on held-out scenes, measured without the model.

Every bundled direction is applied to every held-out scene at strengths -s and
+s (``--strength``, default 1 sd) and decoded. ``hvae.data.scene_estimate``
reads the factors of each edited image from its pixels alone (corner colours,
the wall/floor boundary, a hue mask of the object, nearest rendered
silhouettes) and compares them with the same reading of the zero-edit decode,
so stage-1 error is not counted:

- continuous factors (hues, scale, orientation): success when the target moves
  the intended way by at least half a canonical step; a case counts only where
  the true factor has a canonical step left in that direction;
- shapes: +s succeeds when a scene of another shape becomes that shape, -s when
  a scene of that shape becomes another;
- preservation: every other factor the reader can see stays within half a step,
  and the shape stays the same.

Held-out scenes use a seed no recipe trains on, and any scene whose factor
combination occurs in the 12,000 training scenes is dropped.

    python benchmarks/editing.py --n 128 [--mode delta|residuals] [--json docs/editing_results.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from hvae.data.images import to_pil, to_tensor
from hvae.data.scene_estimate import estimate
from hvae.data.shapes import HUES, ORIENTATIONS, SCALES, SHAPES, ShapesDataset
from hvae.demo import HELD_OUT_SEED
from hvae.metrics import psnr
from pipelines import HVAEPipeline
from pipelines.hvae_pipeline import EDIT_MODES

CANONICAL = {
    "floor_hue": HUES,
    "wall_hue": HUES,
    "object_hue": HUES,
    "scale": SCALES,
    "orientation": ORIENTATIONS,
}
HALF_STEP = {name: (values[1] - values[0]) / 2 for name, values in CANONICAL.items()}


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


def broken(before: dict, after: dict, target: str) -> list[str]:
    """The factors other than ``target`` that moved by half a step or more (or the shape
    that changed): empty when the edit preserved the rest."""
    moved = [
        name
        for name, half in HALF_STEP.items()
        if name != target
        and not np.isnan(before[name])
        and not np.isnan(after[name])
        and abs(after[name] - before[name]) >= half
    ]
    if target not in SHAPES and before["shape"] and after["shape"]:
        if before["shape"] != after["shape"]:
            moved.append("shape")
    return moved


def can_move(truth: dict, name: str, sign: float) -> bool:
    """The true factor has a canonical value one step further in the direction of ``sign``."""
    values = CANONICAL[name]
    moved = truth[name] + sign * 2 * HALF_STEP[name]
    return min(values) - 1e-9 <= moved <= max(values) + 1e-9


def score(name: str, sign: float, truths, before, after, moved: Counter) -> tuple[int, int, int]:
    """(cases, successes, preserved) of one direction at one sign; ``moved`` counts the other
    factors that broke preservation."""
    cases = successes = kept = 0
    for truth, b, a in zip(truths, before, after, strict=True):
        if name in SHAPES:
            if b["shape"] is None or (b["shape"] == name) != (sign < 0):
                continue
            success = a["shape"] == name if sign > 0 else a["shape"] not in (name, None)
        else:
            if np.isnan(b[name]) or not can_move(truth, name, sign):
                continue
            success = not np.isnan(a[name]) and (a[name] - b[name]) * sign >= HALF_STEP[name]
        cases += 1
        successes += bool(success)
        others = broken(b, a, name)
        kept += not others
        moved.update(others)
    return cases, successes, kept


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/shapes")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--mode", choices=EDIT_MODES, default=HVAEPipeline.edit_mode)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    pipe = HVAEPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    pipe.edit_mode = args.mode
    size = pipe.training_image_size
    scenes_and_factors = held_out(args.n, size)
    scenes = [image for image, _ in scenes_and_factors]
    truths = [factors.as_dict() for _, factors in scenes_and_factors]

    codes = pipe.encode(scenes)
    stage1 = pipe.stage1
    pixels = to_tensor(scenes)
    stage1_psnr = float(psnr(stage1.decode(stage1.encode(pixels)), pixels).mean())
    zero = pipe.decode_tensor(codes)
    zero_psnr = float(psnr(zero, pixels).mean())
    before = [estimate(image) for image in to_pil(zero)]

    rows = []
    for name in pipe.directions:
        if name not in CANONICAL and name not in SHAPES:
            rows.append({"direction": name, "measured": False})
            continue
        totals = np.zeros(3, dtype=int)
        moved: Counter = Counter()
        for sign in (-1.0, 1.0):
            edited = pipe.decode(pipe.edit(codes, {name: sign * args.strength}))
            after = [estimate(image) for image in edited]
            totals += score(name, sign, truths, before, after, moved)
        cases, successes, kept = (int(t) for t in totals)
        rows.append(
            {
                "direction": name,
                "measured": True,
                "cases": cases,
                "success": successes / max(1, cases),
                "preservation": kept / max(1, cases),
                "moved_others": dict(moved.most_common()),
            }
        )

    on_inputs = [estimate(image) for image in scenes]
    reader_error = {
        name: float(
            np.nanmedian([abs(t[name] - e[name]) for t, e in zip(truths, on_inputs, strict=True)])
        )
        for name in CANONICAL
    }
    shape_accuracy = float(
        np.mean(
            [e["shape"] == t["shape"] for t, e in zip(truths, on_inputs, strict=True) if e["shape"]]
        )
    )
    print(
        f"{len(scenes)} held-out scenes ({size}x{size}) with unseen factor combinations; "
        f"model {pipe.fingerprint()}; edit mode {args.mode}; strength ±{args.strength:g} sd"
    )
    print(f"zero-edit PSNR {zero_psnr:.2f} dB, stage-1 PSNR {stage1_psnr:.2f} dB")
    print(
        f"| direction | cases | success (±{args.strength:g}) | preservation (±{args.strength:g}) "
        "| what moved instead (cases) |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        if row["measured"]:
            moved = ", ".join(f"{k} {v}" for k, v in list(row["moved_others"].items())[:3])
            print(
                f"| {row['direction']} | {row['cases']} | {row['success']:.1%} "
                f"| {row['preservation']:.1%} | {moved or '–'} |"
            )
        else:
            print(f"| {row['direction']} | – | not measured (no pixel reading) | – | – |")
    measured = [r for r in rows if r["measured"]]
    if measured:
        print(
            f"| all directions | {sum(r['cases'] for r in measured)} "
            f"| {np.mean([r['success'] for r in measured]):.1%} "
            f"| {np.mean([r['preservation'] for r in measured]):.1%} | |"
        )
    print(
        "reader on the inputs: median |error| "
        + ", ".join(f"{k} {v:.3f} (half step {HALF_STEP[k]:.3f})" for k, v in reader_error.items())
        + f"; shape accuracy {shape_accuracy:.1%}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "model": pipe.fingerprint(),
                    "mode": args.mode,
                    "strength": args.strength,
                    "scenes": len(scenes),
                    "rows": rows,
                    "zero_edit_psnr": zero_psnr,
                    "stage1_psnr": stage1_psnr,
                    "reader_error": reader_error,
                    "reader_shape_accuracy": shape_accuracy,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
