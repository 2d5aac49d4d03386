"""Batch commands of ``hvae``: encode, decode, edit and generate (jobs of ``hvae.batch``,
run here or on Ray)."""

from __future__ import annotations

import sys
from pathlib import Path

from hvae.cli.common import add_model_arg, check_output_folder, finite_float, positive_int
from hvae.errors import HVAEError
from hvae.loading import check_worth_sampling, load_pipeline, resolve_model

BATCH_HELP = (
    "OUT/manifest.jsonl gets one line per input as it finishes; rerunning the same command resumes, "
    "skipping finished inputs. Unreadable inputs are listed in the manifest and the summary, the "
    "batch goes on, and the exit code is 1."
)


def add_batch_args(parser) -> None:
    add_model_arg(parser)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="images per unit of work: one compute call, one Ray task (default: 16). Forward passes "
        "always run 16 images at a time, so this never changes the output",
    )
    parser.add_argument(
        "--ray-workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="spread the work over N Ray Data workers (needs pip install -e '.[distributed]'; "
        "RAY_ADDRESS selects a cluster, else a local one starts); output is identical to a local run",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite files in OUT that this job would write but did not make (another job's "
        "outputs, or the inputs themselves); without it such a job is refused before any work",
    )


def parse_edits(pairs: list[str] | None) -> dict[str, float]:
    """``--set NAME=STRENGTH`` pairs -> {name: strength}. Whether a strength is allowed
    (finite, inside its direction's range) is the pipeline's ``check_edits``, whose error
    names the range: NaN and infinity are refused there, as any strength outside it."""
    edits = {}
    for pair in pairs or []:
        name, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not name:
            raise HVAEError(f"--set expects NAME=STRENGTH (e.g. floor_hue=-0.5), got {pair!r}")
        try:
            edits[name] = float(value)
        except ValueError:
            raise HVAEError(f"--set {pair}: the strength must be a number") from None
    return edits


def run_batch(job, pipe, args) -> int:
    """Run a batch job locally or on Ray, print its summary; exit 1 if any input failed."""
    if args.ray_workers:
        from hvae.distributed import run_job_on_ray

        model = resolve_model(args.model)
        summary = run_job_on_ray(job, model, pipe.fingerprint(), args.ray_workers, args.batch_size)
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

    check_output_folder(args.out)
    job = EncodeJob(args.inputs, Path(args.out), args.shard_size, overwrite=args.force)
    return run_batch(job, load_pipeline(args.model, purpose="encode"), args)


def cmd_decode(args) -> int:
    from hvae.batch import DecodeJob

    check_output_folder(args.out)
    job = DecodeJob(Path(args.codes), Path(args.out), overwrite=args.force)
    return run_batch(job, load_pipeline(args.model, purpose="decode"), args)


def cmd_edit(args) -> int:
    from hvae.batch import EditJob

    check_output_folder(args.out)
    edits = parse_edits(args.set)
    pipe = load_pipeline(args.model, purpose="edit")
    if not edits:
        raise HVAEError(
            f"give at least one --set NAME=STRENGTH; directions: {', '.join(pipe.directions) or 'none'}"
        )
    pipe.check_edits(edits, args.keep)  # names and strengths' ranges, before any work
    return run_batch(
        EditJob(args.inputs, Path(args.out), edits, args.keep, overwrite=args.force), pipe, args
    )


def cmd_generate(args) -> int:
    from hvae.batch import GenerateJob

    check_output_folder(args.out)
    pipe = load_pipeline(args.model, purpose="generate")
    check_worth_sampling(pipe, resolve_model(args.model), args.prior)
    job = GenerateJob(
        args.n,
        Path(args.out),
        args.seed,
        args.temperature,
        args.prior,
        pipe.sampler_id(args.prior),
        overwrite=args.force,
    )
    return run_batch(job, pipe, args)


def add_commands(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="images -> latent codes (safetensors shards)",
        description="Encode images (files or folders, recursive) to every latent group's posterior mean. "
        "OUT is a folder of safetensors shards (codes-NNNNN.safetensors, one image size each, with names, sizes "
        "and model fingerprint in their metadata). " + BATCH_HELP,
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--out", required=True, help="output codes folder")
    p.add_argument(
        "--shard-size", type=positive_int, default=256, help="images per shard (default: 256)"
    )
    add_batch_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="latent codes -> images",
        description="Decode a codes folder written by 'hvae encode' to PNG images, one per encoded input, "
        "at their original relative paths. The model must be the one that encoded them. "
        + BATCH_HELP,
    )
    p.add_argument("codes", help="codes folder written by 'hvae encode'")
    p.add_argument("-o", "--out", required=True, help="output folder")
    add_batch_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "edit",
        help="move images along named directions",
        description="Encode each image (files or folders, recursive), add each --set direction at its strength, "
        "and decode to OUT at the input's relative path. Run without --set to list the direction names. "
        + BATCH_HELP,
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=STRENGTH",
        help="a direction and its strength (1 = one standard deviation of the attribute), inside "
        "the direction's range ('hvae directions list' shows them); repeatable",
    )
    p.add_argument(
        "--keep",
        action="append",
        metavar="NAME",
        help="a direction whose attribute must not move: the edits are projected orthogonally to it; repeatable",
    )
    p.add_argument("-o", "--out", required=True, help="output folder")
    add_batch_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser(
        "generate",
        help="sample new images from the prior",
        description="Draw images from the hierarchical prior. Image i depends only on (--seed, i, --temperature, model), "
        "so the batch size and the number of Ray workers never change the output. "
        "OUT/manifest.jsonl records file, seed, temperature and model fingerprint per image; rerunning the same "
        "command resumes, skipping finished images.",
    )
    p.add_argument("-n", type=positive_int, default=16, help="number of images (default: 16)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature",
        type=finite_float,
        default=0.8,
        help="scale of every group's prior std (default: 0.8)",
    )
    p.add_argument(
        "--prior",
        choices=["auto", "fitted", "model"],
        default="auto",
        help="fitted: draw the top latent groups from the pipeline's fitted prior (sample_prior/, "
        "made by 'hvae train' or 'hvae prior fit') and the rest from the model; model: every group "
        "from the model's own prior; auto (default): the fitted prior, and a pipeline without one "
        "(such as the bundled photo-edit, trained for editing) is refused: its own prior gives "
        "meaningless images, so ask for it with --prior model",
    )
    add_batch_args(p)
    p.set_defaults(func=cmd_generate)
