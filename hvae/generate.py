"""Batch generation that is reproducible and resumable.

Image ``i`` of a run depends only on (seed, i, temperature, model), never on the
batch size. Each image is written to a temporary name and renamed, then its
line is appended to ``manifest.jsonl``; a rerun skips every image already in
the manifest, so an interrupted run finishes with each image exactly once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from hvae.errors import HVAEError
from pipelines.hvae_pipeline import image_seed

MANIFEST = "manifest.jsonl"


def _read_manifest(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, cut short by a crash: the image is redone
                break
            raise HVAEError(f"{path}: line {number} is not valid JSON") from None
    return records


def generate_images(
    pipe, n: int, out_dir: Path, seed: int = 0, temperature: float = 0.8, batch_size: int = 16
) -> dict:
    """Write ``n`` samples as ``sample_XXXXXX.png`` plus a manifest; return counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    fingerprint = pipe.fingerprint()
    done = set()
    for record in _read_manifest(manifest_path):
        if (record.get("seed"), record.get("temperature"), record.get("model")) != (
            seed,
            temperature,
            fingerprint,
        ):
            raise HVAEError(
                f"{out_dir} holds images made with other settings (seed {record.get('seed')}, temperature "
                f"{record.get('temperature')}, model {record.get('model')}); use a new output folder"
            )
        if (out_dir / record["file"]).exists():
            done.add(record["index"])
    todo = [i for i in range(n) if i not in done]
    with (
        manifest_path.open("a") as manifest,
        tqdm(total=n, initial=n - len(todo), desc="generating", dynamic_ncols=True) as progress,
    ):
        for start in range(0, len(todo), batch_size):
            indices = todo[start : start + batch_size]
            # Consecutive runs of indices share one sample() call; gaps left by a resume split them.
            for run in _consecutive_runs(indices):
                images = pipe.sample(len(run), temperature=temperature, seed=seed, start=run[0])
                for index, image in zip(run, images, strict=True):
                    name = f"sample_{index:06d}.png"
                    tmp = out_dir / f".{name}.tmp"
                    image.save(tmp, format="PNG")
                    os.replace(tmp, out_dir / name)
                    record = {
                        "file": name,
                        "index": index,
                        "seed": seed,
                        "image_seed": image_seed(seed, index),
                    }
                    record |= {"temperature": temperature, "model": fingerprint}
                    manifest.write(json.dumps(record) + "\n")
                    manifest.flush()
                    progress.update(1)
    return {"written": len(todo), "skipped": n - len(todo), "manifest": str(manifest_path)}


def _consecutive_runs(indices: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] + 1 == index:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs
