"""``hvae benchmark rd``: our codec against JPEG, WebP and AVIF on the same images, in one run.

Sizes: our payload per image (the 4-byte step and the ANS stream; the archive's
per-record name and CRC are left out, as the other formats' file headers are
not), and the whole file Pillow writes for the others. Metrics are averaged
over images at each setting; BD-rates follow Bjontegaard (cubic fit of log rate
against quality, integrated over the overlapping quality range), with MS-SSIM
in dB (-10 log10(1 - MS-SSIM)).
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from hvae.data.images import find_images, load_image, to_tensor
from hvae.errors import HVAEError
from hvae.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr

SETTINGS = {
    "JPEG": [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95],
    "WebP": [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95],
    "AVIF": [5, 10, 20, 30, 40, 50, 60, 70, 80, 90],
}
SPEED_SIDE = 384


def pillow_codec(name: str, image: Image.Image, quality: int) -> tuple[bytes, float]:
    """Encode with Pillow; returns the file bytes and encode seconds."""
    options = {
        "JPEG": {"format": "JPEG", "quality": quality},
        "WebP": {"format": "WEBP", "quality": quality, "method": 4},
        "AVIF": {"format": "AVIF", "quality": quality, "speed": 6},
    }[name]
    buffer = io.BytesIO()
    start = time.perf_counter()
    image.save(buffer, **options)
    return buffer.getvalue(), time.perf_counter() - start


def jpeg_within(image: Image.Image, max_bytes: int) -> tuple[int, bytes]:
    """The best JPEG quality whose file fits in ``max_bytes`` (quality 1 if none does), and its
    bytes: JPEG at the same file size as another codec's output."""
    low, high = 1, 95
    best = (1, pillow_codec("JPEG", image, 1)[0])
    while low <= high:  # JPEG size grows with quality, so bisect
        middle = (low + high) // 2
        data = pillow_codec("JPEG", image, middle)[0]
        if len(data) <= max_bytes:
            best, low = (middle, data), middle + 1
        else:
            high = middle - 1
    return best


def decode_pillow(data: bytes) -> tuple[Image.Image, float]:
    start = time.perf_counter()
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    return image, time.perf_counter() - start


def image_scores(original: torch.Tensor, image: Image.Image) -> tuple[float, float | None]:
    """(PSNR, MS-SSIM) of ``image`` against ``original`` (a (1, 3, H, W) tensor in [-1, 1]);
    MS-SSIM is None under ``MS_SSIM_MIN_SIDE`` pixels, where its five scales do not fit."""
    decoded = to_tensor([image])
    small = min(original.shape[-2:]) < MS_SSIM_MIN_SIDE
    return float(psnr(decoded, original)[0]), None if small else float(
        ms_ssim(decoded, original)[0]
    )


def ms_ssim_db(value: float) -> float:
    return -10 * math.log10(max(1e-10, 1 - value))


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    """Average bitrate change of ``test`` against ``anchor`` at equal quality, in percent
    (negative = test needs fewer bits). Points are (bpp, quality); None without overlap."""
    if len(anchor) < 4 or len(test) < 4:
        return None
    anchor_q, anchor_r = np.array([q for _, q in anchor]), np.log([r for r, _ in anchor])
    test_q, test_r = np.array([q for _, q in test]), np.log([r for r, _ in test])
    low, high = max(anchor_q.min(), test_q.min()), min(anchor_q.max(), test_q.max())
    if high <= low:
        return None
    fit_a, fit_t = np.polyfit(anchor_q, anchor_r, 3), np.polyfit(test_q, test_r, 3)
    integral_a = np.diff(np.polyval(np.polyint(fit_a), [low, high]))[0]
    integral_t = np.diff(np.polyval(np.polyint(fit_t), [low, high]))[0]
    return float((math.exp((integral_t - integral_a) / (high - low)) - 1) * 100)


def value_at_bpp(curve: list[dict], bpp: float, metric: str) -> float | None:
    """Linear interpolation of ``metric`` at ``bpp`` along a curve sorted by bpp."""
    points = sorted((p["bpp"], p[metric]) for p in curve)
    for (r0, v0), (r1, v1) in zip(points, points[1:], strict=False):
        if r0 <= bpp <= r1:
            return v0 + (v1 - v0) * (bpp - r0) / max(1e-12, r1 - r0)
    return None


def _mean_curve(rows: list[dict]) -> list[dict]:
    by_setting: dict[int, list[dict]] = {}
    for row in rows:
        by_setting.setdefault(row["setting"], []).append(row)
    curve = []
    for setting, group in sorted(by_setting.items()):
        curve.append(
            {"setting": setting}
            | {
                k: float(np.mean([g[k] for g in group]))
                for k in ("bpp", "psnr", "ms_ssim", "encode_ms", "decode_ms")
            }
        )
    return sorted(curve, key=lambda p: p["bpp"])


