"""Zero-edit round trip of the bundled pipeline on held-out scenes.

Reports PSNR of stage 1 alone (decode(encode(x)) through the autoencoder) and of
the whole pipeline (stage 1 + the hierarchical VAE's posterior means), on scenes
from a seed that no training recipe uses.

    python benchmarks/roundtrip.py --n 256
"""

from __future__ import annotations

import argparse
import time

import torch

from hvae.demo import held_out_scenes, pipeline_image_size, round_trip_psnr
from pipelines import HVAEPipeline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/shapes")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    pipe = HVAEPipeline.from_pretrained(args.model)
    scenes = held_out_scenes(args.n, pipeline_image_size(pipe))
    started = time.time()
    stage1, full = [], []
    for start in range(0, args.n, args.batch_size):
        s1, f, _, _ = round_trip_psnr(pipe, scenes[start : start + args.batch_size])
        stage1.append(s1)
        full.append(f)
    stage1, full = torch.cat(stage1), torch.cat(full)
    print(f"held-out scenes: {args.n}, model {pipe.fingerprint()}, {time.time() - started:.1f} s")
    print("| path | mean PSNR (dB) | min PSNR (dB) |")
    print("|---|---|---|")
    print(f"| stage 1 only | {stage1.mean():.2f} | {stage1.min():.2f} |")
    print(f"| stage 1 + hierarchical VAE | {full.mean():.2f} | {full.min():.2f} |")
    gap = float(stage1.mean() - full.mean())
    print(f"\nround-trip loss vs stage 1: {gap:.2f} dB (target: at most 0.5 dB)")


if __name__ == "__main__":
    main()
