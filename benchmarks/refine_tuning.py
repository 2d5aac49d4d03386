"""Encoder-side refinement (``hvae.refine``): BD-rate against no refinement, per setting.

This is how ``RD_WEIGHT``, ``default_learning_rate`` and the pipeline's
``DEFAULT_REFINE_STEPS`` were chosen. It runs on *training* photos, shrunk to
``--side`` on the longer side, so the held-out set stays unseen by the choice.
Each setting is "iterations:learning_rate:rd_weight[:tune[:ms_ssim_scale]]".

    python benchmarks/refine_tuning.py --settings 15:0.02:180 30:0.01:180
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image

import hvae.refine as refine_module
from hvae.data.images import find_images, load_image, to_tensor
from hvae.entropy import encode_symbols, pack
from hvae.loading import load_codec
from hvae.metrics import ms_ssim, psnr
from hvae.rd_benchmark import bd_rate, ms_ssim_db
from hvae.refine import refine_features
from hvae.training import resolve_precision
from pipelines.compression_pipeline import _STEP, one_thread, quality_step


def shrink(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def curve(
    pipe, images, qualities, iterations, learning_rate, rd_weight, bf16, tune="psnr"
) -> list[tuple]:
    """Mean (bpp, PSNR, MS-SSIM) per quality, coded and decoded for real."""
    points = []
    for quality in qualities:
        step = _STEP.unpack(_STEP.pack(quality_step(quality)))[0]
        scores = []
        for image in images:
            target = to_tensor([image])
            with one_thread():
                features = pipe.features_of(image)
                features = refine_features(
                    pipe.stage1, pipe.hvae, features, target, step, iterations,
                    learning_rate, bf16, rd_weight, tune,
                )  # fmt: skip
                with torch.no_grad():
                    payload = _STEP.pack(step) + pack(
                        encode_symbols(pipe.coding_model(), features, step)[0]
                    )
            # A whole-image payload, as format version 2 stores it.
            decoded = to_tensor(
                [pipe.decode_image(payload, (image.height, image.width), version=2)]
            )
            scores.append(
                (
                    8 * len(payload) / (image.width * image.height),
                    float(psnr(decoded, target)[0]),
                    float(ms_ssim(decoded, target)[0]),
                )
            )
        points.append(tuple(sum(s[i] for s in scores) / len(scores) for i in range(3)))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="checkpoints/photo")
    parser.add_argument("--data", default="data/photos/train/photo")
    parser.add_argument("--limit", type=int, default=4, help="first N pictures (default: 4)")
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--settings", nargs="+", default=["15:0.02:180", "30:0.01:180"])
    args = parser.parse_args()
    pipe = load_codec(args.model)
    images = [shrink(load_image(p), args.side) for p in find_images([args.data])[: args.limit]]
    bf16 = resolve_precision("auto", on_gpu=False) == "bf16"
    base = curve(pipe, images, args.qualities, 0, 0.0, 0.0, bf16)
    print(f"{len(images)} pictures at {args.side} px, qualities {args.qualities}, bf16 {bf16}")
    print("| iterations | lr | rd weight | BD-rate PSNR | BD-rate MS-SSIM | s/image | bpp range |")
    print("|---|---|---|---|---|---|---|")
    for setting in args.settings:
        iterations, learning_rate, rd_weight, *rest = setting.split(":")
        tune = rest[0] if rest else "psnr"
        if len(rest) > 1:
            refine_module.MS_SSIM_SCALE = float(rest[1])
        start = time.perf_counter()
        points = curve(
            pipe, images, args.qualities, int(iterations), float(learning_rate),
            float(rd_weight), bf16, tune,
        )  # fmt: skip
        seconds = (time.perf_counter() - start) / (len(images) * len(args.qualities))
        on_psnr = bd_rate([(p[0], p[1]) for p in base], [(p[0], p[1]) for p in points])
        on_ms_ssim = bd_rate(
            [(p[0], ms_ssim_db(p[2])) for p in base], [(p[0], ms_ssim_db(p[2])) for p in points]
        )
        print(
            f"| {iterations} | {learning_rate} | {rd_weight} {' '.join(rest)} | {on_psnr:+.1f} % | "
            f"{on_ms_ssim:+.1f} % | {seconds:.2f} | {points[0][0]:.3f}-{points[-1][0]:.3f} |",
            flush=True,
        )
    print(f"no refinement: bpp {base[0][0]:.3f}-{base[-1][0]:.3f}")


if __name__ == "__main__":
    main()
