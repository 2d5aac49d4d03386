"""Where a compression pipeline's decode time goes: the entropy model or stage 1.

Each held-out picture is resized to --size², coded at --quality without the
encoder's search, and decoded --repeats times (after one warm-up): the whole
``decode_image``, then its two parts on one thread as the pipeline runs them,
and stage 1's part again on the caller's threads, for what determinism costs.

    python benchmarks/decode_split.py --model checkpoints/photo --data data/photos/heldout/photo
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hvae.data.images import find_images, load_image
from hvae.loading import load_codec
from pipelines.compression_pipeline import one_thread


def mean_seconds(function, repeats: int) -> float:
    function()  # warm-up: first calls allocate and pick kernels
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="checkpoints/photo")
    parser.add_argument("--data", default="data/photos/heldout/photo")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pipe = load_codec(args.model)
    size = (args.size, args.size)
    rows = {"decode_image": [], "entropy model (1 thread)": [], "stage 1 (1 thread)": []}
    rows[f"stage 1 ({torch.get_num_threads()} threads)"] = []
    for path in find_images([args.data]):
        image = load_image(path).resize(size)
        payload = pipe.encode_image(image, args.quality, refine_steps=0)

        def symbols(payload=payload):
            return pipe.decode_features(payload, size)

        times = rows["decode_image"]
        times.append(mean_seconds(lambda p=payload: pipe.decode_image(p, size), args.repeats))
        with one_thread():
            rows["entropy model (1 thread)"].append(mean_seconds(symbols, args.repeats))
            features = symbols()
            rows["stage 1 (1 thread)"].append(
                mean_seconds(lambda f=features: pipe.stage1.decode(f, size), args.repeats)
            )
        rows[f"stage 1 ({torch.get_num_threads()} threads)"].append(
            mean_seconds(lambda f=features: pipe.stage1.decode(f, size), args.repeats)
        )
    print(f"| part of a {args.size}² decode, quality {args.quality} | mean ms per image |")
    print("|---|---|")
    for name, times in rows.items():
        print(f"| {name} | {1000 * np.mean(times):.0f} |")


if __name__ == "__main__":
    main()
