"""Resumable batch jobs over many images: generate, edit, encode and decode.

Every job is split in three, so that one piece of logic serves a single process
and a Ray cluster (``hvae.distributed``) alike:

``plan(manifest)``
    the work items still to do, as small JSON-able dicts;
``compute(pipe, items)``
    a pure function from items to results (PNG or safetensors bytes, or an
    error message); it runs on the local pipeline or on remote workers;
``record(manifest, result)``
    run by the driver only: writes the result atomically, then appends its
    manifest line.

A result depends only on its item and the model, never on the batch it was
computed in or on the worker that computed it. That is what makes resumed,
re-batched and distributed runs byte-identical. Float results are not
batch-invariant by themselves: oneDNN picks its convolution kernels by batch
size and thread count, and a last-bit difference flips a rounded pixel now and
then (measured: 2 of 64 samples differed between batch 16 on 2 threads and
batch 5 on 1 thread). So every forward pass runs on exactly ``MICRO_BATCH``
images, padding the last one by repetition. At a fixed batch of 16, outputs
were bit-identical for 1 and 2 threads and any order of the images (measured
on the bundled model at 64 and 256 pixels), because oneDNN then splits the
work across the batch rather than inside one image's sums. A rerun reads the manifest and
skips finished items; inputs that failed are recorded with their error and
tried again on the next run.
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from hvae.data.images import find_images, load_image
from hvae.errors import HVAEError

MANIFEST = "manifest.jsonl"
MICRO_BATCH = 16


def in_micro_batches(items: list, fn) -> list:
    """``fn(items) -> per-item outputs``, always called on exactly ``MICRO_BATCH`` items."""
    outputs = []
    for start in range(0, len(items), MICRO_BATCH):
        chunk = items[start : start + MICRO_BATCH]
        padded = chunk + [chunk[-1]] * (MICRO_BATCH - len(chunk))
        outputs += list(fn(padded))[: len(chunk)]
    return outputs


# ---------------------------------------------------------------- the manifest
def read_manifest(path: Path) -> list[dict]:
    """Records of a manifest; a last line cut short by a crash is dropped (its item is redone)."""
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
            if number == len(lines):
                break
            raise HVAEError(f"{path}: line {number} is not valid JSON") from None
    return records


class Manifest:
    """Append-only JSONL log of finished items in ``folder``.

    ``settings`` (model fingerprint, seed, edits, ...) go into every line, and
    a folder written with other settings is refused rather than silently mixed.
    """

    def __init__(self, folder: Path, settings: dict[str, Any], key: str):
        self.folder, self.settings, self.key = Path(folder), settings, key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / MANIFEST
        self.latest: dict[Any, dict] = {}
        for record in read_manifest(self.path):
            theirs = {name: record.get(name) for name in settings}
            if theirs != settings:
                described = ", ".join(f"{k} {v}" for k, v in theirs.items())
                raise HVAEError(
                    f"{self.folder} holds results made with other settings ({described}); "
                    "use a new output folder"
                )
            self.latest[record[key]] = record
        self._file = None

    def finished(self, item: Any, output_field: str = "file") -> bool:
        record = self.latest.get(item)
        return (
            record is not None
            and record.get("status", "ok") == "ok"
            and (self.folder / record[output_field]).exists()
        )

    def append(self, record: dict) -> None:
        if self._file is None:
            self._file = self.path.open("a")
        record = {self.key: record.pop(self.key)} | record | self.settings
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.latest[record[self.key]] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_atomically(path: Path, data: bytes) -> None:
    """Readers never see a half-written file: write a temporary name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class InputImage:
    name: str  # output name: the path relative to the folder it was found in, without suffix
    path: str


def list_inputs(inputs: list[str]) -> list[InputImage]:
    """Files and folders (recursive) -> named inputs; two inputs that would share an output name are refused."""
    found = []
    for item in inputs:
        root = Path(item)
        for path in find_images([root]):
            relative = path.relative_to(root) if root.is_dir() else Path(path.name)
            found.append(InputImage(relative.with_suffix("").as_posix(), str(path.resolve())))
    by_name = defaultdict(list)
    for image in found:
        by_name[image.name].append(image.path)
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        name, paths = next(iter(clashes.items()))
        raise HVAEError(
            f"{len(clashes)} output name(s) would be written twice, e.g. {name!r} from {', '.join(paths)}; "
            "rename the inputs or process them separately"
        )
    if not found:
        raise HVAEError(f"no images found in {', '.join(inputs)}")
    return found


