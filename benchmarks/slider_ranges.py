"""How far can each slider go before its edits show artifacts? Measured per direction.

Each bundled editing pipeline's sliders are measured on pictures it edits: photographs
for a pipeline that edits any size (``--data`` folders; by default ``tests/data/photos``
and ``data/photos/heldout/photo`` where it exists), shrunk to ``--side`` pixels, and
held-out rendered scenes for one that edits at a fixed size. Every edit is decoded and
compared with the picture's unedited decode. On photos, each measure aims at a failure
seen at the old UI's ±3:

- ``clipped``: the share of pixels that were mid-tones (luma 32 to 223) and that the
  edit leaves with two or three channels at 0 or 255: black, white, or a colour whose
  texture is down to one channel (brightness ±3 turns photos black or white);
- ``border``: how much more or less the outermost pixels change than those just inside
  them (the bright band brightness -3 leaves along the top rows). The one affine colour
  map (3x4) that best explains the change away from the borders is taken out first, so
  that content differing between the strips does not count; then, per side and channel,
  the mean of what is left over the outer ``stride`` pixels (one feature cell) is
  compared with its mean over the next two cells; the largest gap, in levels of 255;
- ``grey_tint`` (sliders whose job is not to colour greys: brightness, saturation,
  contrast, sharpness): the colour that near-grey pixels (CIELAB chroma under 10) gain
  off their own hue, mean CIELAB units (saturation +3 turns a grey sky lavender).

On scenes (``benchmarks/editing.py``'s held-out ones), whose sliders move one part of the
picture by design, the failure is another factor moving with it: ``others_moved`` is the
share of scenes in which another factor, as ``hvae.data.scene_estimate`` reads it, moved
by half a canonical step or more (the editing benchmark's preservation rule), less the
share in which the true counterfactual's does (rendered, through stage 1): the reading
has ambiguities of its own, such as an object whose hue nears the floor's.

On both, the slider's own statistic (photos: ``hvae.directions.image_statistics``;
scenes: the factor as ``hvae.data.scene_estimate`` reads it from the pixels, a shape as
1 when the object is that shape) must rise from each strength to the next on average (a
shape need not: past +1 the object is that shape already) and, on photos, fall on no
picture by more than ``MONOTONE_SLACK`` of a step's mean change.

From 0, each side is walked out in steps of ``--step`` up to ``--max``; the range ends
at the last strength before the first one at which the worst picture breaks a threshold
(``THRESHOLDS``; a share of the scenes for ``others_moved``) or the statistic stops
rising. The table gives each range, why it stopped there, and the measures at its ends
and at the old ±3.
``--write`` stores the ranges in the pipelines' ``directions/directions.json`` (which
``hvae directions list``, the pipeline's ``edit``, the CLI and the UI's sliders read);
``--strips DIR`` draws, per slider, the three pictures that come nearest to a threshold
at the range's ends, at -3, the low end, 0, the high end and +3 in increasing order (one
JPEG per model); ``--strips-only`` draws them at the stored ranges without measuring
them again. docs/slider-ranges.md has the results.

    python benchmarks/slider_ranges.py [--model photo-edit --model shapes] [--data DIR ...]
        [--json FILE] [--write] [--strips docs [--strips-only]]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hvae.data import find_images
from hvae.data.images import load_image
from hvae.directions import AUTO_STATISTICS, image_statistics
from hvae.loading import load_pipeline, resolve_model
from pipelines.hvae_pipeline import DIRECTIONS_FOLDER

ROOT = Path(__file__).resolve().parents[1]
TEST_PHOTOS = ROOT / "tests" / "data" / "photos"
HELD_OUT_PHOTOS = ROOT / "data" / "photos" / "heldout" / "photo"
# Photo measures are the worst picture's; others_moved is a share of the scenes.
THRESHOLDS = {
    "clipped": 0.15,
    "border": 8.0,
    "grey_tint": 3.0,
    "others_moved": 0.1,
}
SHARES = ("others_moved",)
MONOTONE_SLACK = 0.25
# Sliders whose job is not to colour greys; hues and warmth tint them on purpose.
KEEPS_GREYS = ("brightness", "saturation", "contrast", "sharpness")
NEAR_GREY_CHROMA = 10.0
OLD_END = 3.0  # the old UI sliders' end, for comparison


# ------------------------------------------------------------------ the measures
def cielab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB levels 0-255 -> CIELAB (D65)."""
    c = rgb / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ np.array(
        [[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]]
    )
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


