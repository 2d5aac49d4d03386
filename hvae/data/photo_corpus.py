"""A natural-photo corpus: photographs and photographic textures from several Debian packages.

The wallpapers (``hvae.data.wallpapers``) hold only 25 photographs. Debian's game and
education data packages ship many more (GCompris' animals and monuments, Stellarium's
landscapes and deep-sky photographs, the photographed ground, rock and wall textures of
racing and flight games), beside drawings, icons, renders, texture atlases and normal
maps, so the selection is made in two reproducible steps:

1. per package, path rules (``SOURCES``): folders that hold photographs, minus
   names that mark maps, masks, screenshots or paintings;
2. automatic filters on the pixels (``rejection``): a minimum size, an alpha
   rule, and statistics that photographs pass and flat graphics do not.

Near-duplicates (one picture at several sizes, or shipped twice) are dropped
by perceptual hash, and pictures that are merely similar share a split group,
so the train / held-out split never separates two copies of one scene.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import struct
import warnings
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from hvae.data import wallpapers
from hvae.errors import HVAEError

# Kept apart as an external evaluation set: never train on their pictures.
EVALUATION_PACKAGES = frozenset({"python3-skimage", "python3-sklearn", "opencv-doc"})
MIN_SIDE = 256
STATS_SIDE = 1536
# TORCS ships SGI (.rgb) textures; DDS files are skipped (block-compressed, lossy).
RASTER_SUFFIXES = (*wallpapers.RASTER_SUFFIXES, ".rgb", ".tga")
# Minimum statistics of a photograph (see ``rejection``); set from contact sheets
# of the candidates on either side of each threshold.
MAX_FLAT_FRACTION = 0.25
# Lossy-compressed photographs (WebP, JPEG) flatten smooth skies and walls, so sources
# whose path rules already pick photographs only use the flatness rule to catch graphics.
LOSSY_MAX_FLAT_FRACTION = 0.85
MIN_ENTROPY_BITS = 4.0
MIN_COLOURFULNESS = 3.0
MIN_COLOURS = 64
# Correlations of 32x32 grey thumbnails: copies (resized, recompressed or recoloured)
# are dropped; look-alikes (crops, edits, one texture family) share a split group.
DUPLICATE_CORRELATION = 0.97
LOOKALIKE_CORRELATION = 0.9
# The wallpaper packages that hold photographs (the rest are illustrations).
WALLPAPER_PACKAGES = tuple(sorted({group.split("/")[0] for group in wallpapers.PHOTOGRAPHS}))
# Suffix that Qt resource bundles are unpacked to (GCompris ships its pictures in them).
QT_RESOURCE_DIR = ".rcc.d"


@dataclass(frozen=True)
class Source:
    """Which files of a package are candidates, and how they are grouped for the split.

    ``exclude`` is a regular expression searched in the package-relative path; the first match
    of ``group`` in it names the split group (a scene, a folder, or a family of textures).
    """

    package: str
    kind: str
    include: str  # shell patterns, separated by spaces
    group: str
    exclude: str = r"^$"
    require: str = ""  # a regular expression the file name must contain
    max_flat_fraction: float = MAX_FLAT_FRACTION


_GC = "usr/share/gcompris-qt/rcc/{}" + QT_RESOURCE_DIR + "/*"
_STK = "usr/share/games/supertuxkart/data/"
# Names of maps that are not pictures (normal, height, specular maps, masks) or of renders.
_NOT_PICTURES = (
    r"([_-](n|nm|nrm|norm|normal|normals|bump|spec|specular|gloss|height|disp|ao|s|g)\d*\b)"
    r"|mask|overlay|relief|screenshot|preview|icon|logo|reflect|noise|lightmap|illum|fog|_lgt"
    r"|dontuse|shadow"
)
# Game textures named for a material are usually photographed; signs, skins, atlases are not.
_MATERIALS = (
    r"rock|stone|brick|wall|wood|bark|plank|grass|sand|dirt|gravel|ground|soil|mud|concrete"
    r"|asphalt|road|pave|cobble|tile|marble|rust|moss|leaf|leaves|snow|ice|water|cloud|lava"
    r"|cliff|canyon|roof|terrain|mountain|forest|beach|desert|pebble|floor|metal"
)
SOURCES = (
    Source(
        "gcompris-qt-data",
        "photo",
        " ".join(
            _GC.format(bundle)
            for bundle in "erase explore_farm_animals explore_monuments explore_world_animals "
            "explore_world_music clickgame details categorization".split()
        ),
        group=r"[^/]+\.rcc\.d/.*",
        # details' backgrounds include paintings; categorization's blocks are renders
        exclude=r"gogh|tanguy|alphabets|numbers",
        max_flat_fraction=LOSSY_MAX_FLAT_FRACTION,
    ),
    Source(
        "lomiri-wallpapers-16.04",
        "photo",
        "usr/share/backgrounds/*",
        group=r"[^/]+$",
        exclude=r"analogpattern|umang",  # the illustrations
        max_flat_fraction=LOSSY_MAX_FLAT_FRACTION,
    ),
    Source(
        "lomiri-wallpapers-20.04",
        "photo",
        "usr/share/backgrounds/*",
        group=r"[^/]+$",
        exclude=r"fossa|infinite-sea|painting-colors",
        max_flat_fraction=LOSSY_MAX_FLAT_FRACTION,
    ),
    Source(
        "stellarium-data",
        "photo",
        "usr/share/stellarium/landscapes/* usr/share/stellarium/scenery3d/*",
        group=r"(landscapes|scenery3d)/[^/]+",
        exclude=_NOT_PICTURES + r"|Tafel_|Ungeziffer|Square100m",
    ),
    Source(
        "stellarium-data",
        "astro",
        "usr/share/stellarium/nebulae/default/*",
        group=r"nebulae/default/[^/.]+",
    ),
    Source(
        "tuxpaint-stamps-default",
        "photo",
        "usr/share/tuxpaint/stamps/*",
        group=r"stamps/.*/[^/.]+",
        exclude=r"cartoon|symbols",
    ),
    Source(
        "extremetuxracer-data",
        "texture",
        "usr/share/games/etr/terrains/*",
        group=r"terrains/[a-z]+",
    ),
    Source(
        "supertuxkart-data",
        "texture",
        f"{_STK}textures/* {_STK}tracks/*",
        group=r"tracks/[^/]+|textures/[a-zA-Z]+",
        exclude=_NOT_PICTURES + r"|sky|flag|sign|poster|window|door|house|crate|manhole",
        require=_MATERIALS,
    ),
    Source(
        "torcs-data",
        "texture",
        "usr/share/games/torcs/tracks/* usr/share/games/torcs/data/textures/*",
        group=r"tracks/[^/]+/[^/]+|textures/[a-zA-Z]+",
        # wall advertisements and painted tyre walls
        exclude=_NOT_PICTURES + r"|sign|advert|pylon|tire|firewall|improveyou|megafuel|uranium"
        r"|software|flatspot|water-wall|wall-water",
        require=_MATERIALS + r"|background",
    ),
    Source(
        "redeclipse-data",
        "texture",
        "usr/share/games/redeclipse/data/*",
        group=r"data/[^/]+/[^/]+",
        # philipk's, unnamed's and wicked's textures are modelled sci-fi panels and tilings
        exclude=_NOT_PICTURES + r"|/philipk/|/unnamed/|/wicked/|skybox|sky_|panel|plate|tech",
        require=r"brick|concrete|rust|rock|stone|grass|dirt|sand|mud|bark|moss|gravel|ground"
        r"|soil|snow|ice|lava|water|cliff|leaf|leaves|wood",
    ),
    Source(
        "scorched3d-data",
        "texture",
        "usr/share/games/scorched3d/data/globalmods/*/data/textures/landscape/*",
        group=r"landscape/[^/]+",
        exclude=_NOT_PICTURES + r"|cubemap",
    ),
    Source(
        "flightgear-data-base",
        "texture",
        "usr/share/games/flightgear/Textures/Terrain/* "
        "usr/share/games/flightgear/Textures/Terrain.winter/*",
        group=r"Textures/[^/]+/[a-zA-Z]+",
        exclude=_NOT_PICTURES + r"|cloud|airport|transport|runway|unknown",
    ),
)


@dataclass
class Candidate:
    """One kept picture: where it came from, the part of it kept, and its split."""

    package: str
    path: str
    kind: str
    group: str
    width: int
    height: int
    box: tuple[int, int, int, int]
    sha256: str
    thumbnail: np.ndarray | None = field(default=None, repr=False, compare=False)
    licence: str = ""
    split: str = ""
    file: str = ""
    duplicates: list[str] = field(default_factory=list)


def qt_resources(blob: bytes):
    """Yield ``(path, data)`` for every file in a compiled Qt resource bundle (``.rcc``).

    The format (header, tree of nodes, names, data) is Qt's ``rcc`` binary
    layout; zlib-compressed entries carry a 4-byte size before the stream.
    """
    if blob[:4] != b"qres":
        raise HVAEError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22

    def name(offset: int) -> str:
        length = struct.unpack(">H", blob[names + offset : names + offset + 2])[0]
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        node = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[node : node + 6])
        path = f"{prefix}/{name(name_offset)}" if index else ""
        if flags & 2:  # a directory: its children are consecutive nodes
            count, first = struct.unpack(">II", blob[node + 6 : node + 14])
            stack += [(child, path) for child in range(first, first + count)]
            continue
        offset = data + struct.unpack(">I", blob[node + 10 : node + 14])[0]
        size = struct.unpack(">I", blob[offset : offset + 4])[0]
        payload = blob[offset + 4 : offset + 4 + size]
        if flags & 4:
            raise HVAEError(f"{path}: zstd-compressed resources are not supported")
        yield path.lstrip("/"), zlib.decompress(payload[4:]) if flags & 1 else payload


def unpack_qt_resources(package_dir: Path) -> None:
    """Unpack the raster images of every ``.rcc`` bundle into ``<bundle>.rcc.d/`` beside it."""
    for bundle in sorted(package_dir.rglob("*.rcc")):
        target = bundle.with_suffix(QT_RESOURCE_DIR)
        if target.exists():
            continue
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for path, payload in qt_resources(bundle.read_bytes()):
            if path.lower().endswith(RASTER_SUFFIXES):
                (staging / path).parent.mkdir(parents=True, exist_ok=True)
                (staging / path).write_bytes(payload)
        staging.mkdir(exist_ok=True)
        staging.rename(target)


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """``(start, stop)`` of the longest run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, stops = edges[::2], edges[1::2]
    if not len(starts):
        return 0, 0
    longest = int(np.argmax(stops - starts))
    return int(starts[longest]), int(stops[longest])


