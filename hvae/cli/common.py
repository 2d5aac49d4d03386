"""Argument types and helpers shared by the command groups of ``hvae``.

Nothing here imports torch: the parsers are built from these on every run, ``--help``
included, and must be fast."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from hvae.errors import HVAEError
from hvae.loading import model_help


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def add_model_arg(parser: argparse.ArgumentParser, kind: str = "pipeline") -> None:
    """``--model``: a folder or a bundled name, resolved by ``hvae.loading`` when loading
    (so that $HVAE_MODEL is read when the command runs, not when the parser is built)."""
    parser.add_argument("--model", default=None, help=model_help(kind))


def add_training_args(
    parser: argparse.ArgumentParser, steps: int, batch_size: int, lr: float
) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--steps", type=positive_int, default=steps, help="optimizer steps (default: %(default)s)"
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
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
        "--checkpoint-every", type=positive_int, default=500, help="steps between checkpoints"
    )
    group.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh: delete the checkpoints and log of an earlier run in OUT/run",
    )
    group.add_argument(
        "--cache-dir", default="cache", help="where rendered scenes and features are cached"
    )


def training_config(args, out_dir: str):
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


def _check_writable(path: Path) -> None:
    """The nearest existing folder above ``path`` must be one we can write into."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise HVAEError(f"{path}: cannot be created ({ancestor} is a file, not a folder)")
    if not os.access(ancestor, os.W_OK):
        raise HVAEError(f"{path}: cannot be created ({ancestor} is not writable)")


def check_output_folder(out: str) -> None:
    """Fail before any work on an ``-o`` folder that cannot be one."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise HVAEError(f"{out}: exists and is not a folder; give an output folder")
    if not path.exists():
        _check_writable(path)


def check_output_file(out: str, inputs: list[str], force: bool) -> None:
    """Fail before any work on an ``-o`` file that is a folder, one of the inputs, or (without
    ``--force``) an existing file."""
    path = Path(out)
    if path.is_dir():
        raise HVAEError(f"{out}: is a folder; give the output file's name, e.g. {out}/out.hvz")
    if any(Path(i).is_file() and path.resolve() == Path(i).resolve() for i in inputs):
        raise HVAEError(f"{out}: is one of the inputs; give another output file")
    if path.exists() and not force:
        raise HVAEError(f"{out}: exists; give --force to overwrite it")
    _check_writable(path)
