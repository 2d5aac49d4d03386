"""A feature editor fitted from a before/after table through the CLI, measured on held-out scenes.

Writes --scenes training scenes and one counterfactual of each, with the floor
hue, the wall hue or both moved to a random value in range, as PNG files and a
``pairs.csv`` whose columns give each change in hue units (hue runs 0..1 round
the colour circle). Then ``hvae directions fit --pairs pairs.csv --kind
feature-editor`` fits an editor on them, exactly as a user with their own
before/after pictures would, and held-out scenes are edited by ±--step hue units
and read from pixels (``hvae.data.scene_estimate``, no model):

- the median change of the moved hue: the table's units are honoured when it is
  about ±step;
- success: the moved hue changes the asked way by at least half of the step;
- preservation: the other hue stays within half a canonical step.

    python benchmarks/pair_table.py --scenes 1000 --steps 2000 [--step 0.2] [--work runs/pair-table]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hvae.cli import main as hvae
from hvae.data.scene_estimate import estimate
from hvae.data.shapes import FACTOR_RANGES, HUES, ShapesDataset, render
from hvae.demo import HELD_OUT_SEED
from pipelines import HVAEPipeline

MOVED = ("floor_hue", "wall_hue")


def write_pairs(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` scenes and their counterfactuals as PNGs, and the table that describes them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, n])
    scenes = ShapesDataset(n, seed=seed, size=size)
    rows = ["before,after," + ",".join(MOVED)]
    for i in range(n):
        image, factors = scenes[i]
        moved = [MOVED[j] for j in ((0,), (1,), (0, 1))[rng.integers(3)]]
        target = factors.as_dict() | {m: float(rng.uniform(*FACTOR_RANGES[m])) for m in moved}
        image.save(folder / f"{i}.png")
        render(**target, size=size).save(folder / f"{i}-after.png")
        changes = [target[m] - getattr(factors, m) if m in moved else 0.0 for m in MOVED]
        rows.append(f"{i}.png,{i}-after.png," + ",".join(f"{c:.6f}" for c in changes))
    table = folder / "pairs.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def signed_hue_change(after: float, before: float) -> float:
    return float((after - before + 0.5) % 1.0 - 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/shapes")
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--step", type=float, default=0.2, help="edit strength in hue units")
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--work", default="runs/pair-table")
    args = parser.parse_args()

    work = Path(args.work)
    size = HVAEPipeline.from_pretrained(args.model).training_image_size
    table = write_pairs(work / "pairs", args.scenes, size)
    fit = ["directions", "fit", "--model", args.model, "--pairs", str(table)]
    if hvae(
        [*fit, "--kind", "feature-editor", "--steps", str(args.steps), "-o", str(work / "pipeline")]
    ):
        raise SystemExit("the fit failed")

    pipe = HVAEPipeline.from_pretrained(work / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    held = ShapesDataset(args.held_out, seed=HELD_OUT_SEED, size=size)
    images, truths = zip(*(held[i] for i in range(len(held))), strict=True)
    codes = pipe.encode(list(images))
    before = [estimate(image) for image in pipe.decode(codes)]
    half_canonical = (HUES[1] - HUES[0]) / 2
    low, high = FACTOR_RANGES["floor_hue"]
    print(
        f"{args.scenes} pairs from {table}, {args.steps} steps; {len(images)} held-out scenes, "
        f"edits of ±{args.step:g} hue units"
    )
    print("| direction | cases | median change (hue units) | success | preservation |")
    print("|---|---|---|---|---|")
    for name in MOVED:
        other = MOVED[1 - MOVED.index(name)]
        for sign in (-1.0, 1.0):
            edited = pipe.decode(pipe.edit(codes, {name: sign * args.step}))
            after = [estimate(image) for image in edited]
            cases = [
                i
                for i, t in enumerate(truths)
                if low <= getattr(t, name) + sign * args.step <= high
            ]
            changes = [signed_hue_change(after[i][name], before[i][name]) for i in cases]
            success = np.mean([c * sign >= args.step / 2 for c in changes])
            kept = np.mean(
                [
                    abs(signed_hue_change(after[i][other], before[i][other])) < half_canonical
                    for i in cases
                ]
            )
            print(
                f"| {name} {sign * args.step:+g} | {len(cases)} | {np.median(changes):+.3f} "
                f"| {success:.1%} | {kept:.1%} |"
            )


if __name__ == "__main__":
    main()
