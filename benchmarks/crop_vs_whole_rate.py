"""Does an entropy model code whole images as well as the crops it trained on?

For each model: bits per feature dimension (the model's rate with rounding, as
``hvae.refine`` computes it) on whole held-out images and on 32x32 feature crops
cut from them, at one quantization step. An entropy model trained on one crop size
can learn that size: it then spends fewer bits on crops and more on whole images.

    python benchmarks/crop_vs_whole_rate.py --models checkpoints/photo runs/codec-cont
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hvae.data.images import find_images, load_image
from hvae.entropy import rounded_rate_bits
from hvae.loading import load_codec


def bits_per_dim(model, features: torch.Tensor, step: float) -> float:
    bits, _ = rounded_rate_bits(model, features, torch.tensor([step]))
    return float(bits.sum()) / features.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["checkpoints/photo"])
    parser.add_argument("--data", default="data/photos/heldout/photo")
    parser.add_argument("--step", type=float, default=0.5, help="quantization step (quality 4)")
    parser.add_argument("--crop", type=int, default=32, help="feature crop side")
    args = parser.parse_args()
    images = [load_image(p) for p in find_images([args.data])]
    print(f"| model | whole images | {args.crop}x{args.crop} crops | whole / crops |")
    print("|---|---|---|---|")
    for folder in args.models:
        pipe = load_codec(folder)
        model = pipe.hvae.float()
        whole, crops = [], []
        with torch.no_grad():
            for image in images:
                features = pipe.features_of(image)
                whole.append(bits_per_dim(model, features, args.step))
                h, w = features.shape[-2:]
                for top in range(0, h - args.crop + 1, args.crop):
                    for left in range(0, w - args.crop + 1, args.crop):
                        crop = features[..., top : top + args.crop, left : left + args.crop]
                        crops.append(bits_per_dim(model, crop, args.step))
        print(
            f"| {folder} | {np.mean(whole):.3f} | {np.mean(crops):.3f} "
            f"| {np.mean(whole) / np.mean(crops):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