def newly_clipped(before: np.ndarray, after: np.ndarray) -> float:
    """The share of pixels that were mid-tones (luma 32 to 223) and that the edit leaves
    with two or three channels at 0 or 255: black, white, or a colour whose texture is
    left to one channel. Shadows and highlights that clip are what any exposure change
    does to them (a night sky darkened a little is black); mid-tones that do have lost
    what the picture showed there."""
    luma = before @ np.array([0.299, 0.587, 0.114])
    mid_tones = (luma >= 32) & (luma <= 223)
    clipped = ((after <= 0.5) | (after >= 254.5)).sum(-1) >= 2
    return float((clipped & mid_tones).mean())


def border_step(before: np.ndarray, after: np.ndarray, stride: int) -> float:
    """The largest gap, over sides and channels, between how the outer ``stride`` pixels
    and the next ``2 * stride`` change, after the best affine colour map of the change
    fitted away from the borders is taken out (levels of 255)."""
    height, width, _ = before.shape
    change = after - before
    inner = np.zeros((height, width), dtype=bool)
    inner[3 * stride : height - 3 * stride, 3 * stride : width - 3 * stride] = True
    inputs = np.concatenate([before, np.ones_like(before[..., :1])], -1)
    if inner.sum() < 64:  # too small to fit away from the borders
        inner[:] = True
    colour_map = np.linalg.lstsq(inputs[inner], change[inner], rcond=None)[0]
    left_over = change - inputs @ colour_map
    outer, beside = slice(0, stride), slice(stride, 3 * stride)
    columns = left_over.transpose(1, 0, 2)
    sides = [left_over, left_over[::-1], columns, columns[::-1]]  # top, bottom, left, right
    gaps = [np.abs(s[outer].mean((0, 1)) - s[beside].mean((0, 1))).max() for s in sides]
    return float(max(gaps))


def grey_tint(before: np.ndarray, after: np.ndarray) -> float:
    """Mean CIELAB chroma that near-grey pixels gain off their own hue (all of it where
    they had no hue to speak of)."""
    ab_before, ab_after = cielab(before)[..., 1:], cielab(after)[..., 1:]
    chroma = np.linalg.norm(ab_before, axis=-1)
    grey = chroma < NEAR_GREY_CHROMA
    if not grey.any():
        return 0.0
    hue = ab_before / np.maximum(chroma, 1e-9)[..., None]
    along = (ab_after * hue).sum(-1)
    off_hue = np.where(
        chroma >= 1.0,
        np.abs(ab_after[..., 0] * hue[..., 1] - ab_after[..., 1] * hue[..., 0])
        + np.maximum(0, -along),
        np.linalg.norm(ab_after - ab_before, axis=-1),
    )
    return float(off_hue[grey].mean())


def photo_measures(before: Image.Image, after: Image.Image, stride: int, name: str) -> dict:
    a = np.asarray(before.convert("RGB"), dtype=np.float64)
    b = np.asarray(after.convert("RGB"), dtype=np.float64)
    measures = {"clipped": newly_clipped(a, b), "border": border_step(a, b, stride)}
    if name in KEEPS_GREYS:
        measures["grey_tint"] = grey_tint(a, b)
    statistic = image_statistics(after)[name] if name in AUTO_STATISTICS else math.nan
    return measures | {"statistic": statistic}


def scene_measures(pipe, picture, after: Image.Image, name: str, strength: float) -> dict:
    """Whether the edit moved another factor by half a canonical step or more (as the
    editing benchmark counts it: +1) where the true counterfactual, rendered and passed
    through stage 1, did not (-1 where only it did: the reading's own ambiguities, such as
    an object whose hue nears the floor's, count for neither); and the factor itself as
    read, relative to the unedited decode (a shape: 1 when the object is that shape), NaN
    where it cannot be read."""
    from editing import broken, counterfactual  # benchmarks/editing.py: its own rules

    from hvae.data.images import to_pil, to_tensor
    from hvae.data.scene_estimate import estimate, hue_shift
    from hvae.data.shapes import SHAPES, render

    before, reading = picture.reading, estimate(after)
    if name in SHAPES:
        statistic = float(reading["shape"] == name) if reading["shape"] else math.nan
    elif name.endswith("_hue"):
        statistic = float(hue_shift(before[name], reading[name]))
    else:
        statistic = reading[name] - before[name]
    target = counterfactual(picture.truth, name, strength)
    rendered = to_tensor([render(**target, size=after.height)])
    reference = to_pil(pipe.stage1.decode(pipe.stage1.encode(rendered)))[0]
    moved = bool(broken(before, reading, name)) - bool(broken(before, estimate(reference), name))
    return {"others_moved": float(moved), "statistic": statistic}


