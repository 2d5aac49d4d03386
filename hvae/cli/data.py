"""``hvae data``: data sets built from Debian's packages (today: the natural-photo corpus)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hvae.cli.common import positive_int


def print_picture_counts(out: str, splits_and_kinds, record: str) -> None:
    """What a data set preparation made: '<n> pictures -> OUT: <n> heldout/photo, ...', then
    where ``record`` (the file in OUT that lists every picture) lies."""
    counts = Counter(f"{split}/{kind}" for split, kind in splits_and_kinds)
    print(
        f"{sum(counts.values())} pictures -> {out}: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    )
    print(f"{Path(record).stem}: {Path(out) / record}")


def cmd_data_photos(args) -> int:
    from hvae.data.photo_corpus import prepare_photo_corpus

    manifest = prepare_photo_corpus(
        args.out,
        args.work,
        heldout_fraction=args.heldout_fraction,
        train_side=args.train_side,
        heldout_side=args.heldout_side,
    )
    pictures = manifest["pictures"]
    print_picture_counts(args.out, ((p["split"], p["kind"]) for p in pictures), "manifest.json")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("data", help="prepare data sets from Debian packages")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    p = data_sub.add_parser(
        "photos",
        help="a natural-photo corpus: photographs and photo textures from Debian packages",
        description="apt-get download the packages listed in hvae.data.photo_corpus.SOURCES, keep "
        "the files their path rules and pixel filters pass (smallest side 256, alpha, flatness, "
        "entropy, colour), drop copies, and split whole look-alike groups into OUT/train and "
        "OUT/heldout (photo/, texture/, astro/). OUT/manifest.json records every picture's "
        "package, path, licence, size and split; OUT/licenses/ holds the copyright files. "
        "Images of python3-skimage, python3-sklearn and opencv-doc are never used: they are kept "
        "for evaluation. About 11 min on 2 cores from scratch.",
    )
    p.add_argument("--out", required=True, help="output folder, e.g. data/photo-corpus")
    p.add_argument(
        "--work",
        required=True,
        help="download and unpack the packages here (about 8.5 GB; a rerun reuses them)",
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.1,
        help="share of each kind's pictures held out, as whole groups (default: 0.1)",
    )
    p.add_argument(
        "--train-side",
        type=positive_int,
        default=1536,
        help="training pictures are resized to at most this long side (default: 1536)",
    )
    p.add_argument(
        "--heldout-side",
        type=positive_int,
        default=768,
        help="held-out pictures are resized to at most this long side (default: 768)",
    )
    p.set_defaults(func=cmd_data_photos)
