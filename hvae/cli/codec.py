"""Compression commands of ``hvae``: compress, decompress, info and benchmark rd."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hvae.cli.common import (
    add_model_arg,
    check_output_file,
    check_output_folder,
    non_negative_int,
    positive_int,
)
from hvae.codec_settings import DEFAULT_QUALITY, DEFAULT_REFINE_STEPS, QUALITY_LEVELS, TUNINGS
from hvae.errors import HVAEError
from hvae.loading import load_codec, resolve_model


def archive_size(info: dict) -> str:
    """An archive's size as ``hvae compress`` and ``hvae info`` both print it."""
    from hvae.archive_info import format_bpp

    return (
        f"{info['total_bytes']} bytes, {format_bpp(info['bpp'])} bpp "
        "(whole file, headers and index included, over all pixels)"
    )


def cmd_compress(args) -> int:
    from hvae.archive_info import archive_info

    check_output_file(args.out, args.inputs, args.force)
    model = resolve_model(args.model, "codec")
    pipe = load_codec(model, purpose="compress")
    compute = None
    if args.ray_workers:
        from functools import partial

        from hvae.distributed import map_on_ray

        compute = partial(
            map_on_ray, model=model, workers=args.ray_workers, batch_size=args.batch_size
        )
    summary = pipe.compress_files(
        args.inputs,
        args.out,
        quality=args.quality,
        compute=compute,
        refine_steps=args.refine_steps,
        tune=args.tune,
        overwrite=args.force,
    )
    for message in summary.skipped:
        print(f"skipped: {message}", file=sys.stderr)
    for message in summary.warnings:
        print(f"warning: {message}", file=sys.stderr)
    if summary.resumed:
        print(f"continued {summary.resumed} images from {args.out}.partial", file=sys.stderr)
    print(
        f"{summary.images} images at quality {args.quality} -> {args.out}: "
        + archive_size(archive_info(args.out))
        + (f"; {len(summary.skipped)} skipped" if summary.skipped else "")
    )
    return 1 if summary.skipped else 0


def cmd_decompress(args) -> int:
    if not Path(args.archive).is_file():
        raise HVAEError(f"{args.archive}: no such archive")
    check_output_folder(args.out)
    pipe = load_codec(args.model, purpose="decompress")
    summary = pipe.decompress_archive(args.archive, args.out, only=args.only, overwrite=args.force)
    for message in summary.damaged:
        print(f"damaged: {message}", file=sys.stderr)
    for message in summary.renamed:
        print(f"renamed (its path was taken): {message}", file=sys.stderr)
    if not summary.complete:
        print(
            f"warning: {args.archive} has no valid index (cut short?); "
            "decoded every complete record before the damage",
            file=sys.stderr,
        )
    print(f"{len(summary.written)} images -> {args.out}")
    return 1 if summary.damaged or not summary.complete else 0


def cmd_info(args) -> int:
    from hvae.archive_info import archive_info, format_bpp

    info = archive_info(args.archive)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(
            f"{info['archive']}: model {info['fingerprint']}, format version "
            f"{info['format_version']}"
            + ("" if info["complete"] else " (INCOMPLETE: no valid index)")
        )
        width = max([len(i["name"]) for i in info["images"]] + [4])
        print(f"{'name':<{width}}  {'size':>11}  {'q':>2}  {'bytes':>9}  {'bpp':>7}")
        for image in info["images"]:
            size = f"{image['width']}x{image['height']}"
            print(
                f"{image['name']:<{width}}  {size:>11}  {image['quality']:>2}  "
                f"{image['bytes']:>9}  {format_bpp(image['bpp']):>7}"
            )
        for message in info["damaged"]:
            print(f"damaged: {message}")
        print(f"total: {len(info['images'])} images, {archive_size(info)}")
    return 1 if info["damaged"] or not info["complete"] else 0


