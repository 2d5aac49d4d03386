"""The photo and compression commands of ``hvae``: prepare-photos, train-codec, compress,
decompress, info and benchmark rd. ``hvae.cli`` registers them with ``add_codec_commands``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hvae.cli import bundled_model, load_pipeline, non_negative_int
from hvae.codec_settings import DEFAULT_QUALITY, DEFAULT_REFINE_STEPS, QUALITY_LEVELS, TUNINGS


def default_codec_model() -> str:
    """The bundled photo compression pipeline, or $HVAE_CODEC_MODEL."""
    return bundled_model("photo", "HVAE_CODEC_MODEL")


def load_codec(path: str):
    return load_pipeline(path, "HVAECompressionPipeline")


def cmd_prepare_photos(args) -> int:
    from collections import Counter

    from hvae.data.wallpapers import prepare_wallpapers

    pictures = prepare_wallpapers(
        args.out,
        work_dir=args.work,
        held_out={"photo": args.heldout_photos, "graphic": args.heldout_graphics},
    )
    counts = Counter(f"{p.split}/{p.kind}" for p in pictures)
    print(
        f"{len(pictures)} pictures -> {args.out}: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    )
    print(f"provenance: {Path(args.out) / 'provenance.json'}")
    return 0


def cmd_train_codec(args) -> int:
    from hvae.cli import _training_config
    from hvae.train_codec import train_codec
    from hvae.training import process_state

    config = _training_config(args, args.out)
    train_codec(
        args.autoencoder,
        args.data,
        args.out,
        config,
        preset=args.preset,
        crop=tuple(args.crop),
        scales=tuple(args.scales),
        min_step=args.min_step,
        max_step=args.max_step,
        cache_dir=args.cache_dir,
        resume=not args.no_resume,
        init_from=args.init_from,
    )
    if process_state().is_main_process:
        print(f"saved the compression pipeline (autoencoder + hvae) to {args.out}")
    return 0


def cmd_compress(args) -> int:
    pipe = load_codec(args.model)
    compute = None
    if args.ray_workers:
        from functools import partial

        from hvae.distributed import map_on_ray

        compute = partial(
            map_on_ray, model=args.model, workers=args.ray_workers, batch_size=args.batch_size
        )
    summary = pipe.compress_files(
        args.inputs,
        args.out,
        quality=args.quality,
        compute=compute,
        refine_steps=args.refine_steps,
        tune=args.tune,
    )
    for message in summary.skipped:
        print(f"skipped: {message}", file=sys.stderr)
    print(
        f"{summary.images} images -> {args.out}: {summary.bytes} bytes, {summary.bpp:.4f} bpp "
        f"(quality {args.quality})"
        + (f", {len(summary.skipped)} skipped" if summary.skipped else "")
    )
    return 1 if summary.skipped else 0


def cmd_decompress(args) -> int:
    pipe = load_codec(args.model)
    summary = pipe.decompress_archive(args.archive, args.out, only=args.only)
    for message in summary.damaged:
        print(f"damaged: {message}", file=sys.stderr)
    if not summary.complete:
        print(
            f"warning: {args.archive} has no valid index (cut short?); "
            "decoded every complete record before the damage",
            file=sys.stderr,
        )
    print(f"{len(summary.written)} images -> {args.out}")
    return 1 if summary.damaged or not summary.complete else 0


def cmd_info(args) -> int:
    from pipelines.compression_pipeline import archive_info

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
                f"{image['bytes']:>9}  {image['bpp']:>7.4f}"
            )
        for message in info["damaged"]:
            print(f"damaged: {message}")
        print(
            f"total: {len(info['images'])} images, {info['total_bytes']} bytes, "
            f"{info['bpp']:.4f} bpp (file bytes over all pixels)"
        )
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


def add_codec_commands(sub, add_training_args, positive_int) -> None:
    p = sub.add_parser(
        "prepare-photos",
        help="download Debian's wallpaper packages and make the photo train/held-out folders",
        description="apt-get download the wallpaper packages, unpack them, keep the largest copy of every "
        "picture (their resolution variants are one group), and split whole pictures into OUT/train and "
        "OUT/heldout, each with photo/ and graphic/ sub-folders. OUT/provenance.json records every file's "
        "package, version, source path, size and sha256; OUT/licenses holds the packages' copyright files.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--work", help="keep downloaded and unpacked packages here (default: a temp dir)"
    )
    p.add_argument(
        "--heldout-photos", type=int, default=6, help="photographs held out (default: 6)"
    )
    p.add_argument(
        "--heldout-graphics", type=int, default=4, help="illustrations held out (default: 4)"
    )
    p.set_defaults(func=cmd_prepare_photos)

    p = sub.add_parser(
        "train-codec",
        help="train the HVAE entropy model of a compression pipeline",
        description="Encode every image of --data (at each --scales) with the autoencoder once, then train a "
        "rate-conditioned hierarchical VAE on random feature crops, each at a random quantization step in "
        "[--min-step, --max-step]. Saves a compression pipeline folder (autoencoder + hvae) to --out.",
    )
    p.add_argument("--autoencoder", required=True, help="stage-1 diffusers autoencoder folder")
    p.add_argument("--data", required=True, help="folder of training images")
    p.add_argument("--out", required=True, help="output pipeline folder")
    p.add_argument("--preset", default="base", help="entropy-model architecture: base or tiny")
    p.add_argument(
        "--init-from",
        metavar="DIR",
        help="continue from the entropy model of this compression pipeline folder (its "
        "architecture replaces --preset); OUT/run checkpoints still take precedence",
    )
    p.add_argument(
        "--crop",
        type=positive_int,
        nargs="+",
        default=[32],
        help="feature crop side; several sides mix crop shapes, each step drawing its height "
        "and width from them, with --batch-size crops of the smallest side's area (default: 32)",
    )
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[1.0, 0.5, 0.25],
        help="image scales (default: 1 0.5 0.25)",
    )
    p.add_argument(
        "--min-step", type=float, default=0.1, help="smallest quantization step (default: 0.1)"
    )
    p.add_argument(
        "--max-step", type=float, default=3.0, help="largest quantization step (default: 3.0)"
    )
    add_training_args(p, steps=3000, batch_size=16, lr=1e-3)
    p.set_defaults(func=cmd_train_codec)

    model_help = (
        "compression pipeline folder (default: the bundled photo pipeline, or $HVAE_CODEC_MODEL)"
    )
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
    p.add_argument("--model", default=default_codec_model(), help=model_help)
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
    p.add_argument("--model", default=default_codec_model(), help=model_help)
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
    q.add_argument("--model", default=default_codec_model(), help=model_help)
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
