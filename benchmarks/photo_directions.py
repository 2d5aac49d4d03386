"""Do the photo pipeline's ``--auto`` sliders move their statistic, monotonically, on held-out photos?

Each held-out picture (never seen by the autoencoder, the editing model or the
direction fit) is shrunk to ``--side`` pixels on its longer side, encoded once,
edited along every direction at strengths -2, -1, 0, +1, +2 and decoded. The
statistic the direction was fitted on (``hvae.directions.image_statistics``) is
measured on each decode. A direction passes on a picture when its statistic
rises strictly from -2 to +2. The table also gives the mean change per unit
strength, in the statistic's own units and in sds of it over these pictures,
and how far the *other* statistics moved (in their sds) at ±2.

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
from hvae.directions import AUTO_STATISTICS, image_statistics
from pipelines import HVAEPipeline

STRENGTHS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def shrunk(path, side: int):
    image = load_image(path)
    image.thumbnail((side, side))
    return image


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
    paths = find_images([args.data])
    stats = {n: {s: [] for s in STRENGTHS} for n in names}  # direction -> strength -> per image
    for path in paths:
        image = shrunk(path, args.side)
        codes = pipe.encode([image])
        base = image_statistics(pipe.decode(codes)[0])
        for name in names:
            for strength in STRENGTHS:
                keep = [n for n in names if n != name] if args.keep_others else None
                edits = {name: strength}
                edited = pipe.decode(pipe.edit(codes, edits, keep))[0] if strength else None
                measured = image_statistics(edited) if edited is not None else base
                stats[name][strength].append(measured)
    spread = {s: np.std([row[s] for n in names for row in stats[n][0.0]]) for s in AUTO_STATISTICS}
    rows = []
    for name in names:
        curves = np.array([[stats[name][s][i][name] for s in STRENGTHS] for i in range(len(paths))])
        monotone = np.all(np.diff(curves, axis=1) > 0, axis=1)
        per_unit = (curves[:, -1] - curves[:, 0]) / (STRENGTHS[-1] - STRENGTHS[0])
        side_effects = [
            abs(stats[name][2.0][i][o] - stats[name][-2.0][i][o]) / 4 / max(spread[o], 1e-9)
            for i in range(len(paths))
            for o in AUTO_STATISTICS
            if o != name and o in spread
        ]
        rows.append(
            {
                "direction": name,
                "monotone": float(monotone.mean()),
                "change_per_unit": float(per_unit.mean()),
                "change_per_unit_sd": float(per_unit.mean() / max(spread[name], 1e-9)),
                "others_per_unit_sd": float(np.mean(side_effects)),
            }
        )
    kept = ", each with keep= the others" if args.keep_others else ""
    print(f"{len(paths)} held-out pictures at {args.side} px{kept}; model {pipe.fingerprint()}")
    print(
        "| direction | monotone −2…+2 | change per unit strength | in sds over these pictures "
        "| other statistics per unit (sds) |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['direction']} | {r['monotone']:.0%} | {r['change_per_unit']:+.4f} "
            f"| {r['change_per_unit_sd']:+.2f} | {r['others_per_unit_sd']:.2f} |"
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