def load_all(items: list[dict]) -> tuple[dict[tuple[int, int], list], list[dict]]:
    """Load items' images grouped by size (a batch holds one size); failures become error results."""
    by_size: dict[tuple[int, int], list] = defaultdict(list)
    errors = []
    for item in items:
        try:
            image = load_image(item["path"])
        except HVAEError as error:
            errors.append({"item": item["item"], "data": None, "error": str(error)})
            continue
        by_size[image.size].append((item, image))
    return by_size, errors


# ---------------------------------------------------------------- the jobs
class BatchJob:
    """What every job has: a manifest key, a progress label, ``total`` items, and ``record``
    for successful results (``drive`` records failures, the same way for every job)."""

    key = "input"
    description = ""
    total = 0
    pipeline = "HVAEPipeline"  # the class in ``pipelines`` that computes this job

    def record(self, manifest: Manifest, result: dict) -> None:
        raise NotImplementedError

    def finish(self, manifest: Manifest) -> None:
        """Called once after the last result (a job that buffers writes flushes here)."""


class GenerateJob(BatchJob):
    """``n`` prior samples; image ``i`` depends only on (seed, i, temperature, model)."""

    key = "index"
    description = "generating"

    def __init__(
        self,
        n: int,
        out_dir: Path,
        seed: int,
        temperature: float,
        prior: str,
        sampler: str,
    ):
        if n < 1:
            raise HVAEError(f"-n must be positive, got {n}")
        self.n, self.out_dir, self.seed, self.temperature = (
            n,
            Path(out_dir),
            seed,
            temperature,
        )
        # ``sampler`` names the prior actually drawn from (pipe.sampler_id), so a resumed run
        # cannot mix samples of two priors.
        self.prior, self.sampler = prior, sampler
        self.total = n

    def settings(self, fingerprint: str) -> dict:
        return {
            "seed": self.seed,
            "temperature": self.temperature,
            "model": fingerprint,
            "sampler": self.sampler,
        }

    def plan(self, manifest: Manifest) -> list[dict]:
        return [{"item": i} for i in range(self.n) if not manifest.finished(i)]

    def compute(self, pipe, items: list[dict]) -> list[dict]:
        indices = [item["item"] for item in items]
        images = in_micro_batches(
            indices,
            lambda chunk: pipe.sample(
                len(chunk),
                temperature=self.temperature,
                seed=self.seed,
                indices=chunk,
                prior=self.prior,
            ),
        )
        return [
            {"item": index, "data": png_bytes(image), "error": None}
            for index, image in zip(indices, images, strict=True)
        ]

    def record(self, manifest: Manifest, result: dict) -> None:
        from pipelines.hvae_pipeline import image_seed

        index = result["item"]
        name = f"sample_{index:06d}.png"
        write_atomically(self.out_dir / name, result["data"])
        manifest.append({"index": index, "file": name, "image_seed": image_seed(self.seed, index)})


class PngPerInputJob(BatchJob):
    """A job that writes one PNG per input, at the input's relative name under ``out_dir``."""

    out_dir: Path

    def record(self, manifest: Manifest, result: dict) -> None:
        name = f"{result['item']}.png"
        write_atomically(self.out_dir / name, result["data"])
        manifest.append({"input": result["item"], "status": "ok", "file": name})


class EditJob(PngPerInputJob):
    """Every input image with the same edits applied; the output keeps the input's relative path."""

    description = "editing"

    def __init__(
        self,
        inputs: list[str],
        out_dir: Path,
        edits: dict[str, float],
        keep: list[str] | None = None,
    ):
        self.inputs, self.out_dir = list_inputs(inputs), Path(out_dir)
        self.edits, self.keep = dict(edits), sorted(keep or [])
        self.total = len(self.inputs)

    def settings(self, fingerprint: str) -> dict:
        return {"edits": self.edits, "keep": self.keep, "model": fingerprint}

    def plan(self, manifest: Manifest) -> list[dict]:
        return [
            {"item": image.name, "path": image.path}
            for image in self.inputs
            if not manifest.finished(image.name)
        ]

    def compute(self, pipe, items: list[dict]) -> list[dict]:
        by_size, results = load_all(items)
        for group in by_size.values():
            edited = in_micro_batches(
                [image for _, image in group],
                lambda chunk: pipe(chunk, edits=self.edits, keep=self.keep),
            )
            for (item, _), image in zip(group, edited, strict=True):
                results.append({"item": item["item"], "data": png_bytes(image), "error": None})
        return results


