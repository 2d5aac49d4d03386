"""``hvae demo``: the main job on held-out scenes, end to end, written as PNGs."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image

from hvae.data.images import to_pil, to_tensor
from hvae.data.shapes import ShapesDataset
from hvae.metrics import psnr

# Held-out scenes come from a seed that no training recipe uses.
HELD_OUT_SEED = 1_000_003


def image_grid(rows: list[list[Image.Image]]) -> Image.Image:
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image, (x * width, y * height))
    return grid


def held_out_scenes(n: int, size: int) -> list[Image.Image]:
    dataset = ShapesDataset(n, seed=HELD_OUT_SEED, size=size)
    return [dataset[i][0] for i in range(n)]


@torch.no_grad()
def round_trip_psnr(pipe, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """Per-image PSNR of stage 1 alone, of the pipeline's ``decode(encode(x))``, and of the
    latents alone (no detail kept), with the decoded images of each."""
    pixels = to_tensor(images)
    stage1 = pipe.stage1
    stage1_images = stage1.decode(stage1.encode(pixels), tuple(pixels.shape[-2:]))
    codes = pipe.encode(images)
    full_images = pipe.decode_tensor(codes)
    latent_images = pipe.decode_tensor(codes, keep_detail=False)
    return {
        "stage1": psnr(stage1_images, pixels),
        "round_trip": psnr(full_images, pixels),
        "latents_only": psnr(latent_images, pixels),
        "stage1_images": stage1_images,
        "round_trip_images": full_images,
        "latent_images": latent_images,
    }


def run_demo(pipe, out_dir: Path, n: int = 8) -> dict:
    """Reconstructions, samples and an edit strip of held-out scenes; prints each file and
    the part's own time (the caller prints the total, after any later part)."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    size = pipe.training_image_size
    scenes = held_out_scenes(max(n, 2), size)

    measured = round_trip_psnr(pipe, scenes)
    recon_path = out_dir / "reconstructions.png"
    rows = [scenes] + [
        to_pil(measured[k]) for k in ("stage1_images", "latent_images", "round_trip_images")
    ]
    image_grid(rows).save(recon_path)

    samples = pipe.sample(16, temperature=0.8, seed=0)
    samples_path = out_dir / "samples_t0.8.png"
    image_grid([samples[:8], samples[8:]]).save(samples_path)

    # The edit strip moves the first scene along the pipeline's first fitted direction
    # (wall_hue for the bundled scenes); a pipeline without directions gets one on the
    # spot, from the first scene's global latent towards the second's.
    codes = pipe.encode(scenes[:2])
    if pipe.directions:
        direction_name = "wall_hue" if "wall_hue" in pipe.directions else pipe.directions[0]
        # Seven evenly spaced strengths across the slider's measured range, 0 included
        # when the range holds it (docs/slider-ranges.md).
        low, high = pipe.strength_range(direction_name)
        spaced = {round(low + (high - low) * i / 6, 3) for i in range(7)}
        strip_strengths = tuple(sorted(spaced | ({0.0} if low <= 0 <= high else set())))
        strip_end = []
    else:
        direction_name = "demo_towards_second_scene"
        strip_strengths = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
        pipe.register_direction(
            direction_name,
            (codes.latents[0][1] - codes.latents[0][0])[:, 0, 0].cpu(),
            group=0,
            source="demo",
        )
        strip_end = [scenes[1]]
    first = pipe.encode(scenes[:1])
    strip = [pipe.decode(pipe.edit(first, {direction_name: s}))[0] for s in strip_strengths]
    strip_path = out_dir / "edit_strip.png"
    image_grid([[scenes[0], *strip, *strip_end]]).save(strip_path)

    results = {
        "stage1_psnr_db": float(measured["stage1"].mean()),
        "round_trip_psnr_db": float(measured["round_trip"].mean()),
        "latents_only_psnr_db": float(measured["latents_only"].mean()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"held-out scenes: stage-1 PSNR {results['stage1_psnr_db']:.2f} dB, pipeline round trip "
        f"{results['round_trip_psnr_db']:.2f} dB, latents alone {results['latents_only_psnr_db']:.2f} dB"
    )
    print(
        "reconstructions (rows: input, stage 1 only, stage-2 latents alone, pipeline round trip): "
        f"{recon_path}"
    )
    print(f"samples at temperature 0.8 ({pipe.sampler_id().split(' ')[0]} prior): {samples_path}")
    print(
        f"edit strip (input, then {direction_name} at strengths {list(strip_strengths)}"
        f"{', then the target scene' if strip_end else ''}): {strip_path}"
    )
    print(f"scenes part: {results['seconds']} s")
    return results


SAMPLE_PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos"


@torch.no_grad()
def run_compression_demo(codec, photos: Path, out_dir: Path, quality: int = 4) -> dict:
    """Compress the sample photos into one archive, decode it, and report bpp, PSNR and MS-SSIM."""
    from hvae.archive_info import archive_info
    from hvae.metrics import ms_ssim

    started = time.perf_counter()
    print(f"compressing and decoding the photos in {photos} ...", flush=True)
    archive = out_dir / "photos.hvz"
    decoded_dir = out_dir / "photos_decoded"
    # A rerun into the same folder replaces the demo's own outputs, as the scenes part does.
    summary = codec.compress_files(
        [str(photos)], archive, quality=quality, progress=False, overwrite=True
    )
    codec.decompress_archive(archive, decoded_dir, progress=False, overwrite=True)
    size = archive_info(archive)  # the numbers 'hvae info' prints
    scores = []
    for original in sorted(photos.glob("*.png")):
        reference = to_tensor([Image.open(original).convert("RGB")])
        decoded = to_tensor([Image.open(decoded_dir / original.name).convert("RGB")])
        scores.append((float(psnr(decoded, reference)[0]), float(ms_ssim(decoded, reference)[0])))
    results = {
        "images": summary.images,
        "bytes": size["total_bytes"],
        "bpp": size["bpp"],
        "psnr_db": sum(s[0] for s in scores) / len(scores),
        "ms_ssim": sum(s[1] for s in scores) / len(scores),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"compressed {summary.images} held-out photos at quality {quality}: {archive} "
        f"({results['bytes']} bytes, {results['bpp']:.3f} bpp, whole file), decoded to "
        f"{decoded_dir}: PSNR {results['psnr_db']:.2f} dB, MS-SSIM {results['ms_ssim']:.4f}"
    )
    print(f"photo part: {results['seconds']} s")
    return results