def pictures_for(pipe, photo_folders: list[Path], scenes: int, side: int):
    """("photos", (name, photograph shrunk to ``side``, None)...) for a pipeline that edits
    any size; ("scenes", (name, held-out scene, its true factors)...) for one that edits at
    its training size."""
    if pipe.edit_size is None:
        images = []
        for path in find_images(photo_folders):
            image = load_image(path)
            image.thumbnail((side, side))
            images.append((path.stem, image, None))
        return "photos", images
    from editing import held_out  # the editing benchmark's held-out scenes

    found = held_out(scenes, pipe.edit_size)
    return "scenes", [(f"scene {i}", image, f.as_dict()) for i, (image, f) in enumerate(found)]


@dataclass
class Picture:
    """A picture encoded once, its unedited decode, and (scenes) its factors: true, and as
    read from the unedited decode."""

    label: str
    codes: object
    unedited: Image.Image
    truth: dict | None
    reading: dict | None


def prepare(pipe, kind: str, pictures) -> list[Picture]:
    from hvae.data.scene_estimate import estimate

    prepared = []
    for label, image, truth in pictures:
        codes = pipe.encode([image])
        unedited = pipe.decode(codes)[0]
        reading = estimate(unedited) if kind == "scenes" else None
        prepared.append(Picture(label, codes, unedited, truth, reading))
    return prepared


def measure(pipe, kind: str, pictures: list[Picture], name: str, strength: float) -> list[dict]:
    """One row per picture: the artifact measures of ``name`` at ``strength``, and the
    slider's statistic."""
    rows = []
    for p in pictures:
        edited = pipe.decode(pipe.edit(p.codes, {name: strength}))[0] if strength else p.unedited
        if kind == "photos":
            rows.append(photo_measures(p.unedited, edited, pipe.stage1.stride, name))
        else:
            rows.append(scene_measures(pipe, p, edited, name, strength))
    return rows


# ------------------------------------------------------------------ choosing the range
def worst(rows: list[dict]) -> dict:
    """Each measure of the worst picture; a share's, over all of them."""
    return {
        k: float(np.mean([r[k] for r in rows])) if k in SHARES else max(r[k] for r in rows)
        for k in THRESHOLDS
        if k in rows[0]
    }


def rising(
    lower: list[dict], upper: list[dict], per_unit: float, step: float, strictly: bool, each: bool
) -> bool:
    """Whether the statistic rises from ``lower`` to ``upper`` (one grid step apart) on
    average (``strictly``, or at least does not fall) and, with ``each``, on every picture
    where both are read, up to the slack. A class slider need not rise on average: past +1
    every object is of that class already. Scenes are judged on average only: a factor at
    the end of its range cannot move further, and its reading wobbles there."""
    pairs = [
        (a["statistic"], b["statistic"])
        for a, b in zip(lower, upper, strict=True)
        if not (math.isnan(a["statistic"]) or math.isnan(b["statistic"]))
    ]
    if not pairs:
        return True
    slack = MONOTONE_SLACK * abs(per_unit) * step
    changes = np.array([b - a for a, b in pairs])
    on_average = changes.mean() > 0 or (not strictly and changes.mean() >= 0)
    return bool(on_average and (not each or (changes >= -slack).all()))


def mean_statistic(rows: list[dict]) -> float:
    return float(np.nanmean([r["statistic"] for r in rows]))