class EncodeJob(BatchJob):
    """Latent codes of every input, written as safetensors shards of one image size each.

    A shard holds ``group_<i>`` tensors and the ``detail`` the latents leave out
    (one row per image; see ``HVAEPipeline.encode``), and JSON metadata
    (names, image and feature size, model fingerprint). The manifest says which
    shard and row hold each input, and is the index that ``DecodeJob`` reads:
    a shard orphaned by a crash is never referenced, so it is harmless.
    """

    description = "encoding"

    def __init__(self, inputs: list[str], out_dir: Path, shard_size: int = 256):
        self.inputs, self.out_dir, self.shard_size = (
            list_inputs(inputs),
            Path(out_dir),
            shard_size,
        )
        self.total = len(self.inputs)
        self._pending: dict[tuple, list[dict]] = defaultdict(list)
        self._fingerprint = ""

    def settings(self, fingerprint: str) -> dict:
        self._fingerprint = fingerprint
        return {"model": fingerprint}

    def plan(self, manifest: Manifest) -> list[dict]:
        return [
            {"item": image.name, "path": image.path}
            for image in self.inputs
            if not manifest.finished(image.name, output_field="shard")
        ]

    def compute(self, pipe, items: list[dict]) -> list[dict]:
        from safetensors.torch import save

        by_size, results = load_all(items)
        for group in by_size.values():
            per_image = in_micro_batches([image for _, image in group], partial(_encode_rows, pipe))
            for (item, _), (tensors, sizes) in zip(group, per_image, strict=True):
                results.append(
                    {
                        "item": item["item"],
                        "data": save(tensors, metadata=sizes),
                        "error": None,
                    }
                )
        return results

    def record(self, manifest: Manifest, result: dict) -> None:
        from safetensors.torch import load

        tensors, metadata = load(result["data"]), _safetensors_metadata(result["data"])
        size_key = (metadata["image_size"], metadata["feature_size"])
        self._pending[size_key].append({"item": result["item"], "tensors": tensors})
        if len(self._pending[size_key]) >= self.shard_size:
            self._write_shard(manifest, size_key)

    def finish(self, manifest: Manifest) -> None:
        for size_key in list(self._pending):
            self._write_shard(manifest, size_key)

    def _write_shard(self, manifest: Manifest, size_key: tuple) -> None:
        from safetensors.torch import save

        rows = self._pending.pop(size_key)
        if not rows:
            return
        existing = [int(p.stem.split("-")[1]) for p in self.out_dir.glob("codes-*.safetensors")]
        name = f"codes-{max(existing, default=-1) + 1:05d}.safetensors"
        tensors = {
            key: torch.cat([row["tensors"][key] for row in rows]) for key in rows[0]["tensors"]
        }
        metadata = {
            "names": json.dumps([row["item"] for row in rows]),
            "image_size": size_key[0],
            "feature_size": size_key[1],
            "fingerprint": self._fingerprint,
        }
        write_atomically(self.out_dir / name, save(tensors, metadata=metadata))
        for index, row in enumerate(rows):
            manifest.append({"input": row["item"], "status": "ok", "shard": name, "row": index})


