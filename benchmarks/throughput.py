"""Batch throughput of the pipeline on CPU: images/s and peak memory against batch size.

For generate, encode, decode and edit at 128² and 256² (edit only at the size
the pipeline's sliders edit at, when they have one: --sizes 64 for the bundled
scene sliders), every batch size in
--batch-sizes processes the same --images images (after one warm-up batch).
Peak memory is the process's resident-set high-water mark during that
measurement (reset through /proc/self/clear_refs, so each row is its own peak),
reported above the resident size before it started.

A second table checks bf16 autocast (plus channels_last) against fp32 at one
batch size: speed, and the PSNR of the bf16 output against the fp32 output.

    python benchmarks/throughput.py                # full table, about 5 minutes on 2 cores
    python benchmarks/throughput.py --images 16 --batch-sizes 1 16   # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import time
from pathlib import Path

import torch

from hvae.data.shapes import ShapesDataset
from hvae.metrics import psnr
from pipelines import HVAEPipeline


def resident_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> None:
    # Hand freed heap back to the OS first, or an earlier, larger run's memory stays resident
    # and hides this run's peak.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS


def operations(pipe: HVAEPipeline, size: int, images: list, direction: str):
    """name -> function(batch of images or indices) -> output tensor or PIL list."""
    codes_cache = {}

    def codes_for(batch):
        key = len(batch)
        if key not in codes_cache:
            codes_cache[key] = pipe.encode(batch)
        return codes_cache[key]

    return {
        "generate": lambda batch: pipe.sample(len(batch), temperature=0.8, size=(size, size)),
        "encode": lambda batch: pipe.encode(batch),
        "decode": lambda batch: pipe.decode(codes_for(batch)),
        "edit": lambda batch: pipe(batch, edits={direction: 1.0}),
    }


def measure(fn, images: list, batch_size: int) -> tuple[float, float]:
    """(images/s, peak MiB above the start) for ``fn`` over ``images`` in batches."""
    fn(images[:batch_size])  # warm-up: oneDNN kernels are built for each new shape
    reset_peak()
    before, _ = resident_mib()
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        fn(images[start : start + batch_size])
    elapsed = time.perf_counter() - started
    _, peak = resident_mib()
    return len(images) / elapsed, peak - before


@contextlib.contextmanager
def bf16_autocast(pipe: HVAEPipeline):
    pipe.autoencoder.to(memory_format=torch.channels_last)
    pipe.hvae.to(memory_format=torch.channels_last)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    finally:
        pipe.autoencoder.to(memory_format=torch.contiguous_format)
        pipe.hvae.to(memory_format=torch.contiguous_format)


def as_images(pipe: HVAEPipeline, output) -> torch.Tensor:
    """Any op's output as an image tensor; codes are decoded (in fp32) to compare them."""
    from hvae.data.images import to_tensor
    from hvae.model import HVAECodes

    if isinstance(output, HVAECodes):
        return pipe.decode_tensor(output)
    return to_tensor(output)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="checkpoints/shapes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--images", type=int, default=64, help="images per measurement")
    parser.add_argument("--bf16-batch-size", type=int, default=16)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    pipe = HVAEPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    direction = "benchmark"
    if pipe.directions:
        direction = pipe.directions[0]
    else:  # any vector will do for timing
        group = pipe.hvae.latent_groups[0]
        pipe.register_direction(direction, torch.ones(group.z_channels), group=0)
    print(
        f"model {pipe.fingerprint()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    rows, bf16_rows = [], []
    for size in args.sizes:
        images = [
            image.resize((size, size)) for image, _ in ShapesDataset(args.images, seed=7, size=size)
        ]
        ops = operations(pipe, size, images, direction)
        if pipe.edit_size not in (None, size):
            print(f"  edit     {size}²: skipped, the sliders edit {pipe.edit_size}² images only")
            del ops["edit"]
        for name, fn in ops.items():
            for batch_size in args.batch_sizes:
                rate, peak = measure(fn, images, batch_size)
                rows.append(
                    {
                        "op": name,
                        "size": size,
                        "batch": batch_size,
                        "images_per_s": rate,
                        "peak_mib": peak,
                    }
                )
                print(
                    f"  {name:8s} {size}² batch {batch_size:3d}: {rate:8.1f} img/s, peak +{peak:7.1f} MiB",
                    flush=True,
                )
            batch = images[: args.bf16_batch_size]
            reference = as_images(pipe, fn(batch))
            fp32_rate, _ = measure(fn, batch, len(batch))
            torch.manual_seed(0)
            with bf16_autocast(pipe):
                bf16_rate, _ = measure(fn, batch, len(batch))
                bf16_out = fn(batch)
            bf16_out = as_images(pipe, bf16_out)
            bf16_rows.append(
                {
                    "op": name,
                    "size": size,
                    "fp32_images_per_s": fp32_rate,
                    "bf16_images_per_s": bf16_rate,
                    "speedup": bf16_rate / fp32_rate,
                    "psnr_vs_fp32": float(psnr(bf16_out, reference).mean()),
                }
            )

    print("\n| op | size | batch | images/s | peak memory (MiB above start) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['op']} | {r['size']}² | {r['batch']} | {r['images_per_s']:.1f} | {r['peak_mib']:.0f} |"
        )
    print(f"\nbf16 autocast + channels_last vs fp32, batch {args.bf16_batch_size}:")
    print("| op | size | fp32 images/s | bf16 images/s | speed-up | PSNR of bf16 vs fp32 (dB) |")
    print("|---|---|---|---|---|---|")
    for r in bf16_rows:
        print(
            f"| {r['op']} | {r['size']}² | {r['fp32_images_per_s']:.1f} | {r['bf16_images_per_s']:.1f} "
            f"| {r['speedup']:.2f}× | {r['psnr_vs_fp32']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"throughput": rows, "bf16": bf16_rows}, indent=1))


if __name__ == "__main__":
    main()
