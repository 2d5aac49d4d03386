"""The photo dataset: Debian's wallpaper packages, deduplicated and split by whole image.

Wallpaper packages ship one picture at several resolutions and aspect ratios
(and sometimes a light and a dark variant). Those copies must never straddle
the train / held-out split, or held-out scores would measure memorisation. So
every file is first assigned to a *source group* (one picture, all its copies),
only the largest copy of each group is kept, and the split is made by group.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from hvae.data.images import load_image
from hvae.errors import HVAEError

PACKAGES = (
    "plasma-workspace-wallpapers",
    "mate-backgrounds",
    "ukui-wallpapers",
    "gnome-backgrounds",
    "lomiri-wallpapers",
    "sway-backgrounds",
)
RASTER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Pictures held out per kind by default (one per group); the photo corpus keeps this split.
HELD_OUT = {"photo": 6, "graphic": 4}
# Resolution tags, orientation tags and light/dark suffixes that mark copies of one picture.
_VARIANT_TAGS = re.compile(r"(_\d+x\d+|_portrait|-[ld])+$", re.IGNORECASE)
# Most wallpapers are illustrations or renders. These groups are photographs,
# picked by eye from a contact sheet of every group (see checkpoints/README.md).
PHOTOGRAPHS = frozenset(
    f"{package}/{name}"
    for package, names in {
        "mate-backgrounds": "Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops "
        "Storm TwoWings Wood YellowFlower",
        "plasma-workspace-wallpapers": "BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow "
        "FallenLeaf Grey Kite MilkyWay OneStandsOut Path Volna summer_1am",
    }.items()
    for name in names.split()
)


@dataclass
class Picture:
    group: str
    package: str
    source: str
    width: int
    height: int
    sha256: str
    split: str = ""
    file: str = ""

    @property
    def kind(self) -> str:
        return "photo" if self.group in PHOTOGRAPHS else "graphic"


def source_group(package: str, relative: Path) -> str | None:
    """The picture a file is a copy of, or None for files that are not wallpapers."""
    parts = relative.parts
    if "contents" in parts:  # KDE layout: wallpapers/<Name>/contents/images*/WxH.ext
        if relative.stem == "screenshot":
            return None
        return f"{package}/{parts[parts.index('contents') - 1]}"
    return f"{package}/{_VARIANT_TAGS.sub('', relative.stem)}"


def download_packages(work_dir: Path, packages=PACKAGES) -> dict[str, str]:
    """``apt-get download`` and unpack each package; returns {package: version}."""
    versions = {}
    debs = work_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for package in tqdm(packages, desc="downloading packages", dynamic_ncols=True):
        if not list(debs.glob(f"{package}_*.deb")):
            result = subprocess.run(
                ["apt-get", "download", package], cwd=debs, capture_output=True, text=True
            )
            if result.returncode != 0:
                raise HVAEError(f"apt-get download {package} failed: {result.stderr.strip()}")
        deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
        versions[package] = deb.name.split("_")[1].replace("%3a", ":")
        target = work_dir / "unpacked" / package
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True)
    return versions


def copyright_file(unpacked: Path, package: str) -> Path:
    return unpacked / package / "usr/share/doc" / package / "copyright"


def copy_copyrights(unpacked: Path, packages, target: Path) -> None:
    """Copy each package's Debian ``copyright`` file to ``target/<package>.copyright``."""
    for package in packages:
        if copyright_file(unpacked, package).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(copyright_file(unpacked, package), target / f"{package}.copyright")


def find_pictures(unpacked: Path, packages=PACKAGES) -> list[Picture]:
    """The largest copy of every source group under ``unpacked/<package>/``."""
    best: dict[str, Picture] = {}
    for package_dir in sorted(unpacked / package for package in packages):
        for path in sorted(package_dir.rglob("*")):
            if path.suffix.lower() not in RASTER_SUFFIXES or not path.is_file():
                continue
            relative = path.relative_to(package_dir)
            group = source_group(package_dir.name, relative)
            if group is None:
                continue
            with Image.open(path) as image:
                width, height = image.size
            candidate = Picture(
                group=group,
                package=package_dir.name,
                source=str(relative),
                width=width,
                height=height,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            )
            current = best.get(group)
            if current is None or width * height > current.width * current.height:
                best[group] = candidate
    return sorted(best.values(), key=lambda p: p.group)


def assign_split(pictures, held_out: dict[str, int]) -> None:
    """Per kind, hold out ``held_out[kind]`` pictures: whole groups, smallest name hash first.

    A hash of the name is stable across runs and blind to content, so the
    split is neither cherry-picked nor dependent on file order. Every picture
    of a group lands on the same side (the last group held out may overshoot
    the count). Works on anything with ``group``, ``kind`` and ``split``
    attributes: the photo corpus, whose groups hold many pictures, uses it too.
    """
    order = sorted(pictures, key=lambda p: (hashlib.sha1(p.group.encode()).hexdigest(), p.group))
    taken: dict[str, int] = {}
    held_groups: set[str] = set()
    for picture in order:
        if picture.group not in held_groups and taken.get(picture.kind, 0) < held_out.get(
            picture.kind, 0
        ):
            held_groups.add(picture.group)
        if picture.group in held_groups:
            taken[picture.kind] = taken.get(picture.kind, 0) + 1
        picture.split = "heldout" if picture.group in held_groups else "train"


def resized(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` shrunk (never enlarged) so its longer side is at most ``max_side``."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def prepare_wallpapers(
    out_dir: str | Path,
    work_dir: str | Path | None = None,
    held_out: dict[str, int] | None = None,
    train_side: int = 1536,
    heldout_side: int = 768,
) -> list[Picture]:
    """Download, deduplicate, split and resize the wallpapers into ``out_dir/{train,heldout}``.

    Photographs are scarce (25 groups), so training also uses the
    illustrations; held-out scores are reported per kind. Held-out pictures
    are stored smaller (``heldout_side``) so evaluating a
    whole picture stays fast on a CPU; training pictures keep more resolution
    so multi-scale crops can sample fine detail.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(work_dir) if work_dir else Path(scratch)
        versions = download_packages(work)
        pictures = find_pictures(work / "unpacked")
        missing = PHOTOGRAPHS - {p.group for p in pictures}
        if missing:
            raise HVAEError(f"package contents changed; photographs not found: {sorted(missing)}")
        assign_split(pictures, held_out or HELD_OUT)
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for picture in tqdm(pictures, desc="resizing pictures", dynamic_ncols=True):
            image = load_image(work / "unpacked" / picture.package / picture.source)
            side = heldout_side if picture.split == "heldout" else train_side
            picture.file = f"{picture.split}/{picture.kind}/{picture.group.replace('/', '__')}.png"
            target = staging / picture.file
            target.parent.mkdir(parents=True, exist_ok=True)
            resized(image, side).save(target)
        manifest = {
            "packages": versions,
            "train_side": train_side,
            "heldout_side": heldout_side,
            "pictures": [asdict(p) | {"kind": p.kind} for p in pictures],
        }
        (staging / "provenance.json").write_text(json.dumps(manifest, indent=1) + "\n")
        copy_copyrights(work / "unpacked", versions, staging / "licenses")
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    return pictures
