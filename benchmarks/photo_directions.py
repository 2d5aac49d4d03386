"""Do the photo pipeline's ``--auto`` sliders move their statistic, monotonically, on held-out photos?

Each held-out picture (never seen by the autoencoder, the editing model or the
direction fit) is shrunk to ``--side`` pixels on its longer side, encoded once,
edited along every direction at five strengths across the direction's range (its
two ends, half of each, and 0; ``hvae directions list`` shows the ranges) and
decoded. The statistic the direction was fitted on
(``hvae.directions.image_statistics``) is measured on each decode. A direction
passes on a picture when its statistic rises strictly from one end of the range
to the other. The table also gives the mean change per unit strength, in the
statistic's own units and in sds of it over these pictures, and how far the
*other* statistics moved per unit (in their sds) between the range's ends.

The reference columns do the same for the pixel adjustment each ``feature-flow``
direction is fitted on (``hvae.directions.AUTO_ADJUSTMENTS``, applied once or twice
each way), encoded and decoded with no edit: what a slider could do at best on
these pictures. Greyscale pictures, for one, have no saturation to move.

    python benchmarks/photo_directions.py [--model checkpoints/photo-edit] [--data data/photos/heldout]
        [--keep-others]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from hvae.data import find_images
from hvae.data.images import load_image
from hvae.directions import AUTO_ADJUSTMENTS, AUTO_STATISTICS, image_statistics
from pipelines import HVAEPipeline

REFERENCE_STEPS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # pixel adjustments applied once or twice


def range_strengths(pipe, name: str) -> tuple[float, ...]:
    """The five strengths a direction is measured at: its range's ends, their halves and 0."""
    low, high = pipe.strength_range(name)
    return (low, low / 2, 0.0, high / 2, high)


def shrunk(path, side: int):
    image = load_image(path)
    image.thumbnail((side, side))
    return image


def adjusted(image, name: str, strength: float):
    """``image`` with the pixel adjustment of ``name`` applied ``|strength|`` times."""
    for _ in range(int(abs(strength))):
        image = AUTO_ADJUSTMENTS[name](image, int(np.sign(strength)))
    return image


def summarise(stats, name: str, spread: dict[str, float]) -> dict[str, float]:
    """Monotone share, change per unit and side effects of one direction's per-picture
    statistics ``stats[strength][picture]``."""
    count, strengths = len(stats[0.0]), sorted(stats)
    low, high = strengths[0], strengths[-1]
    curves = np.array([[stats[s][i][name] for s in strengths] for i in range(count)])
    monotone = np.all(np.diff(curves, axis=1) > 0, axis=1)
    per_unit = (curves[:, -1] - curves[:, 0]) / (high - low)
    side_effects = [
        abs(stats[high][i][o] - stats[low][i][o]) / (high - low) / max(spread[o], 1e-9)
        for i in range(count)
        for o in AUTO_STATISTICS
        if o != name
    ]
    return {
        "monotone": float(monotone.mean()),
        "change_per_unit": float(per_unit.mean()),
        "change_per_unit_sd": float(per_unit.mean() / max(spread[name], 1e-9)),
        "others_per_unit_sd": float(np.mean(side_effects)),
        # Which pictures it fails on, and how: a curve that dips, or one that barely moves.
        "not_rising": {int(i): curves[i].round(4).tolist() for i in np.flatnonzero(~monotone)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/photo-edit")
    parser.add_argument("--data", default="data/photos/heldout")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument(
        "--keep-others",
        action="store_true",
        help="edit each direction with keep= every other direction (conditional editing; "
        "moment and vector directions project, a direction field already holds the others)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    pipe = HVAEPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    names = [n for n in pipe.directions if n in AUTO_STATISTICS]
    if not names:
        raise SystemExit(f"{args.model} has no auto directions ({', '.join(AUTO_STATISTICS)})")
    paths = find_images([args.data])
    strengths = {n: range_strengths(pipe, n) for n in names}
    stats = {n: {s: [] for s in strengths[n]} for n in names}  # direction -> strength -> per image
    reference = {n: {s: [] for s in REFERENCE_STEPS} for n in names}  # pixel adjustments
    for path in paths:
        image = shrunk(path, args.side)
        codes = pipe.encode([image])
        base = image_statistics(pipe.decode(codes)[0])
        for name in names:
            keep = [n for n in names if n != name] if args.keep_others else None
            for strength in strengths[name]:
                edited = (
                    pipe.decode(pipe.edit(codes, {name: strength}, keep))[0] if strength else None
                )
                stats[name][strength].append(image_statistics(edited) if strength else base)
            for step in REFERENCE_STEPS:
                moved = pipe(adjusted(image, name, step))[0] if step else None
                reference[name][step].append(image_statistics(moved) if step else base)
    spread = {s: np.std([row[s] for row in stats[names[0]][0.0]]) for s in AUTO_STATISTICS}
    rows = []
    for name in names:
        row = {"direction": name, "strengths": list(strengths[name])}
        row |= summarise(stats[name], name, spread)
        ref = summarise(reference[name], name, spread)
        rows.append(row | {f"reference_{k}": v for k, v in ref.items()})
    kept = ", each with keep= the others" if args.keep_others else ""
    print(f"{len(paths)} held-out pictures at {args.side} px{kept}; model {pipe.fingerprint()}")
    print(
        "| direction | range | monotone over it | change per unit strength "
        "| in sds over these pictures | other statistics per unit (sds) | reference: monotone "
        "| reference: sds per step | reference: others (sds) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = (
            f"{r['reference_monotone']:.0%} | {r['reference_change_per_unit_sd']:+.2f} "
            f"| {r['reference_others_per_unit_sd']:.2f}"
        )
        print(
            f"| {r['direction']} | {r['strengths'][0]:g} … {r['strengths'][-1]:g} "
            f"| {r['monotone']:.0%} | {r['change_per_unit']:+.4f} "
            f"| {r['change_per_unit_sd']:+.2f} | {r['others_per_unit_sd']:.2f} | {ref} |"
        )
    for r in rows:
        for label, failed in (
            ("slider", r["not_rising"]),
            ("reference", r["reference_not_rising"]),
        ):
            for i, curve in failed.items():
                print(
                    f"{r['direction']} ({label}) does not rise strictly on {paths[i].name}: "
                    + " ".join(f"{v:.4f}" for v in curve)
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "pictures": [str(p) for p in paths],
                    "side": args.side,
                    "keep_others": args.keep_others,
                    "rows": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
