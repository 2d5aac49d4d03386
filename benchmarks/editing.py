"""Edit success and preservation on held-out scenes, measured without the model.

Every bundled direction is applied to every held-out scene at strengths -s and
+s (``--strength``, default 1 sd; where that lies outside the direction's range,
``hvae directions list``, at the range's end instead, and a side whose end is 0 is
left out) and decoded. ``hvae.data.scene_estimate`` reads the factors of each edited image from its pixels alone (corner colours,
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

The reference columns score the true counterfactual the same way: the scene
rendered with the factor moved by the strength (in sds of its canonical values,
kept in range; a shape made or, at -s, replaced by the next shape) and passed
through stage 1. No editor of stage-1 features can do better than that reading,
so where it falls short of a target, the reader or stage 1 is the limit.

Held-out scenes use a seed no recipe trains on, and any scene whose factor
combination occurs in the 12,000 training scenes (or in one of them with the
shape changed) is dropped.

    python benchmarks/editing.py --n 128 [--mode delta|residuals] [--json docs/editing_results.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from hvae.data.images import to_pil, to_tensor
from hvae.data.scene_estimate import estimate, hue_shift
from hvae.data.shapes import (
    HUES,
    ORIENTATIONS,
    SCALES,
    SHAPES,
    ShapesDataset,
    next_shape,
    render,
)
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
HUES_READ = ("floor_hue", "wall_hue", "object_hue")


def reading_change(name: str, before: float, after: float) -> float:
    """How far a reading moved; a hue the short way round the colour circle (``hue_shift``)."""
    return float(hue_shift(before, after)) if name in HUES_READ else after - before


def held_out(n: int, size: int):
    """``n`` scenes of the held-out seed whose factor combination no recipe trained on: not
    one of the 12,000 training scenes, nor one of them with another shape (what a feature
    editor's shape-only counterfactuals render)."""
    training = ShapesDataset(12000, seed=0, size=size)
    seen = set()
    for i in range(len(training)):
        factors = training.factors(i).as_dict()
        seen |= {tuple((factors | {"shape": shape}).values()) for shape in SHAPES}
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
        and abs(reading_change(name, before[name], after[name])) >= half
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
            success = (
                not np.isnan(a[name])
                and reading_change(name, b[name], a[name]) * sign >= HALF_STEP[name]
            )
        cases += 1
        successes += bool(success)
        others = broken(b, a, name)
        kept += not others
        moved.update(others)
    return cases, successes, kept


def counterfactual(truth: dict, name: str, change: float) -> dict:
    """``truth`` with ``name`` moved by ``change``: sds of its canonical values (kept in range),
    or, for a shape, made (change > 0) or replaced by the next shape (change < 0)."""
    if name in SHAPES:
        if change > 0:
            return truth | {"shape": name}
        return truth | {"shape": next_shape(name)} if truth["shape"] == name else dict(truth)
    values = CANONICAL[name]
    moved = truth[name] + change * float(np.std(values))
    return truth | {name: float(np.clip(moved, min(values), max(values)))}


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
        totals, reference = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
        moved: Counter = Counter()
        low, high = pipe.strength_range(name)
        # A strength outside the direction's measured range is refused (see
        # docs/slider-ranges.md): each side goes as far towards ±strength as a user can,
        # and the row says where that is short of it.
        strengths = [s for s in (max(low, -args.strength), min(high, args.strength)) if s]
        for strength in strengths:
            sign = float(np.sign(strength))
            edited = pipe.decode(pipe.edit(codes, {name: strength}))
            after = [estimate(image) for image in edited]
            totals += score(name, sign, truths, before, after, moved)
            targets = [counterfactual(t, name, strength) for t in truths]
            rendered = to_tensor([render(**t, size=size) for t in targets])
            through_stage1 = to_pil(stage1.decode(stage1.encode(rendered)))
            true_after = [estimate(image) for image in through_stage1]
            reference += score(name, sign, truths, before, true_after, Counter())
        cases, successes, kept = (int(t) for t in totals)
        rows.append(
            {
                "direction": name,
                "measured": True,
                "cases": cases,
                "success": successes / max(1, cases),
                "preservation": kept / max(1, cases),
                "moved_others": dict(moved.most_common()),
                "reference_success": int(reference[1]) / max(1, int(reference[0])),
                "reference_preservation": int(reference[2]) / max(1, int(reference[0])),
                "strengths": strengths,
            }
        )
        if strengths != [-args.strength, args.strength]:
            print(
                f"{name}: ±{args.strength:g} leaves its range [{low:g}, {high:g}]; "
                f"measured at {', '.join(f'{s:+g}' for s in strengths)}"
            )

    on_inputs = [estimate(image) for image in scenes]
    reader_error = {
        name: float(
            np.nanmedian(
                [
                    abs(reading_change(name, t[name], e[name]))
                    for t, e in zip(truths, on_inputs, strict=True)
                ]
            )
        )
        for name in CANONICAL
    }
    shape_accuracy = float(
        np.mean(
            [e["shape"] == t["shape"] for t, e in zip(truths, on_inputs, strict=True) if e["shape"]]
        )
    )
    metadata = pipe.direction_metadata()
    units = ", ".join(
        f"{u} for {', '.join(sorted(n for n in metadata if metadata[n]['units'] == u))}"
        for u in sorted({m["units"] for m in metadata.values()})
    )
    print(
        f"{len(scenes)} held-out scenes ({size}x{size}) with unseen factor combinations; "
        f"model {pipe.fingerprint()}; edit mode {args.mode}; strength ±{args.strength:g} "
        f"(units: {units})"
    )
    print(f"zero-edit PSNR {zero_psnr:.2f} dB, stage-1 PSNR {stage1_psnr:.2f} dB")
    print(
        f"| direction | cases | success (±{args.strength:g}) | preservation (±{args.strength:g}) "
        "| what moved instead (cases) | reference: success | reference: preservation |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row["measured"]:
            moved = ", ".join(f"{k} {v}" for k, v in list(row["moved_others"].items())[:3])
            print(
                f"| {row['direction']} | {row['cases']} | {row['success']:.1%} "
                f"| {row['preservation']:.1%} | {moved or '–'} "
                f"| {row['reference_success']:.1%} | {row['reference_preservation']:.1%} |"
            )
        else:
            print(f"| {row['direction']} | – | not measured (no pixel reading) | – | – | – | – |")
    measured = [r for r in rows if r["measured"]]
    if measured:
        keys = ("success", "preservation", "reference_success", "reference_preservation")
        cases = np.array([r["cases"] for r in measured])
        # Two summaries, since directions have different numbers of cases: the mean of
        # the directions' rates, and the rate over all cases pooled.
        summaries = {
            "mean of the directions": {k: np.mean([r[k] for r in measured]) for k in keys},
            "all cases pooled": {
                k: float(np.dot(cases, [r[k] for r in measured]) / cases.sum()) for k in keys
            },
        }
        for label, means in summaries.items():
            print(
                f"| {label} | {cases.sum()} "
                f"| {means['success']:.1%} | {means['preservation']:.1%} | "
                f"| {means['reference_success']:.1%} | {means['reference_preservation']:.1%} |"
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
                    "summaries": summaries if measured else {},
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