def find_range(pipe, kind: str, pictures: list[Picture], name: str, step: float, end: float):
    """Walk out from 0 on each side in steps of ``step`` until some picture breaks a
    threshold or the statistic stops rising; the range ends one step before. Returns
    ((low, high), why each side stopped, the rows measured at each strength)."""
    rows = {0.0: measure(pipe, kind, pictures, name, 0.0)}
    for s in (-step, step):
        rows[s] = measure(pipe, kind, pictures, name, s)
    per_unit = (mean_statistic(rows[step]) - mean_statistic(rows[-step])) / (2 * step)
    strictly = pipe.direction_metadata()[name]["units"] != "class"
    ends, reasons = [], {}
    for sign, side in ((-1, "low"), (1, "high")):
        inside, reason = 0.0, f"the grid's end ({sign * end:g})"
        for k in range(1, round(end / step) + 1):
            s = round(sign * k * step, 6)
            if s not in rows:
                rows[s] = measure(pipe, kind, pictures, name, s)
            broken = [f"{m} {v:.3g}" for m, v in worst(rows[s]).items() if v > THRESHOLDS[m]]
            lower, upper = sorted((inside, s))
            if not rising(rows[lower], rows[upper], per_unit, step, strictly, kind == "photos"):
                broken.append("statistic not rising")
            if broken:
                reason = f"at {s:g}: " + ", ".join(broken)
                break
            inside = s
        ends.append(inside)
        reasons[side] = reason
    for s in (-OLD_END, OLD_END):  # for comparison with the old sliders
        if s not in rows:
            rows[s] = measure(pipe, kind, pictures, name, s)
    return (ends[0], ends[1]), reasons, rows


# ------------------------------------------------------------------ strips and output
def nearest_to_failing(pictures: list[Picture], ends: list[list[dict]], count: int):
    """The ``count`` pictures whose measures come closest to a threshold at the range's ends:
    where an artifact inside the range would show first."""

    def closeness(i: int) -> float:
        return max(row[i][k] / THRESHOLDS[k] for row in ends for k in THRESHOLDS if k in row[i])

    return [pictures[i] for i in sorted(range(len(pictures)), key=closeness)[-count:]]


def stacked(sheets: list[Image.Image]) -> Image.Image:
    sheet = Image.new(
        "RGB", (max(s.width for s in sheets), sum(s.height + 6 for s in sheets)), "white"
    )
    y = 0
    for part in sheets:
        sheet.paste(part, (0, y))
        y += part.height + 6
    return sheet


