"""Zero-edit round trip of the bundled pipeline on held-out scenes.

Reports PSNR of stage 1 alone (decode(encode(x)) through the autoencoder), of the
pipeline's decode(encode(x)) (the hierarchical VAE's posterior means plus the
feature detail they leave out, which codes keep so that edits preserve it), and
of the posterior means alone, on scenes from a seed that no recipe trains on.

    python benchmarks/roundtrip.py --n 256
"""

from __future__ import annotations

import argparse
import time

import torch

from hvae.demo import held_out_scenes, round_trip_psnr
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
    scenes = held_out_scenes(args.n, pipe.training_image_size)
    started = time.time()
    measured: dict[str, list] = {"stage1": [], "round_trip": [], "latents_only": []}
    for start in range(0, args.n, args.batch_size):
        batch = round_trip_psnr(pipe, scenes[start : start + args.batch_size])
        for key, values in measured.items():
            values.append(batch[key])
    psnrs = {key: torch.cat(values) for key, values in measured.items()}
    print(f"held-out scenes: {args.n}, model {pipe.fingerprint()}, {time.time() - started:.1f} s")
    print("| path | mean PSNR (dB) | min PSNR (dB) |")
    print("|---|---|---|")
    labels = {
        "stage1": "stage 1 only",
        "round_trip": "pipeline decode(encode(x)) (latents + kept detail)",
        "latents_only": "stage-2 latents alone (no detail)",
    }
    for key, label in labels.items():
        print(f"| {label} | {psnrs[key].mean():.2f} | {psnrs[key].min():.2f} |")
    for key in ("round_trip", "latents_only"):
        gap = float(psnrs["stage1"].mean() - psnrs[key].mean())
        print(
            f"{labels[key]}: {gap:.2f} dB below stage 1 (target for the pipeline: at most 0.5 dB)"
        )


if __name__ == "__main__":
    main()
