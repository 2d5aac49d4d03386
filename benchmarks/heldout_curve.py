"""Held-out PSNR / MS-SSIM of a stage-1 run's EMA weights at each saved checkpoint.

Appends one JSON line per checkpoint to --log (skipping steps already there), so
running it now and then during training builds the held-out learning curve
even though training keeps only the latest checkpoints.

    python benchmarks/heldout_curve.py runs/photo-ae --heldout data/photos/heldout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hvae.data.images import find_images, load_image, to_tensor
from hvae.metrics import ms_ssim, psnr
from hvae.patch_autoencoder import PatchAutoencoder


@torch.no_grad()
def evaluate(model: PatchAutoencoder, paths: list[Path]) -> dict[str, float]:
    stride = model.spatial_stride
    scores: dict[str, list[tuple[float, float]]] = {}
    for path in paths:
        pixels = to_tensor([load_image(path)])
        h, w = pixels.shape[-2:]
        padded = torch.nn.functional.pad(pixels, (0, -w % stride, 0, -h % stride), mode="replicate")
        decoded = model(padded)[..., :h, :w].clamp(-1, 1)
        scores.setdefault(path.parent.name, []).append(
            (float(psnr(decoded, pixels)), float(ms_ssim(decoded, pixels)))
        )
    out = {}
    for kind, values in scores.items():
        out[f"{kind}_psnr"] = sum(v[0] for v in values) / len(values)
        out[f"{kind}_ms_ssim"] = sum(v[1] for v in values) / len(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the --out folder of hvae train-autoencoder")
    parser.add_argument("--heldout", default="data/photos/heldout")
    parser.add_argument("--log", default=None, help="default: RUN/heldout_curve.jsonl")
    parser.add_argument("--latent-channels", type=int, default=16)
    parser.add_argument("--widths", type=int, nargs="+", default=[96, 192])
    parser.add_argument("--layers-per-block", type=int, default=2)
    parser.add_argument("--patch-size", type=int, default=4)
    args = parser.parse_args()
    run = Path(args.run)
    log = Path(args.log or run / "heldout_curve.jsonl")
    done = (
        {json.loads(line)["step"] for line in log.read_text().splitlines()}
        if log.exists()
        else set()
    )
    config = json.loads((run / "run" / "train_config.json").read_text())
    paths = find_images([args.heldout])
    for checkpoint in sorted(
        (run / "run" / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:])
    ):
        step = int(checkpoint.name[5:])
        if step in done:
            continue
        model = PatchAutoencoder(
            latent_channels=args.latent_channels,
            block_out_channels=tuple(args.widths),
            layers_per_block=args.layers_per_block,
            patch_size=args.patch_size,
        ).eval()
        ema = torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=False)
        model.load_state_dict(ema["shadow"])
        row = {"step": step, "batch_size": config["batch_size"]} | evaluate(model, paths)
        print(json.dumps(row))
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
