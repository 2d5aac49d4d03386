"""Bits per pixel of a compression pipeline against the quantization step, on held-out photos.

This is how ``QUALITY_STEPS`` in ``pipelines/compression_pipeline.py`` was chosen:
steps whose mean bpp spans about 0.1 to 1 on the held-out photographs.

    python benchmarks/quality_steps.py --model checkpoints/photo --data data/photos/heldout/photo
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hvae.data.images import find_images, load_image
from hvae.entropy import encode_symbols, pack
from hvae.loading import load_codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="checkpoints/photo")
    parser.add_argument("--data", default="data/photos/heldout/photo")
    parser.add_argument(
        "--steps",
        type=float,
        nargs="+",
        default=[
            3.0,
            2.4,
            2.0,
            1.6,
            1.3,
            1.1,
            0.9,
            0.75,
            0.6,
            0.5,
            0.4,
            0.34,
            0.28,
            0.23,
            0.19,
            0.15,
            0.12,
            0.1,
        ],
    )
    args = parser.parse_args()
    pipe = load_codec(args.model)
    images = [load_image(p) for p in find_images([args.data])]
    features = [pipe.features_of(image) for image in images]
    print("| step | mean bpp | min bpp | max bpp |\n|---|---|---|---|")
    with torch.no_grad():
        for step in args.steps:
            bpp = [
                8
                * (4 + len(pack(encode_symbols(pipe.coding_model(), f, step)[0])))
                / (i.width * i.height)
                for f, i in zip(features, images, strict=True)
            ]
            print(f"| {step} | {np.mean(bpp):.3f} | {min(bpp):.3f} | {max(bpp):.3f} |", flush=True)


if __name__ == "__main__":
    main()
