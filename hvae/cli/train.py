"""Training commands of ``hvae``: train-autoencoder, train (stage 2), train-codec, and
prepare-photos, which makes the photo training set."""

from __future__ import annotations

from hvae.cli.common import add_training_args, positive_int, training_config
from hvae.codec_settings import DEFAULT_LMBDA
from hvae.errors import HVAEError

ARCHITECTURE_DEFAULTS = {
    "latent_channels": 4,
    "widths": [32, 64],
    "layers_per_block": 1,
    "patch_size": 2,
}


def cmd_train_autoencoder(args) -> int:
    from hvae.train_autoencoder import train_autoencoder
    from hvae.training import process_state

    given = {n: getattr(args, n) for n in ARCHITECTURE_DEFAULTS if getattr(args, n) is not None}
    if args.init_from is not None and given:
        options = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise HVAEError(f"--init-from {args.init_from} brings its own architecture; drop {options}")
    architecture = ARCHITECTURE_DEFAULTS | given  # unused with --init-from
    config = training_config(args, args.out)
    train_autoencoder(
        args.data,
        args.out,
        config,
        crop=args.crop,
        latent_channels=architecture["latent_channels"],
        block_out_channels=tuple(architecture["widths"]),
        layers_per_block=architecture["layers_per_block"],
        patch_size=architecture["patch_size"],
        n_scenes=args.scenes,
        cache_dir=args.cache_dir,
        resume=not args.no_resume,
        scales=tuple(args.scales),
        latent_noise=args.latent_noise,
        init_from=args.init_from,
        decoder_only=args.train_decoder_only,
        ms_ssim_weight=args.ms_ssim_weight,
        quantization_steps=tuple(args.quantization_steps),
    )
    if process_state().is_main_process:
        print(f"saved the stage-1 autoencoder to {args.out}")
    return 0


def cmd_train(args) -> int:
    from hvae.train_hvae import train_hvae
    from hvae.training import process_state

    config = training_config(args, args.out)
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
        global_free_bits=args.global_free_bits,
        global_only_rate=args.global_only_rate,
        crop_scales=tuple(args.crop_scales) if args.crop_scales else None,
        cache_dir=args.cache_dir,
        resume=not args.no_resume,
        sample_prior=not args.no_sample_prior,
    )
    if process_state().is_main_process:
        print(f"saved the pipeline (autoencoder + hvae) to {args.out}")
    return 0


def cmd_prepare_photos(args) -> int:
    from hvae.cli.data import print_picture_counts
    from hvae.data.wallpapers import prepare_wallpapers

    pictures = prepare_wallpapers(
        args.out,
        work_dir=args.work,
        held_out={"photo": args.heldout_photos, "graphic": args.heldout_graphics},
    )
    print_picture_counts(args.out, ((p.split, p.kind) for p in pictures), "provenance.json")
    return 0


def cmd_train_codec(args) -> int:
    from hvae.training import process_state

    config = training_config(args, args.out)
    if args.end_to_end:
        from hvae.train_rd import train_rd

        if args.init_from is None or args.autoencoder is not None:
            raise HVAEError(
                "--end-to-end trains the autoencoder and entropy model of --init-from "
                "together: give --init-from (a compression pipeline folder), not --autoencoder"
            )
        if len(args.crop) != 1:
            raise HVAEError("--end-to-end takes one --crop side")
        train_rd(
            args.init_from,
            args.data,
            args.out,
            config,
            lmbda=args.lmbda,
            feature_crop=args.crop[0],
            scales=tuple(args.scales),
            min_step=args.min_step,
            max_step=args.max_step,
            resume=not args.no_resume,
        )
        if process_state().is_main_process:
            print(f"saved the compression pipeline (autoencoder + hvae) to {args.out}")
        return 0
    if args.autoencoder is None:
        raise HVAEError("give --autoencoder (or --end-to-end with --init-from)")
    from hvae.train_codec import train_codec

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


