"""How good the bundled scenes pipeline's samples are, with the model's own prior and the fitted one.

For each prior and temperature it draws ``--n`` samples (seed 0) and reports:

- **scene layout**: samples whose wall corners share one saturated colour and
  floor corners another (``hvae.data.scene_estimate.has_scene_layout``, the
  check of ``tests/test_bundled.py``);
- **variety**, over the scene-like samples, as ``hvae.data.scene_estimate``
  reads them from pixels: how many of the 10 canonical hues the wall, floor and
  object take, how many of the 4 shapes occur, and the share with a visible object;
- **novelty**: PSNR of each sample against its nearest neighbour among the
  12,000 training scenes (median). Higher means closer to a training image; real
  held-out scenes, which are new factor combinations, give the reference value.

    python benchmarks/samples.py [--n 64] [--model checkpoints/shapes] [--json docs/samples_results.json]
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from hvae.data import shapes_pixels
from hvae.data.scene_estimate import estimate, has_scene_layout
from hvae.data.shapes import HUES
from hvae.demo import held_out_scenes
from pipelines import HVAEPipeline


def nearest_training_psnr(images, training: np.ndarray) -> np.ndarray:
    """PSNR of each image against its closest training scene (by mean squared error)."""
    flat_train = training.reshape(len(training), -1).astype(np.float32)
    train_sq = (flat_train**2).sum(1)
    result = []
    for image in images:
        x = np.asarray(image, dtype=np.float32).reshape(-1)
        mse = (train_sq - 2 * flat_train @ x + (x**2).sum()) / x.size
        result.append(10 * math.log10(255.0**2 / max(float(mse.min()), 1e-6)))
    return np.array(result)


def variety(images) -> dict:
    readings = [estimate(image) for image in images]

    def canonical_hues(name):
        values = [r[name] for r in readings if not math.isnan(r[name])]
        return len({int(np.abs(np.array(HUES) - v).argmin()) for v in values})

    return {
        "wall_hues": canonical_hues("wall_hue"),
        "floor_hues": canonical_hues("floor_hue"),
        "object_hues": canonical_hues("object_hue"),
        "shapes": len({r["shape"] for r in readings if r["shape"] is not None}),
        "object_visible": float(np.mean([r["shape"] is not None for r in readings]))
        if readings
        else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="samples per prior and temperature")
    parser.add_argument("--model", default="checkpoints/shapes")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.8, 1.0])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    pipe = HVAEPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.training_image_size
    training = shapes_pixels(12000, seed=0, size=size)
    reference = held_out_scenes(args.n, size)
    rows = [
        {
            "prior": "held-out real scenes",
            "temperature": None,
            "scene_like": sum(map(has_scene_layout, reference)),
            **variety(reference),
            "nearest_training_psnr": float(np.median(nearest_training_psnr(reference, training))),
        }
    ]
    priors = ["model"] + (["fitted"] if pipe.fitted_prior is not None else [])
    for prior in priors:
        for temperature in args.temperatures:
            samples = pipe.sample(args.n, temperature=temperature, seed=0, prior=prior)
            scene_like = [s for s in samples if has_scene_layout(s)]
            rows.append(
                {
                    "prior": prior,
                    "temperature": temperature,
                    "scene_like": len(scene_like),
                    **variety(scene_like),
                    "nearest_training_psnr": float(
                        np.median(nearest_training_psnr(samples, training))
                    ),
                }
            )

    print(
        f"| prior | T | scene layout (of {args.n}) | wall / floor / object hues (of 10) "
        "| shapes (of 4) | object visible | nearest training scene, median PSNR |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        temperature = "–" if r["temperature"] is None else f"{r['temperature']:.1f}"
        print(
            f"| {r['prior']} | {temperature} | {r['scene_like']} "
            f"| {r['wall_hues']} / {r['floor_hues']} / {r['object_hues']} | {r['shapes']} "
            f"| {r['object_visible']:.0%} | {r['nearest_training_psnr']:.2f} dB |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "model": args.model, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
