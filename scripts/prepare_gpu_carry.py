"""Write what scripts/gpu_photo_retrain.sh needs to carry to a GPU machine.

The training pictures (data/photos/train, from `hvae prepare-photos`) go to
.gpu/photos-train as JPEG, quality 90, without chroma subsampling: the PNGs are
83 MB and the device takes 64 MiB with the repository included. The JPEGs are
18 MB and 43-44 dB PSNR from the PNGs, far above what stage 1 reconstructs.

    python scripts/prepare_gpu_carry.py [--source data/photos/train] [--out .gpu/photos-train]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="data/photos/train", help="folder of training PNGs")
    parser.add_argument("--out", default=".gpu/photos-train", help="where the JPEGs go")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    args = parser.parse_args()
    source = Path(args.source)
    pictures = sorted(source.rglob("*.png"))
    if not pictures:
        raise SystemExit(f"no PNG pictures under {source}; run `hvae prepare-photos` first")
    total = 0
    for picture in pictures:
        target = (Path(args.out) / picture.relative_to(source)).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(picture).convert("RGB").save(target, "JPEG", quality=args.quality, subsampling=0)
        total += target.stat().st_size
    print(f"{len(pictures)} pictures, {total / 1e6:.1f} MB -> {args.out}")


if __name__ == "__main__":
    main()
