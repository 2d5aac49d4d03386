"""Photo-corpus selection rules, on small synthetic pictures (no packages are downloaded)."""

import json
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from hvae.data import photo_corpus as pc
from hvae.errors import HVAEError


def photo_like(seed: int, size=(384, 320)) -> Image.Image:
    """Smooth colour structure plus sensor-like noise: no flat areas, many colours."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 7, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), float)
    noisy = smooth + rng.normal(0, 6, smooth.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def flat_graphic(size=(384, 320)) -> Image.Image:
    image = Image.new("RGB", size, (250, 250, 250))
    image.paste((200, 30, 30), (20, 20, 200, 150))
    image.paste((30, 60, 200), (150, 120, 360, 300))
    return image


def stats_of(image: Image.Image) -> pc.PixelStats:
    return pc.pixel_stats(np.asarray(image.convert("RGB")))


def test_filters_keep_a_photo_and_drop_graphics_maps_and_greys():
    assert pc.rejection(stats_of(photo_like(0))) is None
    assert pc.rejection(stats_of(flat_graphic())) == "flat areas"
    rng = np.random.default_rng(1)
    normal = np.dstack(
        [rng.normal(128, 8, (256, 256)) for _ in range(2)] + [np.full((256, 256), 240.0)]
    )
    assert (
        pc.rejection(stats_of(Image.fromarray(normal.clip(0, 255).astype(np.uint8))))
        == "normal map"
    )
    grey = photo_like(2).convert("L").convert("RGB")
    assert pc.rejection(stats_of(grey)) == "grey"
    # lossy photo sources tolerate more flatness than game textures, but not a graphic's
    assert pc.rejection(stats_of(flat_graphic()), pc.LOSSY_MAX_FLAT_FRACTION) == "flat areas"


def test_alpha_rule_keeps_the_opaque_ground_and_drops_cut_outs(tmp_path):
    panorama = photo_like(3, (512, 512)).convert("RGBA")
    alpha = np.zeros((512, 512), np.uint8)
    alpha[200:] = 255  # opaque ground below a transparent sky
    alpha[190:200, ::7] = 255  # tree tops poking into the sky are not part of the box
    panorama.putalpha(Image.fromarray(alpha))
    assert pc.opaque_box(panorama) == (0, 200, 512, 512)
    panorama.save(tmp_path / "panorama.png")
    picture, box, reason = pc.examine(tmp_path / "panorama.png")
    assert reason is None and picture.size == (512, 312) and box == (0, 200, 512, 512)

    stamp = photo_like(4, (512, 512)).convert("RGBA")
    yy, xx = np.mgrid[:512, :512]
    disc = ((yy - 256) ** 2 + (xx - 256) ** 2 < 240**2).astype(np.uint8) * 255
    stamp.putalpha(Image.fromarray(disc))
    stamp.save(tmp_path / "stamp.png")
    assert pc.examine(tmp_path / "stamp.png")[2] == "transparent"
    assert pc.opaque_box(photo_like(5)) == (0, 0, 384, 320)  # no alpha: the whole picture


def test_examine_drops_small_and_unreadable_files(tmp_path):
    photo_like(6, (300, 200)).save(tmp_path / "small.png")
    assert pc.examine(tmp_path / "small.png")[2] == "small"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert pc.examine(tmp_path / "broken.png")[2] == "unreadable"


def candidate(name: str, image: Image.Image, group: str | None = None, kind="photo"):
    return pc.Candidate(
        package="pkg",
        path=f"{name}.png",
        kind=kind,
        group=group or f"pkg/{name}",
        width=image.width,
        height=image.height,
        box=(0, 0, *image.size),
        sha256=name,
        thumbnail=pc.thumbnail(image),
    )


def test_dedupe_drops_a_resized_copy_and_keeps_the_largest(tmp_path):
    original = photo_like(7, (640, 480))
    original.resize((320, 240), Image.Resampling.LANCZOS).save(tmp_path / "copy.jpg", quality=80)
    copy = Image.open(tmp_path / "copy.jpg")
    other = photo_like(8, (640, 480))
    kept = pc.drop_duplicates(
        [candidate("copy", copy), candidate("original", original), candidate("other", other)]
    )
    assert [k.path for k in kept] == ["original.png", "other.png"]
    assert kept[0].duplicates == ["pkg/copy.png"]


def test_recoloured_copies_are_duplicates_and_edits_are_lookalikes():
    base, other = photo_like(9), photo_like(10)
    recoloured = ImageOps.colorize(base.convert("L"), "#402000", "#ffe0a0")  # sepia
    edited = Image.blend(base, other, 0.3)  # a third of another picture painted over it
    pictures = [candidate("a", base), candidate("b", recoloured), candidate("c", edited)]
    assert [p.path for p in pc.drop_duplicates(pictures)] == ["a.png", "c.png"]
    pictures.append(candidate("d", other))
    pc.merge_lookalike_groups(pictures)
    assert [p.group for p in pictures] == ["pkg/a", "pkg/a", "pkg/a", "pkg/d"]


def split_of(order_seed: int) -> dict[str, str]:
    pictures = [
        pc.Candidate("pkg", f"{g}/{i}.png", kind, f"pkg/{g}", 256, 256, (0, 0, 256, 256), "0")
        for g, kind, count in [
            (f"g{n}", "texture" if n % 3 else "photo", 1 + n % 4) for n in range(60)
        ]
        for i in range(count)
    ]
    wallpaper = pc.Candidate(
        "mate-backgrounds", "Aqua.jpg", "photo", "mate-backgrounds/Aqua", 9, 9, (0, 0, 9, 9), "0"
    )
    wallpaper.split = "heldout"  # as prepare-photos holds it out
    pictures.append(wallpaper)
    random.Random(order_seed).shuffle(pictures)
    pc.assign_split(pictures, heldout_fraction=0.2)
    return {p.path: p.split for p in pictures} | {p.group: p.split for p in pictures}


def test_split_is_stable_keeps_groups_together_and_keeps_the_wallpapers_split():
    first, second = split_of(0), split_of(1)
    assert first == second
    groups = {key for key in first if "/" in key and not key.endswith(".png")}
    for key, side in first.items():
        if key.endswith(".png") and not key.startswith("Aqua"):
            assert side == first[f"pkg/{key.split('/')[0]}"]
    held = {g for g in groups if first[g] == "heldout" and g.startswith("pkg/")}
    sizes = {f"pkg/g{n}": 1 + n % 4 for n in range(60)}
    for kind, groups_of_kind in [("photo", {f"pkg/g{n}" for n in range(0, 60, 3)})]:
        pictures = sum(sizes[g] for g in groups_of_kind) + 1  # and the wallpaper
        held_pictures = sum(sizes[g] for g in held & groups_of_kind)
        # whole groups until a fifth of the pictures: overshoot by less than one group
        assert round(0.2 * pictures) <= held_pictures < round(0.2 * pictures) + 4, kind
    assert first["Aqua.jpg"] == "heldout"


def test_manifest_round_trips(tmp_path):
    pictures = [candidate("a", photo_like(11)), candidate("b", photo_like(12))]
    pictures[0].split, pictures[0].licence, pictures[0].duplicates = "train", "GPL-2+", ["x/y.png"]
    manifest = {"packages": {"pkg": {"version": "1"}}, "pictures": [pc.record(p) for p in pictures]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    read, again = pc.read_manifest(tmp_path / "manifest.json")
    assert again == pictures and read["packages"] == manifest["packages"]
    assert "thumbnail" not in read["pictures"][0]
    (tmp_path / "bad.json").write_text('{"pictures": [{"nope": 1}]}')
    with pytest.raises(HVAEError, match="not a photo-corpus manifest"):
        pc.read_manifest(tmp_path / "bad.json")


def qt_bundle(files: dict[str, bytes]) -> bytes:
    """A version-1 ``rcc`` bundle of one folder ``res`` holding ``files`` (the first compressed)."""
    names, data, entries = b"", b"", []

    def add_name(name: str) -> int:
        nonlocal names
        offset = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        return offset

    for i, (name, payload) in enumerate(files.items()):
        stored = struct.pack(">I", len(payload)) + zlib.compress(payload) if i == 0 else payload
        entries.append((add_name(name), 1 if i == 0 else 0, len(data)))
        data += struct.pack(">I", len(stored)) + stored
    tree = struct.pack(">IHII", 0, 2, 1, 1)  # root: one child, node 1
    tree += struct.pack(">IHII", add_name("res"), 2, len(files), 2)
    for name_offset, flags, data_offset in entries:
        tree += struct.pack(">IHHHI", name_offset, flags, 0, 0, data_offset)
    header = 20
    return (
        b"qres"
        + struct.pack(">IIII", 1, header, header + len(tree), header + len(tree) + len(data))
        + tree
        + data
        + names
    )


def test_qt_resources_are_unpacked(tmp_path):
    blob = qt_bundle({"a.webp": b"first" * 50, "b.png": b"second"})
    assert dict(pc.qt_resources(blob)) == {"res/a.webp": b"first" * 50, "res/b.png": b"second"}
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "x.rcc").write_bytes(blob)
    pc.unpack_qt_resources(tmp_path / "pkg")
    assert (tmp_path / "pkg" / "x.rcc.d" / "res" / "b.png").read_bytes() == b"second"
    with pytest.raises(HVAEError, match="Qt resource"):
        list(pc.qt_resources(b"nope" + blob[4:]))


def test_path_rules_and_licences(tmp_path):
    for name in ["tracks/hill/rock.png", "tracks/hill/rock_n.png", "tracks/hill/logo.png",
                 "tracks/lake/grass.jpg", "tracks/lake/grass.txt"]:  # fmt: skip
        (tmp_path / "pkg" / "usr" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / "usr" / name).write_bytes(b"")
    source = pc.Source(
        "pkg",
        "texture",
        "usr/tracks/*",
        group=r"tracks/[^/]+",
        exclude=r"_n\b",
        require="rock|grass",
    )
    assert list(pc.source_files(tmp_path, source)) == [
        ("usr/tracks/hill/rock.png", "pkg/tracks/hill"),
        ("usr/tracks/lake/grass.jpg", "pkg/tracks/lake"),
    ]
    paragraphs = pc.copyright_paragraphs(
        "Files: *\nLicense: GPL-2+\n\nFiles: data/tracks/lake/*\n  other/*\nLicense: CC-BY-SA-3.0\n"
        "\nFiles: 16.04/rock.png\nLicense: CC0-1.0\n"
    )
    assert pc.licence_of("usr/share/pkg/data/tracks/lake/grass.jpg", paragraphs) == "CC-BY-SA-3.0"
    assert pc.licence_of("usr/share/pkg/data/tracks/hill/rock.png", paragraphs) == "CC0-1.0"
    assert pc.licence_of("usr/share/pkg/data/tracks/hill/sand.png", paragraphs) == "GPL-2+"
    # a .png converted to .webp at build time keeps its licence
    assert pc.licence_of("x.rcc.d/data/tracks/hill/rock.webp", paragraphs) == "CC0-1.0"


def test_evaluation_packages_and_bad_fractions_are_refused_before_any_download(tmp_path):
    evaluation = pc.Source("python3-skimage", "photo", "usr/*", group=".*")
    with pytest.raises(HVAEError, match="kept for evaluation"):
        pc.prepare_photo_corpus(tmp_path / "out", tmp_path / "work", sources=(evaluation,))
    with pytest.raises(HVAEError, match="heldout_fraction"):
        pc.prepare_photo_corpus(tmp_path / "out", tmp_path / "work", heldout_fraction=1.5)
    assert not (tmp_path / "work").exists()
