"""Write the training crops that scripts/gpu_photo_retrain.sh carries to a GPU machine.

The device takes 64 MiB with the repository (42 MB) and the wheels it lacks (7 MB)
included, and the photo corpus's training split (data/photo-corpus/train, from `hvae data
photos`) is 700 MB of PNG. So each picture gives one crop, seeded: a photograph (photo/,
astro/) SIDE pixels on a side, a texture TEXTURE_SIDE, from a scale level (1, 1/2, 1/4)
drawn among those that hold it, saved as WebP. A crop is kept whole when the picture is
smaller. Photographs, the pictures that matter most, get the higher WebP quality.

    python scripts/prepare_gpu_carry.py [--source data/photo-corpus/train] [--out .gpu/corpus]
        [--side 256] [--texture-side 224] [--quality 94] [--texture-quality 86]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from hvae.data.images import IMAGE_SUFFIXES


def crop_of(picture: Image.Image, side: int, rng: np.random.Generator) -> Image.Image:
    width, height = picture.size
    scales = [s for s in (1.0, 0.5, 0.25) if min(width, height) * s >= side] or [1.0]
    scale = scales[rng.integers(len(scales))]
    if scale != 1.0:
        width, height = round(width * scale), round(height * scale)
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    crop_w, crop_h = min(width, side), min(height, side)
    left, top = rng.integers(width - crop_w + 1), rng.integers(height - crop_h + 1)
    return picture.crop((left, top, left + crop_w, top + crop_h))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="data/photo-corpus/train", help="training pictures")
    parser.add_argument("--out", default=".gpu/corpus", help="where the crops go")
    parser.add_argument("--side", type=int, default=256, help="photograph crop side")
    parser.add_argument("--texture-side", type=int, default=224, help="texture crop side")
    parser.add_argument("--quality", type=int, default=94, help="photograph WebP quality")
    parser.add_argument("--texture-quality", type=int, default=86, help="texture WebP quality")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = Path(args.source)
    pictures = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not pictures:
        raise SystemExit(f"no pictures under {source}; run `hvae data photos` first")
    rng = np.random.default_rng(args.seed)
    total = 0
    for path in pictures:
        relative = path.relative_to(source)
        texture = relative.parts[0] == "texture"
        side, quality = (
            (args.texture_side, args.texture_quality) if texture else (args.side, args.quality)
        )
        with Image.open(path) as picture:
            crop = crop_of(picture.convert("RGB"), side, rng)
        target = (Path(args.out) / relative).with_suffix(".webp")
        target.parent.mkdir(parents=True, exist_ok=True)
        crop.save(target, "WEBP", quality=quality, method=6)
        total += target.stat().st_size
    print(f"{len(pictures)} crops, {total / 1e6:.1f} MB -> {args.out}")


if __name__ == "__main__":
    main()
