"""The ``hvae`` command. Every subcommand explains itself with ``--help``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from hvae.errors import HVAEError


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_training_args(
    parser: argparse.ArgumentParser, steps: int, batch_size: int, lr: float
) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--steps", type=_positive_int, default=steps, help="optimizer steps (default: %(default)s)"
    )
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=batch_size,
        help="batch size (default: %(default)s)",
    )
    group.add_argument(
        "--lr", type=float, default=lr, help="peak learning rate (default: %(default)s)"
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed for data order and initialisation (default: 0)"
    )
    group.add_argument(
        "--mixed-precision",
        choices=("auto", "no", "bf16"),
        default="auto",
        help="bf16 autocast; 'auto' uses it on GPUs with bf16 and on CPUs with AMX-BF16 (default: auto)",
    )
    group.add_argument(
        "--checkpoint-every", type=_positive_int, default=500, help="steps between checkpoints"
    )
    group.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh: delete the checkpoints and log of an earlier run in OUT/run",
    )
    group.add_argument(
        "--cache-dir", default="cache", help="where rendered scenes and features are cached"
    )


def _training_config(args, out_dir: str):
    from hvae.training import TrainConfig

    return TrainConfig(
        out_dir=out_dir,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every,
    )


def cmd_train_autoencoder(args) -> int:
    from hvae.train_autoencoder import train_autoencoder

    config = _training_config(args, args.out)
    train_autoencoder(
        args.data,
        args.out,
        config,
        crop=args.crop,
        latent_channels=args.latent_channels,
        block_out_channels=tuple(args.widths),
        layers_per_block=args.layers_per_block,
        patch_size=args.patch_size,
        n_scenes=args.scenes,
        cache_dir=args.cache_dir,
        resume=not args.no_resume,
    )
    print(f"saved the stage-1 autoencoder to {args.out}")
    return 0


def default_model() -> str:
    """The bundled scenes pipeline, or $HVAE_MODEL."""
    return os.environ.get("HVAE_MODEL") or str(
        Path(__file__).resolve().parents[1] / "checkpoints" / "shapes"
    )


def load_pipeline(path: str):
    from pipelines import HVAEPipeline

    if not Path(path).exists():
        raise HVAEError(f"{path}: no such model folder")
    pipe = HVAEPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_images(images, names, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(images, names, strict=True):
        path = out_dir / f"{name}.png"
        image.save(path)
        paths.append(path)
    return paths


def read_inputs(inputs: list[str]):
    """Readable images and their stems; unreadable ones are reported on stderr and counted."""
    from hvae.data.images import find_images, load_image

    images, names, failures = [], [], 0
    for path in find_images(inputs):
        try:
            images.append(load_image(path))
            names.append(path.stem)
        except HVAEError as error:
            print(f"skipped: {error}", file=sys.stderr)
            failures += 1
    if not images:
        raise HVAEError("none of the inputs could be read as an image")
    return images, names, failures


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse_edits(pairs: list[str]) -> dict[str, float]:
    edits = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        try:
            edits[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise HVAEError(f"--set expects NAME=STRENGTH (e.g. floor_hue=1.5), got {pair!r}")
    return edits


def cmd_train(args) -> int:
    from hvae.train_hvae import train_hvae

    config = _training_config(args, args.out)
    train_hvae(
        args.autoencoder,
        args.data,
        args.out,
        config,
        preset=args.preset,
        image_size=args.image_size,
        n_scenes=args.scenes,
        kl_warmup_steps=args.kl_warmup,
        free_bits=args.free_bits,
        kl_weight=args.kl_weight,
        cache_dir=args.cache_dir,
        resume=not args.no_resume,
    )
    print(f"saved the pipeline (autoencoder + hvae) to {args.out}")
    return 0


def cmd_encode(args) -> int:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    pipe = load_pipeline(args.model)
    images, names, failures = read_inputs(args.inputs)
    sizes = sorted({image.size for image in images})
    if len(sizes) > 1:
        raise HVAEError(f"one codes file holds images of one size; got sizes {sizes}")
    groups: list[list] = []
    for chunk in tqdm(list(batches(images, args.batch_size)), desc="encoding", dynamic_ncols=True):
        codes = pipe.encode(chunk)
        groups.append(codes.latents)
    tensors = {
        f"group_{i}": torch.cat([g[i] for g in groups]).contiguous().cpu()
        for i in range(len(groups[0]))
    }
    metadata = {
        "names": json.dumps(names),
        "image_size": json.dumps(list(codes.image_size)),
        "feature_size": json.dumps(list(codes.feature_size)),
        "fingerprint": pipe.fingerprint(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out, metadata=metadata)
    print(f"wrote codes of {len(names)} images ({len(tensors)} latent groups) to {args.out}")
    return 1 if failures else 0


def cmd_decode(args) -> int:
    from safetensors import safe_open

    from hvae.model import HVAECodes

    pipe = load_pipeline(args.model)
    try:
        with safe_open(args.codes, "pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises several types
        raise HVAEError(
            f"{args.codes}: not a codes file written by 'hvae encode' ({error})"
        ) from None
    if "names" not in metadata:
        raise HVAEError(f"{args.codes}: not a codes file written by 'hvae encode' (no metadata)")
    if metadata.get("fingerprint") != pipe.fingerprint():
        raise HVAEError(
            f"{args.codes} was encoded by model {metadata.get('fingerprint')}, but {args.model} is model {pipe.fingerprint()}"
        )
    names = json.loads(metadata["names"])
    latents = [tensors[f"group_{i}"] for i in range(len(tensors))]
    out_dir, written = Path(args.out), 0
    for start in range(0, len(names), args.batch_size):
        codes = HVAECodes(
            latents=[z[start : start + args.batch_size].to(pipe.device) for z in latents],
            feature_size=tuple(json.loads(metadata["feature_size"])),
            image_size=tuple(json.loads(metadata["image_size"])),
        )
        written += len(
            save_images(pipe.decode(codes), names[start : start + args.batch_size], out_dir)
        )
    print(f"decoded {written} images to {out_dir}")
    return 0


def cmd_edit(args) -> int:
    pipe = load_pipeline(args.model)
    edits = parse_edits(args.set)
    if not edits:
        raise HVAEError(
            f"give at least one --set NAME=STRENGTH; directions: {', '.join(pipe.directions) or 'none'}"
        )
    images, names, failures = read_inputs(args.inputs)
    pipe.edit(pipe.encode(images[:1]), edits)  # fail on unknown names before any work
    out_dir = Path(args.out)
    for chunk, chunk_names in zip(
        batches(images, args.batch_size), batches(names, args.batch_size), strict=True
    ):
        save_images(pipe(chunk, edits=edits), chunk_names, out_dir)
    print(f"wrote {len(names)} edited images to {out_dir}")
    return 1 if failures else 0


def cmd_generate(args) -> int:
    from hvae.generate import generate_images

    pipe = load_pipeline(args.model)
    result = generate_images(
        pipe, args.n, Path(args.out), args.seed, args.temperature, args.batch_size
    )
    print(
        f"wrote {result['written']} samples to {args.out} ({result['skipped']} already there); manifest: {result['manifest']}"
    )
    return 0


def cmd_demo(args) -> int:
    from hvae.demo import run_demo

    run_demo(load_pipeline(args.model), Path(args.out), n=args.n)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hvae",
        description="Hierarchical-VAE image editing and generation on top of a diffusers autoencoder.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train-autoencoder",
        help="train a stage-1 PatchAutoencoder on scenes or a folder of images",
        description="Train a small, fast stage-1 autoencoder (PatchAutoencoder) and save it in diffusers format. "
        "Checkpoints go to OUT/run/checkpoints and the run resumes from the latest one.",
    )
    p.add_argument(
        "--data", default="shapes", help="'shapes' for the synthetic scenes, or a folder of images"
    )
    p.add_argument("--out", required=True, help="output folder (a diffusers model folder)")
    p.add_argument(
        "--crop",
        type=_positive_int,
        default=64,
        help="training crop size; for shapes, the render size",
    )
    p.add_argument(
        "--scenes",
        type=_positive_int,
        default=12000,
        help="number of scenes rendered for --data shapes",
    )
    p.add_argument(
        "--latent-channels", type=_positive_int, default=4, help="feature channels (default: 4)"
    )
    p.add_argument(
        "--widths",
        type=_positive_int,
        nargs="+",
        default=[32, 64],
        help="channels of each resolution stage",
    )
    p.add_argument(
        "--layers-per-block",
        type=_positive_int,
        default=1,
        help="residual blocks per encoder stage",
    )
    p.add_argument(
        "--patch-size", type=_positive_int, default=2, help="pixel-unshuffle factor (default: 2)"
    )
    _add_training_args(p, steps=2000, batch_size=32, lr=2e-3)
    p.set_defaults(func=cmd_train_autoencoder)

    p = sub.add_parser(
        "train",
        help="train the stage-2 hierarchical VAE and save a pipeline folder",
        description="Encode the data once with the stage-1 autoencoder (cached in --cache-dir), train the hierarchical VAE "
        "on those features, and save a pipeline folder (autoencoder + hvae) to OUT. Re-running resumes from OUT/run/checkpoints.",
    )
    p.add_argument(
        "--autoencoder", required=True, help="stage-1 diffusers autoencoder: a folder or a hub id"
    )
    p.add_argument(
        "--data", default="shapes", help="'shapes' for the synthetic scenes, or a folder of images"
    )
    p.add_argument("--out", required=True, help="output pipeline folder")
    p.add_argument(
        "--preset",
        choices=("base", "flat", "tiny"),
        default="base",
        help="stage-2 architecture: base (hierarchical), flat (single group) or tiny (default: base)",
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        default=64,
        help="images are centre-cropped and resized to this",
    )
    p.add_argument(
        "--scenes", type=_positive_int, default=12000, help="number of scenes for --data shapes"
    )
    p.add_argument(
        "--kl-warmup",
        type=int,
        default=500,
        help="steps over which the KL weight ramps from 0 to 1",
    )
    p.add_argument(
        "--kl-weight",
        type=float,
        default=1.0,
        help="KL weight after warm-up: 1.0 trains the true ELBO (best code length); below 1 moves detail "
        "from the likelihood into the latents, for more faithful reconstructions and edits (default: 1.0)",
    )
    p.add_argument(
        "--free-bits", type=float, default=0.01, help="free nats per latent dimension in each group"
    )
    _add_training_args(p, steps=3000, batch_size=32, lr=2e-3)
    p.set_defaults(func=cmd_train)

    model_help = "pipeline folder (default: the bundled scenes pipeline, or $HVAE_MODEL)"

    p = sub.add_parser(
        "encode",
        help="images -> latent codes (safetensors)",
        description="Encode images (files or folders, recursive; one size) to every latent group's posterior mean, saved as safetensors with the names, sizes and model fingerprint.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--out", required=True, help="output .safetensors file")
    p.add_argument("--model", default=default_model(), help=model_help)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="latent codes -> images",
        description="Decode a codes file written by 'hvae encode' to PNG images, one per encoded name. The model must be the one that encoded them.",
    )
    p.add_argument("codes", help="codes .safetensors file")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--model", default=default_model(), help=model_help)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "edit",
        help="move images along named directions",
        description="Encode each image, add each --set direction at its strength to its latent group, and decode. Run without --set to list the pipeline's direction names.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=STRENGTH",
        help="a direction and its strength; repeatable",
    )
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--model", default=default_model(), help=model_help)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser(
        "generate",
        help="sample new images from the prior",
        description="Draw images from the hierarchical prior. Image i depends only on (--seed, i), so the batch size never changes the output. "
        "OUT/manifest.jsonl records file, seed, temperature and model fingerprint per image; rerunning the same command resumes, skipping finished images.",
    )
    p.add_argument("-n", type=_positive_int, default=16, help="number of images (default: 16)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="scale of every group's prior std (default: 0.8)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--model", default=default_model(), help=model_help)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "demo",
        help="reconstructions, samples and an edit strip from the bundled pipeline",
        description="Run the main job offline: held-out scenes through stage 1 alone and through the full pipeline (with PSNR), samples at temperature 0.8, and an edit strip. Writes PNGs to OUT and prints where they are.",
    )
    p.add_argument(
        "-o", "--out", default="demo_output", help="output folder (default: demo_output)"
    )
    p.add_argument(
        "-n", type=_positive_int, default=8, help="held-out scenes to reconstruct (default: 8)"
    )
    p.add_argument("--model", default=default_model(), help=model_help)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HVAEError as error:
        print(f"hvae {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hvae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
