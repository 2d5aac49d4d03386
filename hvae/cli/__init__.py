"""The ``hvae`` command. Every subcommand explains itself with ``--help``.

The parsers are built from the command groups' modules, none of which imports torch,
diffusers or the pipelines: each command imports what it needs when it runs, so
``hvae --help`` and ``hvae info`` start in a fraction of a second."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from hvae.cli import app, batch, codec, data, directions, train
from hvae.errors import HVAEError
from hvae.safe_io import sigterm_as_interrupt

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hvae",
        description="Hierarchical-VAE image editing, generation and compression on top of a "
        "diffusers autoencoder. --model takes a pipeline folder or the name of a bundled one "
        "(shapes, photo-edit, photo), from any folder.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (train, data, batch, directions, app, codec):
        group.add_commands(sub)
    return parser


def _describe(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = f"hvae {args.command}"
    # SIGTERM (kill, a scheduler) ends a job as Ctrl-C does: files closed, manifests
    # flushed, partial archives kept.
    with sigterm_as_interrupt():
        try:
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at exit
            return code
        except HVAEError as error:
            print(f"{prefix}: error: {error}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            # The reader went away (`hvae info --json | head -1`): stop quietly, and point
            # stdout at /dev/null so that the interpreter's last flush does not complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        except OSError as error:
            print(f"{prefix}: error: {_describe(error)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as interrupt:
            how = f" ({interrupt})" if str(interrupt) else ""  # "stopped by signal 15"
            print(f"{prefix}: interrupted{how}", file=sys.stderr)
            return 130
