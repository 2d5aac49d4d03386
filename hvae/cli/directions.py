"""Commands of ``hvae`` that fit things into a pipeline folder: directions (list, fit) and
prior fit (the sampling prior)."""

from __future__ import annotations

import json
from pathlib import Path

from hvae.cli.common import add_model_arg, positive_int
from hvae.errors import HVAEError
from hvae.loading import load_pipeline, resolve_model


def cmd_directions_list(args) -> int:
    pipe = load_pipeline(args.model, purpose="edit")
    rows = pipe.direction_metadata()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"{resolve_model(args.model)}: no directions; fit some with 'hvae directions fit'")
    else:
        print(f"{'direction':24s} {'edits':28s} {'source':12s} {'strengths':16s} units")
        for name, meta in sorted(rows.items()):
            low, high = meta["range"]
            strengths = f"{low:g} to {high:g}"
            print(
                f"{name:24s} {edit_target(meta):28s} {meta['source']:12s} {strengths:16s} "
                f"1 = one {meta['units']}"
            )
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

    args.model = resolve_model(args.model)  # the folder saved to, also for a bundled name
    pipe = load_pipeline(args.model, purpose="edit")
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

    args.model = resolve_model(args.model)  # the folder saved to, also for a bundled name
    pipe = load_pipeline(args.model, purpose="sample")
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


def add_commands(sub) -> None:
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
    add_model_arg(q)
    q.add_argument(
        "--scenes", type=positive_int, metavar="N", help="fit on N rendered training scenes"
    )
    q.add_argument(
        "--seed", type=int, default=0, help="seed of the --scenes (default: 0, the training seed)"
    )
    q.add_argument(
        "--groups",
        type=positive_int,
        default=None,
        metavar="G",
        help="the top G latent groups get the fitted prior (default: every group coarser than "
        "the feature map)",
    )
    q.add_argument(
        "--components",
        type=positive_int,
        default=64,
        help="principal components the mixture models (default: 64)",
    )
    q.add_argument(
        "--mixtures",
        type=positive_int,
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
        description="List a pipeline's directions: what each edits, what it was fitted on, the "
        "strengths it takes (beyond them its edits show artifacts; see docs/slider-ranges.md) "
        "and what strength 1 means.",
    )
    add_model_arg(q)
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
    add_model_arg(q)
    q.add_argument("--labels", metavar="CSV", help="label table matched to the images by file name")
    q.add_argument("--columns", nargs="+", help="with --labels: only these columns (default: all)")
    q.add_argument("--folders", action="store_true", help="one binary attribute per sub-folder")
    q.add_argument("--auto", action="store_true", help="labels from image statistics")
    q.add_argument("--pca", type=positive_int, metavar="K", help="K unsupervised directions")
    q.add_argument(
        "--scenes", type=positive_int, metavar="N", help="N rendered scenes with true factors"
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
        type=positive_int,
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
        type=positive_int,
        default=3,
        help="with --kind feature-editor: counterfactuals rendered per scene (default: 3)",
    )
    q.add_argument(
        "--steps",
        type=positive_int,
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
        type=positive_int,
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