def add_commands(sub) -> None:
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
        type=positive_int,
        default=64,
        help="training crop size; for shapes, the render size",
    )
    p.add_argument(
        "--scenes",
        type=positive_int,
        default=12000,
        help="number of scenes rendered for --data shapes",
    )
    # Architecture options default to None so that --init-from can tell them apart from
    # defaults; ARCHITECTURE_DEFAULTS fills them in for a new model.
    p.add_argument("--latent-channels", type=positive_int, help="feature channels (default: 4)")
    p.add_argument(
        "--widths",
        type=positive_int,
        nargs="+",
        help="channels of each resolution stage (default: 32 64)",
    )
    p.add_argument(
        "--layers-per-block",
        type=positive_int,
        help="residual blocks per encoder stage (default: 1)",
    )
    p.add_argument("--patch-size", type=positive_int, help="pixel-unshuffle factor (default: 2)")
    p.add_argument(
        "--init-from",
        metavar="DIR",
        help="continue from this saved PatchAutoencoder folder; its architecture is used, so "
        "the four options above must not be given",
    )
    p.add_argument(
        "--train-decoder-only",
        action="store_true",
        help="with --init-from: freeze the encoder and its latent scaling, so the features do "
        "not change and stage-2 models trained on them keep working with the new decoder",
    )
    p.add_argument(
        "--ms-ssim-weight",
        type=float,
        default=0.0,
        help="add W * (1 - MS-SSIM) to the loss; needs --crop of at least 176 (default: 0)",
    )
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[1.0],
        help="image scales that crops are drawn from, e.g. 1 0.5 0.25 for large photos (default: 1)",
    )
    p.add_argument(
        "--latent-noise",
        type=float,
        default=0.05,
        help="noise added to the latents in training, relative to their spread, so the decoder "
        "tolerates stage-2 and quantization errors (default: 0.05)",
    )
    p.add_argument(
        "--quantization-steps",
        type=float,
        nargs="+",
        default=[],
        metavar="S",
        help="with --train-decoder-only: add the error of the codec's quantization at one of "
        "these steps per image (units of the scaled features, as the codec's quality table; "
        "0 for none), so the decoder learns to decode quantized features",
    )
    add_training_args(p, steps=2000, batch_size=32, lr=2e-3)
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
        type=positive_int,
        default=64,
        help="images are centre-cropped and resized to this",
    )
    p.add_argument(
        "--scenes", type=positive_int, default=12000, help="number of scenes for --data shapes"
    )
    p.add_argument(
        "--crop-scales",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="for a folder of large photos: train on random --image-size crops of every image "
        "downscaled by each S (e.g. 0.5 0.25 0.125), instead of one centre square per image",
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
    p.add_argument(
        "--global-free-bits",
        type=float,
        default=None,
        help="free nats per dimension for the global (1x1) group only; a floor such as 1.0 keeps "
        "scene-level content in the global group that sampling and editing rely on "
        "(default: same as --free-bits)",
    )
    p.add_argument(
        "--global-only-rate",
        type=float,
        default=0.0,
        help="fraction of training images decoded from the global group alone (spatial groups at "
        "their prior mean); 0.25 or so makes the global group carry colours, shape and pose, "
        "which editing needs, at some cost in code length (default: 0)",
    )
    p.add_argument(
        "--no-sample-prior",
        action="store_true",
        help="do not fit the sampling prior after training (by default the pipeline folder gets "
        "sample_prior/, fitted to the training features, which generate uses; see 'hvae prior fit')",
    )
    add_training_args(p, steps=3000, batch_size=32, lr=2e-3)
    p.set_defaults(func=cmd_train)

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
        "[--min-step, --max-step]. Saves a compression pipeline folder (autoencoder + hvae) to --out. "
        "With --end-to-end, the autoencoder and entropy model of --init-from train together on pixel crops "
        "on bits per pixel + lambda(step) * MSE, so the features become cheaper to code.",
    )
    p.add_argument(
        "--autoencoder", help="stage-1 diffusers autoencoder folder (not with --end-to-end)"
    )
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
    p.add_argument(
        "--end-to-end",
        action="store_true",
        help="train the autoencoder of --init-from with its entropy model on rate + distortion; "
        "--crop is then the side of the crops' feature maps (32: 256-pixel crops)",
    )
    p.add_argument(
        "--lmbda",
        type=float,
        default=DEFAULT_LMBDA,
        help="with --end-to-end: distortion weight at step 1, in bits per pixel per squared "
        "8-bit level; step s weighs lmbda / s^2 (default: %(default).3g, where the bundled "
        "codec's frozen stage 1 sits)",
    )
    add_training_args(p, steps=3000, batch_size=16, lr=1e-3)
    p.set_defaults(func=cmd_train_codec)
