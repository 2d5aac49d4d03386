"""How often a std lands in another table bucket when the arithmetic changes.

The decoder must pick exactly the table entry the encoder picked for every
symbol, or the stream desynchronises. Within one machine the pipeline makes
both sides compute alike (one thread, batch 1). Across machines the arithmetic
differs; this measures how often that desynchronises a stream, encoding on 2
threads and decoding on 1 (oneDNN splits the sums differently) as a stand-in for
another machine, with the entropy model in float32 (as bundled) and in float64.

    python benchmarks/scale_flips.py --data data/photos/heldout/photo
"""

from __future__ import annotations

import argparse
import time

import torch

from hvae.data.images import find_images, load_image
from hvae.entropy import decode_symbols, encode_symbols, pack
from hvae.loading import load_codec
from pipelines.compression_pipeline import CODING_DTYPES, QUALITY_STEPS


def desynchronised(model, features, step) -> tuple[bool, float, int]:
    """Encode on 2 threads, decode on 1: did the stream come apart? (A mean one ulp off only
    moves the rebuilt features by about an ulp; a bucket flip scrambles everything after it.)
    Also returns the 1-thread decode's seconds and the stream's bytes."""
    torch.set_num_threads(2)
    with torch.no_grad():
        chunks, rebuilt = encode_symbols(model, features, step)
        payload = pack(chunks)
        torch.set_num_threads(1)
        start = time.perf_counter()
        decoded = decode_symbols(model, payload, step, tuple(features.shape[-2:]))
        seconds = time.perf_counter() - start
    return bool((decoded - rebuilt).abs().max() > step / 2), seconds, len(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="checkpoints/photo")
    parser.add_argument("--data", default="data/photos/heldout/photo")
    args = parser.parse_args()
    pipe = load_codec(args.model)
    images = [load_image(p) for p in find_images([args.data])]
    features = [pipe.features_of(image) for image in images]
    threads = torch.get_num_threads()
    print(
        "| dtype | streams | desynchronised | decode s per stream | bytes |\n|---|---|---|---|---|"
    )
    for version, dtype in CODING_DTYPES.items():
        model = pipe.coding_model(version)
        try:
            results = [
                desynchronised(model, feature.to(dtype), step)
                for feature in features
                for step in QUALITY_STEPS
            ]
        finally:
            torch.set_num_threads(threads)
        name = f"{str(dtype).replace('torch.', '')} (format {version})"
        broken = sum(r[0] for r in results)
        seconds = sum(r[1] for r in results) / len(results)
        total = sum(r[2] for r in results)
        print(f"| {name} | {len(results)} | {broken} | {seconds:.3f} | {total} |", flush=True)


if __name__ == "__main__":
    main()
