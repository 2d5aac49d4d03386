"""The ``hvae`` command. Every subcommand explains itself with ``--help``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hvae.errors import HVAEError


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
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


def _add_batch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=default_model(),
        help="pipeline folder (default: the bundled scenes pipeline, or $HVAE_MODEL)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=16,
        help="images per unit of work: one compute call, one Ray task (default: 16). Forward passes "
        "always run 16 images at a time, so this never changes the output",
    )
    parser.add_argument(
        "--ray-workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="spread the work over N Ray Data workers (needs pip install -e '.[distributed]'; "
        "RAY_ADDRESS selects a cluster, else a local one starts); output is identical to a local run",
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
    config = _training_config(args, args.out)
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


def bundled_model(folder: str, variable: str) -> str:
    """The pipeline folder that ``$variable`` names, or the bundled ``checkpoints/<folder>``."""
    return os.environ.get(variable) or str(
        Path(__file__).resolve().parents[1] / "checkpoints" / folder
    )


def default_model() -> str:
    """The bundled scenes pipeline, or $HVAE_MODEL."""
    return bundled_model("shapes", "HVAE_MODEL")


def load_pipeline(path: str, class_name: str = "HVAEPipeline"):
    """A pipeline folder loaded with ``pipelines.<class_name>``, progress bars off."""
    import pipelines

    if not Path(path).exists():
        raise HVAEError(f"{path}: no such model folder")
    pipe = getattr(pipelines, class_name).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
    from hvae.training import process_state

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


def run_batch(job, pipe, args) -> int:
    """Run a batch job locally or on Ray, print its summary; exit 1 if any input failed."""
    if args.ray_workers:
        from hvae.distributed import run_job_on_ray

        summary = run_job_on_ray(
            job, args.model, pipe.fingerprint(), args.ray_workers, args.batch_size
        )
    else:
        from hvae.batch import run_job

        summary = run_job(job, pipe, args.batch_size)
    for item, error in summary.failures:
        print(f"failed: {item}: {error}", file=sys.stderr)
    print(
        f"{job.description}: {summary.done} done, {summary.already_done} already done, "
        f"{len(summary.failures)} failed -> {args.out} (manifest: {summary.manifest})"
    )
    return 1 if summary.failures else 0


def cmd_encode(args) -> int:
    from hvae.batch import EncodeJob

    pipe = load_pipeline(args.model)
    return run_batch(EncodeJob(args.inputs, Path(args.out), args.shard_size), pipe, args)


def cmd_decode(args) -> int:
    from hvae.batch import DecodeJob

    job = DecodeJob(Path(args.codes), Path(args.out))
    return run_batch(job, load_pipeline(args.model), args)


def cmd_edit(args) -> int:
    from hvae.batch import EditJob

    pipe = load_pipeline(args.model)
    edits = parse_edits(args.set)
    if not edits:
        raise HVAEError(
            f"give at least one --set NAME=STRENGTH; directions: {', '.join(pipe.directions) or 'none'}"
        )
    pipe.check_directions([*edits, *(args.keep or [])])  # fail before any work
    return run_batch(EditJob(args.inputs, Path(args.out), edits, args.keep), pipe, args)


def cmd_generate(args) -> int:
    from hvae.batch import GenerateJob

    pipe = load_pipeline(args.model)
    job = GenerateJob(
        args.n, Path(args.out), args.seed, args.temperature, args.prior, pipe.sampler_id(args.prior)
    )
    return run_batch(job, pipe, args)


def cmd_directions_list(args) -> int:
    pipe = load_pipeline(args.model)
    rows = pipe.direction_metadata()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"{args.model}: no directions; fit some with 'hvae directions fit'")
    else:
        for name, meta in sorted(rows.items()):
            print(f"{name:24s} {edit_target(meta):28s} {meta['source']:8s} 1 = one {meta['units']}")
    return 0


def edit_target(meta: dict) -> str:
    """What a direction moves, from its ``direction_metadata`` entry."""
    if meta["kind"] == "vector":
        return f"group {meta['group']}"
    if meta["kind"] == "feature-flow":
        return "stage-1 features (flow)"
    if meta["kind"] == "feature-editor":
        return "stage-1 features (editor)"
    groups = meta["groups"]
    span = f"group {groups[0]}" if len(groups) == 1 else f"groups {groups[0]}-{groups[-1]}"
    return f"{span} ({meta['kind']})"


def cmd_directions_fit(args) -> int:
    from hvae import directions
    from hvae.batch import list_inputs
    from hvae.data.images import load_image

    pipe = load_pipeline(args.model)
    sources = [
        args.labels is not None,
        args.folders,
        args.auto,
        args.pca is not None,
        args.scenes is not None,
        args.pairs is not None,
    ]
    if sum(sources) != 1:
        raise HVAEError(
            "choose exactly one of --labels CSV, --folders, --auto, --pca K, --scenes N, --pairs CSV"
        )
    if args.pairs is not None and args.kind != "feature-editor":
        raise HVAEError("--pairs trains a feature editor: use it with --kind feature-editor")
    # Option conflicts fail before any image is read.
    if args.all_groups and args.kind not in ("field", "all-groups-field"):
        raise HVAEError(
            f"--all-groups is --kind all-groups-field; it cannot go with --kind {args.kind}"
        )
    if args.pca is not None and (args.all_groups or args.kind != "field"):
        raise HVAEError(
            "--pca fits vectors in the global group; it takes no --kind or --all-groups"
        )
    if args.kind == "feature-flow" and not args.auto:
        raise HVAEError(
            "--kind feature-flow is fitted on pixel adjustments of the auto statistics: use --auto"
        )
    if args.resume and args.kind != "feature-editor":
        raise HVAEError("--resume continues a feature editor: use it with --kind feature-editor")
    if args.kind == "feature-editor":
        editor_options = {"width": args.editor_width, "mixed_precision": args.mixed_precision}
        if args.pairs is not None:
            fits = directions.fit_pair_editor(
                pipe, args.pairs, args.steps, args.lr, args.resume, **editor_options
            )
        elif args.scenes is not None:
            fits = directions.fit_scene_editor(
                pipe,
                args.scenes,
                args.seed,
                args.pairs_per_scene,
                args.steps,
                args.lr,
                args.resume,
                **editor_options,
            )
        else:
            raise HVAEError(
                "--kind feature-editor is trained on before/after pairs: use --pairs CSV, or "
                "--scenes N for rendered scenes and their counterfactuals"
            )
        print(
            "\n".join(
                f"{name}: {share:.1%} of its held-out pairs' feature change predicted"
                for name, share in fits.items()
            )
        )
        return save_fitted_directions(pipe, args)
    if args.scenes is not None:
        images, labels = directions.scene_labels(args.scenes, args.seed, pipe.training_image_size)
        source = "scenes"
    else:
        if not args.inputs:
            raise HVAEError("give the image files or folders to fit on")
        inputs = list_inputs(args.inputs)
        paths = {Path(i.path).name if args.labels else i.name: Path(i.path) for i in inputs}
        if args.labels is not None:
            names, table = directions.read_label_table(args.labels)
            wanted = args.columns or list(table)
            unknown = sorted(set(wanted) - set(table))
            if unknown:
                raise HVAEError(
                    f"{args.labels}: no column(s) {', '.join(unknown)}; columns: {', '.join(table)}"
                )
            ordered, labels = directions.labels_for(
                paths, names, {c: table[c] for c in wanted}, args.labels
            )
            images, source = [load_image(p) for p in ordered], "labels"
        else:
            images = [load_image(p) for p in paths.values()]
            if args.folders:
                if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
                    raise HVAEError("--folders takes one folder whose sub-folders are the classes")
                labels = directions.folder_labels(
                    list(paths.values()), Path(args.inputs[0]).resolve()
                )
                source = "folders"
            elif args.auto:
                labels, source = directions.auto_labels(images), "auto"
    if args.max_side:
        for image in images:
            image.thumbnail((args.max_side, args.max_side))
    if args.pca is not None:
        fits = directions.fit_pca(pipe, images, args.pca)
        print(
            "\n".join(
                f"{name}: {share:.1%} of the global group's variance"
                for name, share in fits.items()
            )
        )
    else:
        kind = "all-groups-field" if args.all_groups else args.kind
        fits = directions.fit_directions(pipe, images, labels, source, kind)
        what = {
            "field": "the attribute as the field reads it from the global latents",
            "all-groups-field": "the attribute as the field reads it from every group's latents",
            "moments": "the attribute as a ridge regression reads it from the global latents",
            "feature-flow": "the feature changes of the fitting pairs, as the flow predicts them",
        }[kind]
        print("\n".join(f"{name}: R² {r2:.3f} ({what})" for name, r2 in fits.items()))
    return save_fitted_directions(pipe, args)


def save_fitted_directions(pipe, args) -> int:
    out = Path(args.out or args.model)
    if args.out:
        pipe.save_pretrained(out)
    else:
        pipe.save_directions(out / "directions")
    print(f"saved {len(pipe.directions)} directions to {out / 'directions'}")
    return 0


def cmd_prior_fit(args) -> int:
    from hvae.batch import list_inputs
    from hvae.data.images import load_image
    from hvae.directions import group_latents, scene_labels
    from hvae.latent_prior import fit_to_latents, prior_groups
    from pipelines.hvae_pipeline import SAMPLE_PRIOR_FOLDER

    pipe = load_pipeline(args.model)
    if (args.scenes is None) == (not args.inputs):
        raise HVAEError("give either image files or folders, or --scenes N")
    if args.scenes is not None:
        images, _ = scene_labels(args.scenes, args.seed, pipe.training_image_size)
        source = f"{args.scenes} rendered scenes, seed {args.seed}"
    else:
        images = [load_image(Path(i.path)) for i in list_inputs(args.inputs)]
        source = f"{len(images)} images from {', '.join(args.inputs)}"
    size = pipe.training_image_size
    wrong = [i for i, image in enumerate(images) if image.size != (size, size)]
    if wrong:
        raise HVAEError(
            f"{len(wrong)} of {len(images)} images are not {size}×{size}, the training size "
            "(the prior models spatial groups at that size)"
        )
    groups = prior_groups(pipe.hvae, args.groups)
    latents = group_latents(pipe, images, groups)
    pipe.fitted_prior = fit_to_latents(
        pipe.hvae, latents, groups, args.components, args.mixtures, source
    )
    out = Path(args.out or args.model)
    if args.out:
        pipe.save_pretrained(out)
    else:
        pipe.save_fitted_prior(out / SAMPLE_PRIOR_FOLDER)
    print(f"saved the sampling prior to {out / SAMPLE_PRIOR_FOLDER}")
    return 0


def cmd_ui(args) -> int:
    try:
        from ui.app import build_app
    except ImportError as error:
        raise HVAEError(f"the editor needs Gradio: pip install -e '.[ui]' ({error})") from None
    models = {Path(m).name: m for m in args.model} if args.model else None
    build_app(models).launch(server_name=args.host, server_port=args.port)
    return 0


def cmd_demo(args) -> int:
    from hvae.cli_codec import default_codec_model, load_codec
    from hvae.demo import SAMPLE_PHOTOS, run_compression_demo, run_demo

    if args.codec_model is None:
        args.codec_model = default_codec_model()
    run_demo(load_pipeline(args.model), Path(args.out), n=args.n)
    if args.codec_model and Path(args.codec_model).exists() and SAMPLE_PHOTOS.is_dir():
        run_compression_demo(load_codec(args.codec_model), SAMPLE_PHOTOS, Path(args.out))
    else:
        print("no compression pipeline or sample photos found: skipped the compression part")
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
    # Architecture options default to None so that --init-from can tell them apart from
    # defaults; ARCHITECTURE_DEFAULTS fills them in for a new model.
    p.add_argument("--latent-channels", type=_positive_int, help="feature channels (default: 4)")
    p.add_argument(
        "--widths",
        type=_positive_int,
        nargs="+",
        help="channels of each resolution stage (default: 32 64)",
    )
    p.add_argument(
        "--layers-per-block",
        type=_positive_int,
        help="residual blocks per encoder stage (default: 1)",
    )
    p.add_argument("--patch-size", type=_positive_int, help="pixel-unshuffle factor (default: 2)")
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
    _add_training_args(p, steps=3000, batch_size=32, lr=2e-3)
    p.set_defaults(func=cmd_train)

    model_help = "pipeline folder (default: the bundled scenes pipeline, or $HVAE_MODEL)"

    batch_help = (
        "OUT/manifest.jsonl gets one line per input as it finishes; rerunning the same command resumes, "
        "skipping finished inputs. Unreadable inputs are listed in the manifest and the summary, the "
        "batch goes on, and the exit code is 1."
    )

    p = sub.add_parser(
        "encode",
        help="images -> latent codes (safetensors shards)",
        description="Encode images (files or folders, recursive) to every latent group's posterior mean. "
        "OUT is a folder of safetensors shards (codes-NNNNN.safetensors, one image size each, with names, sizes "
        "and model fingerprint in their metadata). " + batch_help,
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--out", required=True, help="output codes folder")
    p.add_argument(
        "--shard-size", type=_positive_int, default=256, help="images per shard (default: 256)"
    )
    _add_batch_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="latent codes -> images",
        description="Decode a codes folder written by 'hvae encode' to PNG images, one per encoded input, "
        "at their original relative paths. The model must be the one that encoded them. "
        + batch_help,
    )
    p.add_argument("codes", help="codes folder written by 'hvae encode'")
    p.add_argument("-o", "--out", required=True, help="output folder")
    _add_batch_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "edit",
        help="move images along named directions",
        description="Encode each image (files or folders, recursive), add each --set direction at its strength, "
        "and decode to OUT at the input's relative path. Run without --set to list the direction names. "
        + batch_help,
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=STRENGTH",
        help="a direction and its strength (1 = one standard deviation of the attribute); repeatable",
    )
    p.add_argument(
        "--keep",
        action="append",
        metavar="NAME",
        help="a direction whose attribute must not move: the edits are projected orthogonally to it; repeatable",
    )
    p.add_argument("-o", "--out", required=True, help="output folder")
    _add_batch_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser(
        "generate",
        help="sample new images from the prior",
        description="Draw images from the hierarchical prior. Image i depends only on (--seed, i, --temperature, model), "
        "so the batch size and the number of Ray workers never change the output. "
        "OUT/manifest.jsonl records file, seed, temperature and model fingerprint per image; rerunning the same "
        "command resumes, skipping finished images.",
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
    p.add_argument(
        "--prior",
        choices=["auto", "fitted", "model"],
        default="auto",
        help="fitted: draw the top latent groups from the pipeline's fitted prior (sample_prior/, "
        "made by 'hvae train' or 'hvae prior fit') and the rest from the model; model: every group from the "
        "model's own prior; auto (default): the fitted prior when the pipeline has one",
    )
    _add_batch_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "prior",
        help="fit the prior that generate draws the top latent groups from",
        description="Fit a Gaussian mixture over the principal components of the top latent groups' "
        "posterior means on training images, and save it in the pipeline folder (sample_prior/). "
        "generate and sample() then draw those groups from it and the groups below from the model's "
        "conditional priors: a VAE's own prior rarely covers where its encoder puts real images, and "
        "samples fall in the gaps. Fit on the images the model was trained on, at its training size.",
    )
    prior_sub = p.add_subparsers(dest="prior_command", required=True, metavar="ACTION")
    q = prior_sub.add_parser(
        "fit",
        help="fit and save the sampling prior",
        description="Fit the sampling prior of a pipeline on images (files or folders, all of the "
        "training size) or on --scenes N rendered scenes.",
    )
    q.add_argument("inputs", nargs="*", help="image files or folders to fit on")
    q.add_argument("--model", default=default_model(), help=model_help)
    q.add_argument(
        "--scenes", type=_positive_int, metavar="N", help="fit on N rendered training scenes"
    )
    q.add_argument(
        "--seed", type=int, default=0, help="seed of the --scenes (default: 0, the training seed)"
    )
    q.add_argument(
        "--groups",
        type=_positive_int,
        default=None,
        metavar="G",
        help="the top G latent groups get the fitted prior (default: every group coarser than "
        "the feature map)",
    )
    q.add_argument(
        "--components",
        type=_positive_int,
        default=64,
        help="principal components the mixture models (default: 64)",
    )
    q.add_argument(
        "--mixtures",
        type=_positive_int,
        default=32,
        help="mixture components (default: 32; at most one per 50 images)",
    )
    q.add_argument("-o", "--out", help="write a new pipeline folder instead of updating --model")
    q.set_defaults(func=cmd_prior_fit)

    p = sub.add_parser(
        "directions",
        help="list or fit the named edit directions of a pipeline",
        description="Attribute directions live in the pipeline folder (directions/) and load with it.",
    )
    directions_sub = p.add_subparsers(dest="directions_command", required=True, metavar="ACTION")
    q = directions_sub.add_parser(
        "list",
        help="the directions a pipeline can edit",
        description="List a pipeline's directions.",
    )
    q.add_argument("--model", default=default_model(), help=model_help)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_directions_list)
    q = directions_sub.add_parser(
        "fit",
        help="fit directions from labels, folder names, image statistics, PCA or the scenes' factors",
        description="Fit attribute directions: a small field that reads the attributes from the latents and "
        "writes their change back, over the global group (any image size) or, with --all-groups, over every "
        "group (images of the fitting size). Strength 1 moves the attribute by about one "
        "standard deviation over the fitting images. Sources: --labels CSV (a header row, first column the file "
        "name; CelebA's list_attr_celeba.txt works as is), --folders (one binary attribute per sub-folder), "
        "--auto (brightness, saturation, warmth, contrast, sharpness computed from the pixels), --pca K "
        "(unsupervised), --scenes N (rendered scenes with their true factors), or --pairs CSV (before/after "
        "images and the change between them, for --kind feature-editor). The directions are added to the "
        "model folder, or to a copy of it with -o.",
    )
    q.add_argument("inputs", nargs="*", help="image files or folders to fit on")
    q.add_argument("--model", default=default_model(), help=model_help)
    q.add_argument("--labels", metavar="CSV", help="label table matched to the images by file name")
    q.add_argument("--columns", nargs="+", help="with --labels: only these columns (default: all)")
    q.add_argument("--folders", action="store_true", help="one binary attribute per sub-folder")
    q.add_argument("--auto", action="store_true", help="labels from image statistics")
    q.add_argument("--pca", type=_positive_int, metavar="K", help="K unsupervised directions")
    q.add_argument(
        "--scenes", type=_positive_int, metavar="N", help="N rendered scenes with true factors"
    )
    q.add_argument("--seed", type=int, default=2, help="seed of the --scenes (default: 2)")
    q.add_argument(
        "--pairs",
        metavar="CSV",
        help="before/after pairs for --kind feature-editor: a header before,after,<attribute>,... "
        "and per row two image files (relative to the CSV) and how much each attribute changes "
        "from the first to the second; strength 1 is one unit of that change. Images must be the "
        "pipeline's training size",
    )
    q.add_argument(
        "--max-side",
        type=_positive_int,
        metavar="PX",
        help="shrink larger images to this many pixels on their longer side before fitting "
        "(fit at the size you will edit at; large photos are also slow to encode)",
    )
    q.add_argument(
        "--kind",
        choices=["field", "all-groups-field", "moments", "feature-flow", "feature-editor"],
        default="field",
        help="field (default): a direction field over the global group, any image size; "
        "all-groups-field: a field over every group, which edits what only the spatial groups hold "
        "(layout, size, shape), for images of the size fitted on; moments: shift and scale every "
        "latent channel and the kept detail per sd of the attribute, any image size; feature-flow "
        "(with --auto only): a linear flow of the stage-1 features at every position, fitted on "
        "each image and the same image brightened, saturated, warmed, ... in pixels, any image size "
        "(the bundled photo sliders); feature-editor (with --scenes or --pairs): a small network on "
        "the stage-1 features trained on before/after pairs, rendered scenes and their "
        "counterfactuals (each changed in a few factors; shapes move in class units, +1 makes the "
        "object that shape) or your own, to make exactly the change asked for; images of the "
        "size it was trained on (the bundled scene sliders)",
    )
    q.add_argument(
        "--pairs-per-scene",
        type=_positive_int,
        default=3,
        help="with --kind feature-editor: counterfactuals rendered per scene (default: 3)",
    )
    q.add_argument(
        "--steps",
        type=_positive_int,
        default=4000,
        help="with --kind feature-editor: training steps of 64 pairs (default: 4000)",
    )
    q.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="with --kind feature-editor: the peak learning rate of the one-cycle schedule "
        "(default: 1e-3)",
    )
    q.add_argument(
        "--resume",
        action="store_true",
        help="with --kind feature-editor: train the model's own editor further instead of a new "
        "one; give the --pairs CSV, or the --scenes, --seed and --pairs-per-scene, it was fitted "
        "with, so its held-out pairs stay held out",
    )
    q.add_argument(
        "--editor-width",
        type=_positive_int,
        default=32,
        help="with --kind feature-editor: channels of the editor's full-resolution stage; "
        "its half-resolution stage has twice as many (default: 32)",
    )
    q.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "bf16"],
        default="auto",
        help="with --kind feature-editor: bf16 autocast in training; 'auto' uses it on CPUs "
        "with AMX-BF16 (default: auto)",
    )
    q.add_argument("--all-groups", action="store_true", help="the same as --kind all-groups-field")
    q.add_argument("-o", "--out", help="write a new pipeline folder instead of updating --model")
    q.set_defaults(func=cmd_directions_fit)

    p = sub.add_parser(
        "ui",
        help="serve the Gradio app (edit with sliders, generate, compress)",
        description="Serve ui/app.py: an Edit tab (upload an image, one slider per direction; the image is "
        "encoded once and each slider release only decodes), a Generate tab (seed, temperature, count, "
        "gallery, zip download) and a Compress tab (images -> .hvz with a per-image table against JPEG at "
        "the same size; .hvz -> gallery). Needs pip install -e '.[ui]'. Works offline on the bundled pipelines.",
    )
    p.add_argument(
        "--model",
        action="append",
        help="pipeline folder to serve; repeatable (default: every bundled pipeline)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.set_defaults(func=cmd_ui)

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
    p.add_argument(
        "--codec-model",
        default=None,
        help="compression pipeline for the photo part (default: the bundled photo pipeline; "
        "'' to skip)",
    )
    p.set_defaults(func=cmd_demo)

    from hvae.cli_codec import add_codec_commands

    add_codec_commands(sub, _add_training_args, _positive_int)
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
