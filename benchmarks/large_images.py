"""Large photos: peak memory and seconds per megapixel of stage 1 (tiled), compression,
decompression and editing with the bundled photo pipelines, and Pillow's WebP and AVIF.

The picture is synthetic but photographic: the photos in tests/data/photos, upscaled
4x (Lanczos) and laid side by side, mirrored so that no seam is a hard edge, up to
the size asked for. Every measurement runs in a child process of its own; the child
times the operation alone (models loaded, picture read) and reports the process's RSS
before it ("RSS GB") and its peak RSS during it ("peak GB": VmHWM, reset just before,
so imports, models and all; ``getrusage``'s lifetime peak is in the --json rows). The
parent kills a child whose RSS passes ``--cap-gb``, so a run cannot push the machine
into the OOM killer; such a row says "killed". Wall times on a shared machine are
noisy; CPU seconds ("cpu s/MP", all threads) much less so.

    python benchmarks/large_images.py --sizes 6000x4000 9800x6530
    python benchmarks/large_images.py --sizes 3000x2000 --only stage1 --tiles 256 512 1024 0
    python benchmarks/large_images.py --sizes 6000x4000 --only codec-steps edit-steps
    python benchmarks/large_images.py --photos a.jpg b.jpg --only tiled-rate --rate-tiles 64 128

Kinds (``--only``): stage1 (encode + decode, per ``--tiles``; 0 = whole image),
compress and decompress (``--refine-steps``, default the pipeline's), edit (warmth at the
top of its slider range), webp and avif (encode and decode), and where the time and
memory of those go:
codec-steps (compression and decompression step by step: stage 1, the tiles' coding
with refinement when --refine-steps is not 0, their decoding, stage 1) and edit-steps
(editing by a feature flow: stage-1 encode, the flow, stage-1 decode), and tiled-rate
(the bpp of coding the features in independent tiles of ``--rate-tiles`` features).
``--photos`` measures those pictures instead.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "data" / "photos"
COMPRESSION_MODEL = ROOT / "checkpoints" / "photo"
EDIT_MODEL = ROOT / "checkpoints" / "photo-edit"
KINDS = (
    "stage1",
    "compress",
    "decompress",
    "edit",
    "webp",
    "avif",
    "codec-steps",
    "edit-steps",
    "tiled-rate",
)
WEBP_QUALITY = 80
AVIF_QUALITY = 60


def synthetic_photo(width: int, height: int) -> Image.Image:
    """The test photos upscaled 4x and tiled (mirrored) to ``width`` x ``height``."""
    photos = [Image.open(path).convert("RGB") for path in sorted(PHOTOS.glob("*.png"))]
    photos = [p.resize((4 * p.width, 4 * p.height), Image.Resampling.LANCZOS) for p in photos]
    side = photos[0].width
    canvas = Image.new("RGB", (width, height))
    for row in range(-(-height // side)):
        for column in range(-(-width // side)):
            tile = photos[(row + column) % len(photos)]
            if column % 2:
                tile = ImageOps.mirror(tile)
            if row % 2:
                tile = ImageOps.flip(tile)
            canvas.paste(tile, (column * side, row * side))
    return canvas


# ------------------------------------------------------------ child side
def _rss_gb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # in KiB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _timed(fn):
    """fn's result and its (wall s, CPU s, RSS before in GB, peak RSS during in GB). CPU time
    barely moves when other jobs share the cores, wall time does. The peak is reset first
    (Linux's clear_refs), so it is this call's own, models and all."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_gb("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return result, (wall, cpu, before, _rss_gb("VmHWM"))


def _stage1(image: Image.Image, args) -> dict:
    from hvae.autoencoder import FeatureAutoencoder, Tiling

    tiling = Tiling(tile=args.tile) if args.tile else None
    stage1 = FeatureAutoencoder.from_pretrained(COMPRESSION_MODEL / "autoencoder", tiling=tiling)
    features, encode_s = _timed(lambda: stage1.encode(image))
    _, decode_s = _timed(lambda: stage1.decode_pil(features, (image.height, image.width)))
    return {"seconds": {"encode": encode_s, "decode": decode_s}}


def _compress(image: Image.Image, args) -> dict:
    from pipelines import HVAECompressionPipeline

    pipe = HVAECompressionPipeline.from_pretrained(COMPRESSION_MODEL)
    data, seconds = _timed(
        lambda: pipe.compress(image, args.quality, refine_steps=args.refine_steps)
    )
    Path(args.archive).write_bytes(data)
    return {"seconds": {"": seconds}, "bpp": 8 * len(data) / (image.width * image.height)}


def _decompress(image: Image.Image, args) -> dict:
    from pipelines import HVAECompressionPipeline

    pipe = HVAECompressionPipeline.from_pretrained(COMPRESSION_MODEL)
    data = Path(args.archive).read_bytes()
    (decoded,), seconds = _timed(lambda: pipe.decompress(data))
    if decoded.size != image.size:
        raise RuntimeError(f"decoded {decoded.size}, expected {image.size}")
    return {"seconds": {"": seconds}}


def _edit(image: Image.Image, args) -> dict:
    from pipelines import HVAEPipeline

    pipe = HVAEPipeline.from_pretrained(EDIT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    edits = {"warmth": pipe.strength_range("warmth")[1]}
    (edited,), seconds = _timed(lambda: pipe(image, edits=edits))
    if edited.size != image.size:
        raise RuntimeError(f"edited {edited.size}, expected {image.size}")
    return {"seconds": {"": seconds}}


def _pillow(image: Image.Image, args) -> dict:
    format_, quality = ("WEBP", WEBP_QUALITY) if args.kind == "webp" else ("AVIF", AVIF_QUALITY)
    buffer = io.BytesIO()
    _, encode_s = _timed(lambda: image.save(buffer, format_, quality=quality))
    data = buffer.getvalue()
    _, decode_s = _timed(lambda: Image.open(io.BytesIO(data)).load())
    bpp = 8 * len(data) / (image.width * image.height)
    return {"seconds": {"encode": encode_s, "decode": decode_s}, "bpp": bpp}


def _codec_steps(image: Image.Image, args) -> dict:
    """``compress`` and ``decompress`` step by step, as the pipeline runs them."""
    import torch

    from hvae.entropy import one_thread
    from pipelines import HVAECompressionPipeline
    from pipelines.compression_pipeline import quality_step

    pipe = HVAECompressionPipeline.from_pretrained(COMPRESSION_MODEL)
    step, size, seconds = quality_step(args.quality), (image.height, image.width), {}
    tiles = f"tiles: refine {args.refine_steps}, entropy model, ANS"
    with one_thread(), torch.no_grad():
        features, seconds["stage-1 encode"] = _timed(lambda: pipe.features_of(image))
        (payload, _, _), seconds[tiles] = _timed(
            lambda: pipe.encode_features(
                features, image, step, args.refine_steps, workers=args.threads
            )
        )
        features = None
        decoded, seconds["tiles: entropy model decode"] = _timed(
            lambda: pipe.decode_features(payload, size, workers=args.threads)
        )
        _, seconds["stage-1 decode"] = _timed(lambda: pipe.stage1.decode_pil(decoded, size))
    return {"seconds": seconds, "bpp": 8 * len(payload) / (image.width * image.height)}


def _edit_steps(image: Image.Image, args) -> dict:
    """``edit`` step by step: a feature-flow edit, no stage 2."""
    import torch

    from hvae.directions import flow_features
    from pipelines import HVAEPipeline

    pipe = HVAEPipeline.from_pretrained(EDIT_MODEL)
    flows = pipe._directions["warmth"].field
    strengths = torch.zeros(len(flows.names))
    strengths[flows.names.index("warmth")] = pipe.strength_range("warmth")[1]
    size, seconds = (image.height, image.width), {}
    features, seconds["stage-1 encode"] = _timed(
        lambda: pipe.stage1.encode([image], multiple=pipe.pixel_multiple)
    )
    valid = tuple(-(-side // pipe.stage1.stride) for side in size)
    moved, seconds["flow"] = _timed(
        lambda: flow_features(features, flows.generator(strengths), valid)
    )
    features = None
    _, seconds["stage-1 decode"] = _timed(lambda: pipe.stage1.decode_pil(moved, size))
    return {"seconds": seconds}


def _tiled_rate(image: Image.Image, args) -> dict:
    """The picture coded whole, and coded in independent feature tiles of each of
    ``--rate-tiles`` features (one ANS stream per tile plus a 4-byte length each, the cost
    a tiled format would pay): bpp, and PSNR after stage 1 decodes what was coded (the
    quantization is relative to the predicted means, so tiles change the pixels too)."""
    import torch

    from hvae.autoencoder import tile_spans
    from hvae.data.images import to_tensor
    from hvae.entropy import encode_symbols, pack
    from hvae.metrics import psnr
    from pipelines import HVAECompressionPipeline
    from pipelines.compression_pipeline import one_thread, quality_step

    pipe = HVAECompressionPipeline.from_pretrained(COMPRESSION_MODEL)
    step, multiple = quality_step(args.quality), pipe.hvae.feature_multiple
    seconds, notes = {}, {}
    with one_thread():
        features, model = pipe.features_of(image), pipe.coding_model()
        for tile in [0, *args.rate_tiles]:
            height, width = features.shape[-2:]
            rows = tile_spans(height, tile or height, 0, multiple)
            columns = tile_spans(width, tile or width, 0, multiple)
            rebuilt = torch.empty_like(features)

            def code(rows=rows, columns=columns, rebuilt=rebuilt, tiled=bool(tile)):
                size = 0
                for top, bottom, _, _ in rows:
                    for left, right, _, _ in columns:
                        part = features[..., top:bottom, left:right]
                        chunks, rebuilt[..., top:bottom, left:right] = encode_symbols(
                            model, part, step
                        )
                        size += len(pack(chunks)) + (4 if tiled else 0)
                return size

            phase = f"tiles {tile or 'off'}"
            size, seconds[phase] = _timed(code)
            decoded = pipe.stage1.decode_pil(rebuilt, (image.height, image.width))
            decibels = float(psnr(to_tensor(decoded), to_tensor([image]))[0])
            notes[phase] = f"{8 * size / (image.width * image.height):6.3f}  {decibels:.2f} dB"
    return {"seconds": seconds, "notes": notes}


MEASURE = {
    "stage1": _stage1,
    "compress": _compress,
    "decompress": _decompress,
    "edit": _edit,
    "webp": _pillow,
    "avif": _pillow,
    "codec-steps": _codec_steps,
    "edit-steps": _edit_steps,
    "tiled-rate": _tiled_rate,
}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    image = Image.open(args.image).convert("RGB")
    result = MEASURE[args.kind](image, args)
    result["process_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


# ------------------------------------------------------------ parent side
def run_child(options: list[str], cap_gb: float) -> dict:
    """Run one measurement in a child; kill it if its RSS passes ``cap_gb``."""
    command = [sys.executable, __file__, "--child", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, highest = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            highest = max(highest, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if highest > cap_gb * 2**30:
            process.kill()
            process.communicate()
            return {"error": f"killed at RSS > {cap_gb:g} GB"}
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    if process.returncode:
        return {"error": (stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(stdout.strip().splitlines()[-1])


def table_lines(result: dict, megapixels: float) -> list[str]:
    """One line per timed phase of a child's result (or one saying why it has none)."""
    size, label = result["size"], result["measurement"]
    if "error" in result:
        return [f"{size:<10} {label:<44} {result['error']}"]
    bpp = f"{result['bpp']:6.3f}" if "bpp" in result else ""
    return [
        f"{size:<10} {f'{label} {phase}'.strip():<44} {wall:7.1f} {wall / megapixels:6.2f} "
        f"{cpu / megapixels:8.2f} {before:6.2f} {peak:7.2f} {result.get('notes', {}).get(phase, bpp)}"
        for phase, (wall, cpu, before, peak) in result["seconds"].items()
    ]


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def plan(args) -> list[tuple[str, list[str]]]:
    """(row label, child options) per measurement, in the order they run."""
    rows = []
    for kind in args.only:
        if kind == "stage1":
            for tile in args.tiles:
                rows.append((f"stage1 tile {tile or 'off'}", ["stage1", "--tile", str(tile)]))
        elif kind in ("compress", "decompress"):
            steps = args.refine_steps
            rows.append((f"{kind} q{args.quality} refine {steps}", [kind]))
        else:
            rows.append((kind, [kind]))
    return rows


def measure_picture(image_path: Path, archive: Path, args) -> list[dict]:
    """Every measurement of ``args`` on one picture, each in its own child; prints its rows."""
    width, height = Image.open(image_path).size
    archive.unlink(missing_ok=True)  # decompress reads this picture's archive, or fails
    common = [
        f"--image={image_path}",
        f"--archive={archive}",
        f"--quality={args.quality}",
        f"--refine-steps={args.refine_steps}",
        f"--threads={args.threads}",
        "--rate-tiles",
        *map(str, args.rate_tiles),
    ]
    rows = []
    for label, options in plan(args):
        result = run_child(options + common, args.cap_gb)
        result |= {"size": f"{width}x{height}", "measurement": label}
        rows.append(result)
        for line in table_lines(result, width * height / 1e6):
            print(line, flush=True)
    return rows


def main() -> None:
    from hvae.codec_settings import DEFAULT_QUALITY, DEFAULT_REFINE_STEPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(6000, 4000)])
    parser.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS[:6]))
    parser.add_argument("--tiles", nargs="+", type=int, default=[1024])
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY)
    parser.add_argument("--refine-steps", type=int, default=DEFAULT_REFINE_STEPS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cap-gb", type=float, default=8.0, help="kill a child above this RSS")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--photos", nargs="+", type=Path, help="measure these pictures instead of synthetic ones"
    )
    parser.add_argument(
        "--rate-tiles", nargs="+", type=int, default=[64, 128, 256], help="for tiled-rate"
    )
    # Child side (internal): one measurement of one picture.
    parser.add_argument("--child", nargs=1, choices=KINDS, dest="kind")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--archive", type=Path)
    parser.add_argument("--tile", type=int, default=1024)
    args = parser.parse_args()
    if args.kind:
        args.kind = args.kind[0]
        child(args)
        return

    print(
        f"{'size':<10} {'measurement':<44} {'s':>7} {'s/MP':>6} {'cpu s/MP':>8} "
        f"{'RSS GB':>6} {'peak GB':>7} {'bpp':>6}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        synthetic = [(Path(folder) / "photo.png", size) for size in args.sizes]
        for image_path, size in [(path, None) for path in args.photos or []] or synthetic:
            if size is not None:
                synthetic_photo(*size).save(image_path, compress_level=1)
            rows += measure_picture(image_path, Path(folder) / "photo.hvz", args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