def ours(refine_steps: int, tune: str = "psnr") -> str:
    """Our curve's name for a ``--refine-steps`` and ``--tune`` setting."""
    if refine_steps == 0:
        return "ours"
    return f"ours, refine {refine_steps}" + ("" if tune == "psnr" else f" for {tune}")


def run_rd_benchmark(
    data: str,
    out: str,
    model: str | None,
    qualities: list[int],
    limit: int | None = None,
    refine_steps: list[int] | None = None,
    tune: str = "psnr",
) -> dict:
    from hvae.codec_settings import DEFAULT_REFINE_STEPS
    from hvae.loading import load_codec, resolve_model

    refine_steps = sorted(set(refine_steps if refine_steps else [0, DEFAULT_REFINE_STEPS]))

    model = resolve_model(model, "codec")  # rd.json records the folder
    pipe = load_codec(model, purpose="compress")
    paths = find_images([data])[:limit] if limit else find_images([data])
    if not paths:
        raise HVAEError(f"{data}: no images")
    images = [load_image(p) for p in paths]
    ours_names = [ours(r, tune) for r in refine_steps]
    rows: dict[str, list[dict]] = {name: [] for name in [*ours_names, "JPEG", "WebP", "AVIF"]}
    overhead = []
    bar = tqdm(
        total=len(images) * (len(qualities) * len(refine_steps) + sum(map(len, SETTINGS.values()))),
        desc="rd",
        dynamic_ncols=True,
    )
    for path, image in zip(paths, images, strict=True):
        original = to_tensor([image])
        pixels = image.width * image.height
        for refine, quality in ((r, q) for r in refine_steps for q in qualities):
            start = time.perf_counter()
            payload, ideal_bits = pipe.encode_image(
                image, quality, return_bits=True, refine_steps=refine, tune=tune
            )
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            decoded = pipe.decode_image(payload, (image.height, image.width))
            decode_s = time.perf_counter() - start
            p, m = image_scores(original, decoded)
            rows[ours(refine, tune)].append(
                {
                    "image": path.name,
                    "setting": quality,
                    "bpp": 8 * len(payload) / pixels,
                    "psnr": p,
                    "ms_ssim": m,
                    "encode_ms": encode_s * 1e3,
                    "decode_ms": decode_s * 1e3,
                }
            )
            overhead.append(8 * len(payload) / ideal_bits)
            bar.update()
        for codec, settings in SETTINGS.items():
            for setting in settings:
                data_bytes, encode_s = pillow_codec(codec, image, setting)
                decoded, decode_s = decode_pillow(data_bytes)
                p, m = image_scores(original, decoded)
                rows[codec].append(
                    {
                        "image": path.name,
                        "setting": setting,
                        "bpp": 8 * len(data_bytes) / pixels,
                        "psnr": p,
                        "ms_ssim": m,
                        "encode_ms": encode_s * 1e3,
                        "decode_ms": decode_s * 1e3,
                    }
                )
                bar.update()
    bar.close()
    curves = {codec: _mean_curve(r) for codec, r in rows.items()}
    result = {
        "images": [str(p) for p in paths],
        "model": model,
        "fingerprint": pipe.fingerprint(),
        "curves": curves,
        "rows": rows,
        "coded_over_ideal": {"mean": float(np.mean(overhead)), "max": float(np.max(overhead))},
        "bd_rate": {},
        "matched": {},
        "tune": tune,
        "speed_384": speed_at(pipe, images, refine_steps=refine_steps, tune=tune),
    }
    for name in ours_names:
        for anchor in ("JPEG", "WebP", "AVIF"):
            result["bd_rate"][f"{name} vs {anchor}"] = {
                "psnr": bd_rate(
                    [(p["bpp"], p["psnr"]) for p in curves[anchor]],
                    [(p["bpp"], p["psnr"]) for p in curves[name]],
                ),
                "ms_ssim_db": bd_rate(
                    [(p["bpp"], ms_ssim_db(p["ms_ssim"])) for p in curves[anchor]],
                    [(p["bpp"], ms_ssim_db(p["ms_ssim"])) for p in curves[name]],
                ),
            }
    for bpp in (0.25, 0.375, 0.5):
        result["matched"][str(bpp)] = {
            codec: {m: value_at_bpp(curves[codec], bpp, m) for m in ("psnr", "ms_ssim")}
            for codec in curves
        }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rd.json").write_text(json.dumps(result, indent=1) + "\n")
    table = format_table(result)
    (out_dir / "rd.md").write_text(table + "\n")
    plotted = plot(curves, out_dir / "rd.png")
    print(table)
    written = ["rd.json", "rd.md"] + (["rd.png"] if plotted else [])
    print("wrote " + ", ".join(str(out_dir / name) for name in written))
    return result