def strip(pipe, pictures: list[Picture], name: str, strengths, side: int = 160) -> Image.Image:
    """One row per picture: the edit at each of ``strengths`` (0 = unedited), labelled."""
    rows = []
    for p in pictures:
        row = [
            pipe.decode(pipe.edit(p.codes, {name: s}))[0] if s else p.unedited for s in strengths
        ]
        rows.append([tile.resize((side, round(side * tile.height / tile.width))) for tile in row])
    heights = [row[0].height for row in rows]
    sheet = Image.new("RGB", (side * len(strengths), 14 + sum(heights) + 2 * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(strengths):
        draw.text((i * side + 4, 1), f"{name} {s:+g}" if s else "unedited", fill="black")
    y = 14
    for row, height in zip(rows, heights, strict=True):
        for i, tile in enumerate(row):
            sheet.paste(tile, (i * side, y))
        y += height + 2
    return sheet


def widen(pipe, name: str, end: float) -> None:
    """Let ``name`` take strengths out to the grid's end and the old ±3: what is measured
    and drawn lies past the range."""
    pipe.set_strength_range(name, (-max(end, OLD_END), max(end, OLD_END)))


def measure_range(pipe, kind: str, pictures: list[Picture], name: str, args):
    """Walk ``name`` out from 0 (``find_range``) past any range stored before; returns its
    range, its report row, and the rows measured at the range's ends."""
    measured = pipe.strength_range(name)
    widen(pipe, name, args.max)  # the walk goes past any range stored before
    (low, high), reasons, by_strength = find_range(pipe, kind, pictures, name, args.step, args.max)
    row = {
        "range": [low, high],
        "range_before": list(measured),
        "stopped": reasons,
        "at_range_ends": [worst(by_strength[low]), worst(by_strength[high])],
        "at_old_ends": [worst(by_strength[-OLD_END]), worst(by_strength[OLD_END])],
        "worst_by_strength": {f"{s:g}": worst(r) for s, r in sorted(by_strength.items())},
    }
    return (low, high), row, [by_strength[low], by_strength[high]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="default: photo-edit and shapes")
    parser.add_argument(
        "--data",
        action="append",
        type=Path,
        help="photo folders (default: tests/data/photos, and data/photos/heldout/photo where "
        "it exists)",
    )
    parser.add_argument("--side", type=int, default=256, help="photos' longer side (default 256)")
    parser.add_argument("--scenes", type=int, default=48, help="held-out scenes (default 48)")
    parser.add_argument("--step", type=float, default=0.125, help="grid step (default 0.125)")
    parser.add_argument("--max", type=float, default=4.0, help="grid end (default 4)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--write", action="store_true", help="store the ranges in the pipelines")
    parser.add_argument("--strips", type=Path, help="folder for before/after strips (JPEG)")
    parser.add_argument(
        "--strips-only",
        action="store_true",
        help="draw the strips at the ranges the pipelines store (what --write stored), "
        "measuring only their ends (to pick the pictures), without walking the ranges",
    )
    args = parser.parse_args()
    if args.strips_only and (not args.strips or args.write or args.json):
        parser.error("--strips-only needs --strips DIR, and measures no range to --write or --json")
    torch.set_grad_enabled(False)

    folders = args.data or [TEST_PHOTOS, *([HELD_OUT_PHOTOS] if HELD_OUT_PHOTOS.is_dir() else [])]
    report = {"thresholds": THRESHOLDS, "monotone_slack": MONOTONE_SLACK, "models": {}}
    for model in args.model or ["photo-edit", "shapes"]:
        pipe = load_pipeline(model, purpose="edit")
        kind, images = pictures_for(pipe, folders, args.scenes, args.side)
        print(f"{model}: {len(pipe.directions)} sliders on {len(images)} {kind}", flush=True)
        pictures = prepare(pipe, kind, images)
        rows, strips = {}, []
        for name in pipe.directions:
            if args.strips_only:
                low, high = pipe.strength_range(name)
                widen(pipe, name, args.max)
                ends = [measure(pipe, kind, pictures, name, s) for s in (low, high)]
            else:
                (low, high), rows[name], ends = measure_range(pipe, kind, pictures, name, args)
            print(f"  {name}: {low:g} to {high:g}", flush=True)
            if args.strips:
                shown = nearest_to_failing(pictures, ends, 3)
                strengths = sorted({-OLD_END, low, 0.0, high, OLD_END})
                strips.append(strip(pipe, shown, name, strengths, 128 if kind == "scenes" else 160))
            pipe.set_strength_range(name, (low, high))
        if args.strips:
            args.strips.mkdir(parents=True, exist_ok=True)
            # JPEG at 88 with full-resolution colour: a tenth of the PNG's bytes, and no
            # blocking at the edges the strips are there to show.
            path = args.strips / f"slider_ranges_{model}.jpg"
            stacked(strips).save(path, quality=88, subsampling=0)
            print(f"strips: {path}")
        if args.strips_only:
            continue
        report["models"][model] = {
            "pictures": [p.label for p in pictures],
            "folders": [str(f) for f in folders] if kind == "photos" else [],
            "directions": rows,
        }
        print_table(model, rows)
        if args.write:
            folder = Path(resolve_model(model)) / DIRECTIONS_FOLDER
            pipe.save_directions(folder)
            print(f"wrote the ranges into {folder / 'directions.json'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def print_table(model: str, rows: dict) -> None:
    used = [k for k in THRESHOLDS if any(k in r["at_old_ends"][0] for r in rows.values())]

    def shown(measures: dict) -> str:
        return " / ".join(f"{measures[k]:.3g}" if k in measures else "-" for k in used)

    print(f"\n{model} (measures: {' / '.join(used)}; thresholds {shown(THRESHOLDS)})")
    print("| slider | range | at the low end | at the high end | at -3 | at +3 | stopped by |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        low, high = r["range"]
        print(
            f"| {name} | {low:+g} … {high:+g} | {shown(r['at_range_ends'][0])} "
            f"| {shown(r['at_range_ends'][1])} | {shown(r['at_old_ends'][0])} "
            f"| {shown(r['at_old_ends'][1])} | low: {r['stopped']['low']}; "
            f"high: {r['stopped']['high']} |"
        )


if __name__ == "__main__":
    main()