def opaque_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The largest band of fully opaque rows, then of opaque columns within it, as a PIL box.

    Panoramas with a transparent sky keep their ground; cut-out stamps (an object on a
    transparent background) have no opaque rows across, so their box is empty.
    """
    if "A" not in image.getbands() and "transparency" not in image.info:
        return (0, 0, *image.size)
    with warnings.catch_warnings():  # Pillow's note on palette transparency, harmless here
        warnings.simplefilter("ignore")
        opaque = np.asarray(image.convert("RGBA"))[..., 3] >= 250
    top, bottom = _longest_run(opaque.mean(axis=1) >= 0.99)
    if bottom == top:
        return (0, 0, 0, 0)
    left, right = _longest_run(opaque[top:bottom].mean(axis=0) >= 0.99)
    return (left, top, right, bottom)


@dataclass
class PixelStats:
    flat_fraction: float  # pixels whose right and lower neighbours are identical
    entropy_bits: float  # of the grey-level histogram
    colourfulness: float  # Hasler and Suesstrunk's metric
    colours: int  # distinct colours at 5 bits per channel
    normal_map: bool  # mean colour near (128, 128, 255): a tangent-space normal map


def pixel_stats(rgb: np.ndarray) -> PixelStats:
    """Statistics of an (H, W, 3) uint8 array that tell photographs from flat graphics."""
    pixels = rgb.astype(np.int16)
    right = np.abs(np.diff(pixels, axis=1)).max(axis=2)[:-1]
    down = np.abs(np.diff(pixels, axis=0)).max(axis=2)[:, :-1]
    grey = pixels.mean(axis=2).astype(np.uint8)
    histogram = np.bincount(grey.ravel(), minlength=256) / grey.size
    histogram = histogram[histogram > 0]
    red, green, blue = (pixels[..., c].astype(np.float32) for c in range(3))
    red_green, yellow_blue = red - green, (red + green) / 2 - blue
    colourfulness = np.hypot(red_green.std(), yellow_blue.std()) + 0.3 * np.hypot(
        red_green.mean(), yellow_blue.mean()
    )
    quantized = (rgb >> 3).astype(np.int32)
    codes = quantized[..., 0] << 10 | quantized[..., 1] << 5 | quantized[..., 2]
    means = red.mean(), green.mean(), blue.mean()
    normal_map = abs(means[0] - 128) < 24 and abs(means[1] - 128) < 24 and means[2] > 200
    return PixelStats(
        float(((right == 0) & (down == 0)).mean()),
        float(-(histogram * np.log2(histogram)).sum()),
        float(colourfulness),
        int(np.count_nonzero(np.bincount(codes.ravel(), minlength=1 << 15))),
        bool(normal_map),
    )


def rejection(stats: PixelStats, max_flat_fraction: float = MAX_FLAT_FRACTION) -> str | None:
    """Why these statistics are not a photograph's, or None if they could be."""
    failed = (
        (stats.normal_map, "normal map"),
        (stats.flat_fraction > max_flat_fraction, "flat areas"),
        (stats.entropy_bits < MIN_ENTROPY_BITS, "low entropy"),
        (stats.colourfulness < MIN_COLOURFULNESS, "grey"),
        (stats.colours < MIN_COLOURS, "few colours"),
    )
    return next((reason for fails, reason in failed if fails), None)