class DecodeJob(PngPerInputJob):
    """Images from the codes folder that ``EncodeJob`` wrote (its manifest is the index)."""

    description = "decoding"

    def __init__(self, codes_dir: Path, out_dir: Path):
        self.codes_dir, self.out_dir = Path(codes_dir), Path(out_dir)
        manifest_path = self.codes_dir / MANIFEST
        if not self.codes_dir.is_dir() or not manifest_path.exists():
            raise HVAEError(
                f"{codes_dir}: not a codes folder written by 'hvae encode' (no {MANIFEST})"
            )
        latest = {r["input"]: r for r in read_manifest(manifest_path) if "input" in r}
        self.entries = [r for r in latest.values() if r.get("status") == "ok"]
        self.total = len(self.entries)
        self.fingerprints = {r.get("model") for r in self.entries}
        self._shards: dict[str, dict] = {}

    def settings(self, fingerprint: str) -> dict:
        if self.fingerprints - {fingerprint}:
            raise HVAEError(
                f"{self.codes_dir} was encoded by model {', '.join(sorted(map(str, self.fingerprints)))}, "
                f"but the given model is {fingerprint}"
            )
        return {"model": fingerprint}

    def plan(self, manifest: Manifest) -> list[dict]:
        return [
            {
                "item": e["input"],
                "shard": str(self.codes_dir / e["shard"]),
                "row": e["row"],
            }
            for e in self.entries
            if not manifest.finished(e["input"])
        ]

    def compute(self, pipe, items: list[dict]) -> list[dict]:
        results = []
        by_shard: dict[str, list[dict]] = defaultdict(list)
        for item in items:
            by_shard[item["shard"]].append(item)
        for shard, group in by_shard.items():
            tensors, metadata = self._read_shard(shard)
            decode_rows = partial(_decode_rows, pipe, tensors, metadata)
            images = in_micro_batches([item["row"] for item in group], decode_rows)
            for item, image in zip(group, images, strict=True):
                results.append({"item": item["item"], "data": png_bytes(image), "error": None})
        return results

    def _read_shard(self, shard: str) -> tuple[dict, dict]:
        if shard not in self._shards:
            from safetensors import safe_open

            try:
                with safe_open(shard, "pt") as f:
                    self._shards[shard] = (
                        {key: f.get_tensor(key) for key in f.keys()},
                        f.metadata() or {},
                    )
            except Exception as error:  # noqa: BLE001 - safetensors raises several types
                raise HVAEError(f"{shard}: unreadable codes shard ({error})") from None
        return self._shards[shard]


def _encode_rows(pipe, images: list) -> list[tuple[dict, dict]]:
    """One image size per call -> per image: its latents (``group_<i>``), its ``detail``, and sizes."""
    codes = pipe.encode(images)
    sizes = {
        "image_size": json.dumps(list(codes.image_size)),
        "feature_size": json.dumps(list(codes.feature_size)),
    }
    rows = []
    for row in range(len(images)):
        tensors = {f"group_{i}": z[row : row + 1] for i, z in enumerate(codes.latents)}
        tensors["detail"] = codes.detail[row : row + 1]
        rows.append(({k: v.contiguous().cpu() for k, v in tensors.items()}, sizes))
    return rows


def _decode_rows(pipe, tensors: dict, metadata: dict, rows: list[int]) -> list[Image.Image]:
    from hvae.model import HVAECodes

    index = torch.tensor(rows)
    n_groups = sum(key.startswith("group_") for key in tensors)
    codes = HVAECodes(
        latents=[tensors[f"group_{i}"][index].to(pipe.device) for i in range(n_groups)],
        feature_size=tuple(json.loads(metadata["feature_size"])),
        image_size=tuple(json.loads(metadata["image_size"])),
        detail=tensors["detail"][index] if "detail" in tensors else None,
    )
    return pipe.decode(codes)


def _safetensors_metadata(data: bytes) -> dict:
    header_length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_length]).get("__metadata__", {})


# ---------------------------------------------------------------- running
@dataclass
class JobSummary:
    done: int
    already_done: int
    failures: list[tuple[str, str]]  # (item, error)
    manifest: Path


def open_manifest(job, fingerprint: str) -> Manifest:
    return Manifest(job.out_dir, job.settings(fingerprint), job.key)


def run_job(job, pipe, batch_size: int = 16) -> JobSummary:
    """Run ``job`` on the local pipeline, ``batch_size`` items per compute call."""
    manifest = open_manifest(job, pipe.fingerprint())
    items = job.plan(manifest)
    chunks = (items[start : start + batch_size] for start in range(0, len(items), batch_size))
    results = (result for chunk in chunks for result in job.compute(pipe, chunk))
    return drive(job, manifest, len(items), results)


def drive(job, manifest: Manifest, todo: int, results) -> JobSummary:
    """Record results as they arrive (from any executor); the driver alone writes files."""
    total = job.total
    failures = []
    try:
        with tqdm(
            total=total, initial=total - todo, desc=job.description, dynamic_ncols=True
        ) as progress:
            for result in results:
                if result["error"] is None:
                    job.record(manifest, result)
                else:
                    failures.append((result["item"], result["error"]))
                    manifest.append(
                        {job.key: result["item"], "status": "error", "error": result["error"]}
                    )
                progress.update(1)
            job.finish(manifest)
    finally:
        manifest.close()
    return JobSummary(todo - len(failures), total - todo, failures, manifest.path)