def _center_crop(image: Image.Image, side: int) -> Image.Image:
    if min(image.size) < side:
        image = image.resize((max(side, image.width), max(side, image.height)))
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def speed_at(
    pipe,
    images: list[Image.Image],
    side: int = SPEED_SIDE,
    refine_steps: list[int] = (0,),
    tune: str = "psnr",
) -> dict:
    """Images per second at side x side (centre crops), ours at quality 4 beside the others at
    settings of similar bpp, measured in the same run on the same crops."""
    crops = [_center_crop(image, side) for image in images]
    pipe.encode_image(crops[0], 4, refine_steps=1)  # warm-up: first calls pay for allocations
    results = {}
    for refine in refine_steps:
        start = time.perf_counter()
        payloads = [pipe.encode_image(c, 4, refine_steps=refine, tune=tune) for c in crops]
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        for payload in payloads:
            pipe.decode_image(payload, (side, side))
        decode_s = time.perf_counter() - start
        results[f"{ours(refine, tune)} q4"] = {
            "encode_img_s": len(crops) / encode_s,
            "decode_img_s": len(crops) / decode_s,
        }
    for codec, setting in (("JPEG", 75), ("WebP", 75), ("AVIF", 50)):
        encoded, encode_total, decode_total = [], 0.0, 0.0
        for crop in crops:
            data, seconds = pillow_codec(codec, crop, setting)
            encoded.append(data)
            encode_total += seconds
        for data in encoded:
            decode_total += decode_pillow(data)[1]
        label = f"{codec} q{setting}" + (" speed 6" if codec == "AVIF" else "")
        results[label] = {
            "encode_img_s": len(crops) / encode_total,
            "decode_img_s": len(crops) / decode_total,
        }
    return results


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(result: dict) -> str:
    lines = [
        "| codec | setting | bpp | PSNR dB | MS-SSIM | encode ms | decode ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for codec, curve in result["curves"].items():
        for p in curve:
            lines.append(
                f"| {codec} | {p['setting']} | {p['bpp']:.3f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} | "
                f"{p['encode_ms']:.1f} | {p['decode_ms']:.1f} |"
            )
    lines += ["", "| ours vs anchor | BD-rate on PSNR | BD-rate on MS-SSIM (dB) |", "|---|---|---|"]
    for pair, bd in result["bd_rate"].items():
        lines.append(
            f"| {pair} | {_fmt(bd['psnr'], '+.1f')} % | {_fmt(bd['ms_ssim_db'], '+.1f')} % |"
        )
    names = [name for name in result["curves"] if name.startswith("ours")]
    lines += [
        "",
        "| bpp | "
        + " | ".join(f"{name} PSNR" for name in names)
        + " | JPEG PSNR | "
        + " | ".join(f"{name} MS-SSIM" for name in names)
        + " | WebP MS-SSIM | AVIF MS-SSIM |",
        "|---" * (2 * len(names) + 4) + "|",
    ]
    for bpp, row in result["matched"].items():
        cells = [_fmt(row[n]["psnr"], ".2f") for n in [*names, "JPEG"]]
        cells += [_fmt(row[n]["ms_ssim"], ".4f") for n in [*names, "WebP", "AVIF"]]
        lines.append(f"| {bpp} | " + " | ".join(cells) + " |")
    overhead = result["coded_over_ideal"]
    lines += [
        "",
        f"coded bytes / model -log2 p: mean {overhead['mean']:.4f}, max {overhead['max']:.4f}",
        "",
    ]
    lines += [f"| {SPEED_SIDE}² | encode img/s | decode img/s |", "|---|---|---|"]
    for codec, speed in result["speed_384"].items():
        lines.append(f"| {codec} | {speed['encode_img_s']:.1f} | {speed['decode_img_s']:.1f} |")
    return "\n".join(lines)


def plot(curves: dict, path: Path) -> bool:
    """Write the PSNR and MS-SSIM curves to ``path``; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'); no plot written")
        return False
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for codec, curve in curves.items():
        rates = [p["bpp"] for p in curve]
        axes[0].plot(rates, [p["psnr"] for p in curve], marker="o", label=codec)
        axes[1].plot(rates, [ms_ssim_db(p["ms_ssim"]) for p in curve], marker="o", label=codec)
    for axis, label in zip(axes, ("PSNR (dB)", "MS-SSIM (dB)"), strict=True):
        axis.set_xlabel("bits per pixel")
        axis.set_ylabel(label)
        axis.set_xlim(0, 1.5)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