def thumbnail(image: Image.Image) -> np.ndarray:
    """A 32x32 grey thumbnail, zero-mean and unit-norm: dot products of two are correlations.

    Resizing, recompression and recolouring barely change it; other pictures do.
    """
    small = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), np.float32)
    centred = small.ravel() - small.mean()
    return centred / max(float(np.linalg.norm(centred)), 1e-6)


def correlations(candidates: list[Candidate]) -> np.ndarray:
    thumbnails = np.stack([c.thumbnail for c in candidates] or [np.zeros(1024, np.float32)])
    return thumbnails @ thumbnails.T


def source_files(unpacked: Path, source: Source):
    """``(relative path, group)`` of every raster file of ``source`` that its path rules keep."""
    package_dir = unpacked / source.package
    excluded = re.compile(source.exclude, re.IGNORECASE)
    required = re.compile(source.require, re.IGNORECASE)
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir).as_posix()
        if path.suffix.lower() not in RASTER_SUFFIXES or not path.is_file():
            continue
        if not any(fnmatch.fnmatch(relative, pattern) for pattern in source.include.split()):
            continue
        if excluded.search(relative) or not required.search(path.name):
            continue
        match = re.search(source.group, relative)
        yield relative, f"{source.package}/{match.group(0) if match else relative}"


