"""Stage-1 autoencoders on this machine: quality on held-out photos, and speed.

Quality (our bundled photo autoencoder only): PSNR and MS-SSIM on every
held-out picture at its prepared size (long side 768), padded to the stride
and cropped back by the same wrapper users get, reported per kind (photo /
graphic).

Speed (the same run, same settings): encode and decode ms per image at 256²
and 512², batch 1, median of --repeats after a warm-up, for our autoencoder,
TAESD's architecture (diffusers ``AutoencoderTiny``) and SD's ``AutoencoderKL``
(both with random weights: speed only). fp32 by default; ``--bf16`` adds rows
with bf16 autocast and channels_last.

    python benchmarks/autoencoder.py --heldout data/photos/heldout
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from hvae.autoencoder import FeatureAutoencoder
from hvae.data.images import find_images, load_image, to_tensor
from hvae.metrics import ms_ssim, psnr

ROOT = Path(__file__).resolve().parents[1]


def quality(stage1: FeatureAutoencoder, folder: Path) -> dict[str, dict]:
    per_kind: dict[str, list[tuple[float, float]]] = {}
    for path in find_images([folder]):
        pixels = to_tensor([load_image(path)])
        decoded = stage1.decode(stage1.encode(pixels), tuple(pixels.shape[-2:]))
        kind = path.parent.name
        per_kind.setdefault(kind, []).append(
            (float(psnr(decoded, pixels)[0]), float(ms_ssim(decoded, pixels)[0]))
        )
    return {
        kind: {
            "images": len(scores),
            "psnr": statistics.mean(s[0] for s in scores),
            "ms_ssim": statistics.mean(s[1] for s in scores),
            "min_psnr": min(s[0] for s in scores),
        }
        for kind, scores in per_kind.items()
    }


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def speed(model, side: int, bf16: bool, repeats: int) -> tuple[float, float]:
    model = model.eval()
    pixels = torch.rand(1, 3, side, side) * 2 - 1
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def latents_of(out):
        if hasattr(out, "latent_dist"):
            return out.latent_dist.mode()
        return out.latents

    with autocast:
        latents = latents_of(model.encode(pixels))
        encode_ms = _median_ms(lambda: model.encode(pixels), repeats)
        decode_ms = _median_ms(lambda: model.decode(latents), repeats)
    return encode_ms, decode_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "checkpoints/photo/autoencoder"))
    parser.add_argument("--heldout", default="data/photos/heldout", help="held-out folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="also measure bf16 autocast")
    parser.add_argument("--json", default="docs/autoencoder_results.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    stage1 = FeatureAutoencoder.from_pretrained(args.model)
    results = {"threads": torch.get_num_threads(), "quality": quality(stage1, Path(args.heldout))}
    models = {
        "ours (PatchAutoencoder)": stage1.model,
        "TAESD arch (AutoencoderTiny)": AutoencoderTiny(),
        "SD AutoencoderKL": AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
        ),
    }
    params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in models.items()}
    rows = []
    for name, model in models.items():
        for precision in ["fp32"] + (["bf16"] if args.bf16 else []):
            for side in args.sizes:
                encode_ms, decode_ms = speed(model, side, precision == "bf16", args.repeats)
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "side": side,
                        "encode_ms": encode_ms,
                        "decode_ms": decode_ms,
                        "params_m": params[name],
                    }
                )
                print(
                    f"{name} {precision} {side}: {encode_ms:.0f} + {decode_ms:.0f} ms", flush=True
                )
    results["speed"] = rows

    print("\n| held-out | images | PSNR dB | min PSNR dB | MS-SSIM |\n|---|---|---|---|---|")
    for kind, q in results["quality"].items():
        print(
            f"| {kind} | {q['images']} | {q['psnr']:.2f} | {q['min_psnr']:.2f} | {q['ms_ssim']:.4f} |"
        )
    print("\n| model | params (M) | precision | side | encode ms | decode ms | total ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_m']:.2f} | {r['precision']} | {r['side']}² | "
            f"{r['encode_ms']:.0f} | {r['decode_ms']:.0f} | {r['encode_ms'] + r['decode_ms']:.0f} |"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