def cmd_benchmark_rd(args) -> int:
    from hvae.rd_benchmark import run_rd_benchmark

    run_rd_benchmark(
        args.data,
        args.out,
        model=args.model,
        qualities=args.qualities,
        limit=args.limit,
        refine_steps=args.refine_steps,
        tune=args.tune,
    )
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="compress images into one .hvz archive",
        description="Compress image files and folders (recursive) into one .hvz archive. Records are written "
        "as images finish to OUT.partial, which becomes OUT when all are done; if the run fails, OUT.partial "
        "keeps every finished image and 'hvae decompress' reads it. Unreadable files are skipped and listed, "
        "and the exit code is then 1.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--out", required=True, help="output archive, e.g. photos.hvz")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument(
        "--quality",
        type=int,
        default=DEFAULT_QUALITY,
        choices=range(1, QUALITY_LEVELS + 1),
        metavar="Q",
        help=f"1 (smallest) to {QUALITY_LEVELS} (best); about 0.1 to 1 bpp on photos "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--refine-steps",
        type=non_negative_int,
        default=DEFAULT_REFINE_STEPS,
        metavar="N",
        help="iterations of the encoder's search for features that cost fewer bits for the same "
        "quality (default: %(default)s; 0 = off, about 20x faster to encode). Decoding is the "
        "same either way",
    )
    p.add_argument(
        "--tune",
        choices=TUNINGS,
        default="psnr",
        help="what the search trades bits against: psnr (squared error) or ms-ssim (structure). "
        "With 15 iterations on training photos, ms-ssim saved 18 %% of the bits at equal MS-SSIM "
        "and 8 %% at equal PSNR; psnr saved 9 %% and 16 %% (default: psnr)",
    )
    add_model_arg(p, "codec")
    p.add_argument(
        "--ray-workers",
        type=positive_int,
        help="compress on this many Ray workers (needs the [distributed] extra; RAY_ADDRESS picks a "
        "cluster); the archive is byte-identical to a local run",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="with --ray-workers: images per task (default: 4); every image is still coded on its own",
    )
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser(
        "decompress",
        help="decode an .hvz archive to PNG files",
        description="Decode every image (or --only some) of an archive to PNGs under OUT, at their stored "
        "relative names. Damaged records are named and skipped, the others decode; a cut-short archive "
        "decodes every complete record. Either case exits with 1. The model must be the one that wrote the "
        "archive (its fingerprint is in the header: see 'hvae info').",
    )
    p.add_argument("archive", help="the .hvz archive")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--only", nargs="+", metavar="NAME", help="decode only these stored names")
    p.add_argument(
        "--force", action="store_true", help="overwrite images that already exist under OUT"
    )
    add_model_arg(p, "codec")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser(
        "info",
        help="list an archive's images, sizes, bytes and bpp",
        description="Per-image size, quality, bytes and bpp, totals, and the model fingerprint. Needs no model.",
    )
    p.add_argument("archive", help="the .hvz archive")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "benchmark", help="measured comparisons", description="Measured comparisons."
    )
    bench = p.add_subparsers(dest="benchmark_command", required=True, metavar="BENCHMARK")
    q = bench.add_parser(
        "rd",
        help="rate-distortion curves against JPEG, WebP and AVIF",
        description="Compress every image in --data at every quality with our codec and with JPEG, WebP and "
        "AVIF (Pillow), measure bpp, PSNR and MS-SSIM, encode and decode ms, and write rd.json, rd.png and a "
        "table with BD-rates to --out.",
    )
    q.add_argument("--data", required=True, help="folder of held-out images")
    q.add_argument("--out", required=True, help="output folder")
    add_model_arg(q, "codec")
    q.add_argument(
        "--qualities",
        type=int,
        nargs="+",
        default=list(range(1, QUALITY_LEVELS + 1)),
        help="our levels",
    )
    q.add_argument("--limit", type=positive_int, help="use only the first N images")
    q.add_argument(
        "--refine-steps",
        type=non_negative_int,
        nargs="+",
        default=[0, DEFAULT_REFINE_STEPS],
        metavar="N",
        help="one curve of ours per value of compress's --refine-steps "
        f"(default: 0 {DEFAULT_REFINE_STEPS})",
    )
    q.add_argument(
        "--tune", choices=TUNINGS, default="psnr", help="compress's --tune (default: psnr)"
    )
    q.set_defaults(func=cmd_benchmark_rd)