def examine(
    path: Path, max_flat_fraction: float = MAX_FLAT_FRACTION
) -> tuple[Image.Image | None, tuple[int, int, int, int], str | None]:
    """Load a candidate: ``(RGB picture cropped to its opaque box, box, rejection reason)``."""
    try:
        with Image.open(path) as image:
            if min(image.size) < MIN_SIDE:
                return None, (0, 0, *image.size), "small"
            box = opaque_box(image)
            picture = image.convert("RGB").crop(box)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None, (0, 0, 0, 0), "unreadable"
    if min(picture.size) < MIN_SIDE:
        return None, box, "transparent"
    # Statistics of a central window at full resolution: cheap on 24-megapixel photos,
    # and downscaling first would smooth away the noise that marks a photograph.
    width, height = picture.size
    left, top = max(0, (width - STATS_SIDE) // 2), max(0, (height - STATS_SIDE) // 2)
    window = picture.crop((left, top, left + min(width, STATS_SIDE), top + min(height, STATS_SIDE)))
    return picture, box, rejection(pixel_stats(np.asarray(window)), max_flat_fraction)


def drop_duplicates(candidates: list[Candidate]) -> list[Candidate]:
    """Keep the largest of every set of copies (``DUPLICATE_CORRELATION``); list the rest."""
    order = sorted(candidates, key=lambda c: (-c.width * c.height, c.package, c.path))
    similar = correlations(order)
    kept: list[int] = []
    for i, candidate in enumerate(order):
        best = max(kept, key=lambda k: similar[i, k], default=None)
        if best is None or similar[i, best] < DUPLICATE_CORRELATION:
            kept.append(i)
        else:
            order[best].duplicates.append(f"{candidate.package}/{candidate.path}")
    return sorted((order[i] for i in kept), key=lambda c: (c.package, c.path))


def merge_lookalike_groups(candidates: list[Candidate]) -> None:
    """Give look-alikes (``LOOKALIKE_CORRELATION``) one split group, through union-find."""
    parent = {c.group: c.group for c in candidates}

    def root(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    similar = correlations(candidates)
    for i, j in np.argwhere(np.triu(similar, k=1) >= LOOKALIKE_CORRELATION):
        a, b = root(candidates[i].group), root(candidates[j].group)
        if a != b:
            parent[max(a, b)] = min(a, b)
    for candidate in candidates:
        candidate.group = root(candidate.group)


def assign_split(candidates: list[Candidate], heldout_fraction: float) -> None:
    """Hold out whole groups until ``heldout_fraction`` of each kind's pictures are held out.

    The wallpaper photographs that ``prepare-photos`` holds out stay held out
    here, so one model can be scored on both sets without having seen either.
    """
    wallpaper_split = {
        c.group: c.split for c in candidates if c.package in wallpapers.PACKAGES and c.split
    }
    pictures_per_kind = Counter(c.kind for c in candidates)
    quota = {kind: round(heldout_fraction * n) for kind, n in pictures_per_kind.items()}
    wallpapers.assign_split(candidates, quota)
    for c in candidates:  # a look-alike merge may have joined a wallpaper's group
        c.split = wallpaper_split.get(c.group, c.split)


def copyright_paragraphs(text: str) -> list[tuple[list[str], str]]:
    """``(file patterns, licence name)`` of each ``Files:`` paragraph of a DEP-5 copyright file."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t]+\S.*)*)", block, re.MULTILINE)
        licence = re.search(r"^License:[ \t]*(.+)", block, re.MULTILINE)
        if files and licence:
            paragraphs.append((files.group(1).split(), licence.group(1).strip()))
    return paragraphs


def licence_of(relative: str, paragraphs: list[tuple[list[str], str]]) -> str:
    """The licence of the last paragraph whose pattern matches a tail of ``relative``.

    Copyright files name upstream source paths (``data/textures/x.png``), not
    installed ones (``usr/share/games/supertuxkart/data/textures/x.png``), so
    a pattern matches if it matches the path with some leading folders removed,
    or if it names this very file (its last part has no wildcard and equals
    the file's name: ``16.04/x.jpg`` is installed as ``backgrounds/x.jpg``).
    GCompris ships its ``.jpg`` and ``.png`` files as ``.webp``: those patterns match those.
    """
    parts = relative.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    converted = r"\.(png|jpe?g)$" if relative.lower().endswith(".webp") else r"(?!)"  # or none

    def matches(pattern: str) -> bool:
        pattern = re.sub(converted, ".webp", pattern, flags=re.IGNORECASE)
        last = pattern.rsplit("/", 1)[-1]
        if not re.search(r"[*?\[]", last) and last == parts[-1]:
            return True
        return any(fnmatch.fnmatchcase(tail, pattern) for tail in tails)

    matching = [name for patterns, name in paragraphs if any(map(matches, patterns))]
    return matching[-1] if matching else "unknown"


_RULES = "MIN_SIDE MAX_FLAT_FRACTION LOSSY_MAX_FLAT_FRACTION MIN_ENTROPY_BITS MIN_COLOURFULNESS \
MIN_COLOURS DUPLICATE_CORRELATION LOOKALIKE_CORRELATION".split()


def kept_picture(
    unpacked: Path, where: tuple[str, str, str, str], picture: Image.Image, box
) -> Candidate:
    """A ``Candidate`` for ``picture``; ``where`` is its (package, path, kind, group)."""
    sha256 = hashlib.sha256((unpacked / where[0] / where[1]).read_bytes()).hexdigest()
    width, height = picture.width, picture.height
    return Candidate(*where, width, height, box, sha256, thumbnail=thumbnail(picture))


def wallpaper_photographs(unpacked: Path) -> list[Candidate]:
    """The wallpaper photographs, with the split ``prepare-photos`` gives them."""
    pictures = wallpapers.find_pictures(unpacked, WALLPAPER_PACKAGES)
    wallpapers.assign_split(pictures, wallpapers.HELD_OUT)
    photographs = []
    for p in (p for p in pictures if p.kind == "photo"):
        with Image.open(unpacked / p.package / p.source) as image:
            where = (p.package, p.source, "photo", p.group)
            photographs.append(kept_picture(unpacked, where, image, (0, 0, *image.size)))
        photographs[-1].split = p.split
    return photographs


def select(unpacked: Path, sources=SOURCES) -> tuple[list[Candidate], dict[str, Counter]]:
    """Every candidate that passes the pixel rules, and per package the count of each outcome."""
    candidates = wallpaper_photographs(unpacked)
    outcomes = {package: Counter(kept=0) for package in WALLPAPER_PACKAGES}
    for candidate in candidates:
        outcomes[candidate.package]["kept"] += 1
    files = [(s, rel, group) for s in sources for rel, group in source_files(unpacked, s)]
    for source, relative, group in tqdm(files, desc="examining pictures", dynamic_ncols=True):
        path = unpacked / source.package / relative
        picture, box, reason = examine(path, source.max_flat_fraction)
        outcomes.setdefault(source.package, Counter())[reason or "kept"] += 1
        if reason is None:
            where = (source.package, relative, source.kind, group)
            candidates.append(kept_picture(unpacked, where, picture, box))
    return candidates, outcomes


def prepare_photo_corpus(
    out_dir: str | Path,
    work_dir: str | Path,
    heldout_fraction: float = 0.1,
    train_side: int = 1536,
    heldout_side: int = 768,
    sources=SOURCES,
) -> dict:
    """Download, select, deduplicate, split and resize the corpus into ``out_dir``.

    ``out_dir`` gets ``{train,heldout}/<kind>/*.png``, ``manifest.json`` (every picture's
    package, path, licence, size, crop box, group and split; the rules; what each package
    lost to which rule) and the packages' copyright files in ``licenses/``. ``work_dir``
    keeps the downloaded packages, so a second run skips the download. Returns the manifest.
    """
    if not 0 <= heldout_fraction < 1:
        raise HVAEError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    packages = sorted({s.package for s in sources} | set(WALLPAPER_PACKAGES))
    if EVALUATION_PACKAGES & set(packages):
        raise HVAEError(f"{sorted(EVALUATION_PACKAGES & set(packages))} are kept for evaluation")
    out_dir, work = Path(out_dir), Path(work_dir)
    versions = wallpapers.download_packages(work, packages)
    unpacked = work / "unpacked"
    for package in {s.package for s in sources if QT_RESOURCE_DIR in s.include}:
        unpack_qt_resources(unpacked / package)
    candidates, outcomes = select(unpacked, sources)
    candidates = drop_duplicates(candidates)
    merge_lookalike_groups(candidates)
    assign_split(candidates, heldout_fraction)
    paragraphs = {
        package: copyright_paragraphs(wallpapers.copyright_file(unpacked, package).read_text())
        for package in packages
    }
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for c in tqdm(candidates, desc="writing pictures", dynamic_ncols=True):
        c.licence = licence_of(c.path, paragraphs[c.package])
        # KDE names every copy by its resolution: the group names the wallpaper
        name = c.group.rsplit("/")[-1] if c.package in WALLPAPER_PACKAGES else Path(c.path).stem
        name = re.sub(r"[^\w.-]+", "_", name)
        c.file = f"{c.split}/{c.kind}/{c.package}__{name}__{c.sha256[:8]}.png"
        with Image.open(unpacked / c.package / c.path) as image:
            picture = image.convert("RGB").crop(c.box)
        side = heldout_side if c.split == "heldout" else train_side
        (staging / c.file).parent.mkdir(parents=True, exist_ok=True)
        wallpapers.resized(picture, side).save(staging / c.file, compress_level=3)
    # each package's version, and the licences of the pictures kept from it, with their counts
    licences = {p: Counter(c.licence for c in candidates if c.package == p) for p in packages}
    manifest = {
        "packages": {p: {"version": versions[p], "licences": licences[p]} for p in packages},
        "rules": {name.lower(): globals()[name] for name in _RULES}
        | {"heldout_fraction": heldout_fraction, "sides": [train_side, heldout_side]},
        "outcomes": outcomes,
        "pictures": [record(c) for c in candidates],
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    wallpapers.copy_copyrights(unpacked, packages, staging / "licenses")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return manifest


def record(candidate: Candidate) -> dict:
    """What the manifest keeps of a picture (not its thumbnail)."""
    return {k: v for k, v in asdict(candidate).items() if k != "thumbnail"}


def read_manifest(path: str | Path) -> tuple[dict, list[Candidate]]:
    """The manifest written by ``prepare_photo_corpus`` and its pictures as ``Candidate``."""
    try:
        manifest = json.loads(Path(path).read_text())
        pictures = [Candidate(**(p | {"box": tuple(p["box"])})) for p in manifest["pictures"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HVAEError(f"{path}: not a photo-corpus manifest ({error})") from None
    return manifest, pictures
