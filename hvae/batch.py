"""Resumable batch jobs over many images: generate, edit, encode and decode.

Every job is split in three, so that one piece of logic serves a single process
and a Ray cluster (``hvae.distributed``) alike:

``plan(manifest)``
    the work items still to do, as small JSON-able dicts;
``compute(pipe, items)``
    a pure function from items to results (PNG or safetensors bytes, or an
    error message); it runs on the local pipeline or on remote workers, and
    yields each result as soon as its forward pass is done, so that the
    progress bar moves per image rather than per unit of work;
``record(manifest, result)``
    run by the driver only: appends the result's manifest line, then writes
    its file atomically. In that order a kill never leaves an output that no
    line claims (which a rerun would have to refuse as someone else's); a
    line whose file is missing just means its item is redone.

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
work across the batch rather than inside one image's sums. Images over
``ALONE_ABOVE_PIXELS`` run in passes of one instead (16 copies of a 24 MP photo
would not fit in memory): the rule goes by size alone, so such an image always
takes that way, whatever else the job holds. Alone, a result can depend on the
thread count; edits by feature flows (stage 1 and the flow, no stage 2) did not,
on the bundled photo-edit model: 1 and 2 threads, alone and two at a time gave
the same bits at 1600x1200. A rerun reads the manifest and
skips finished items; inputs that failed are recorded with their error and
tried again on the next run.

Outputs are safe to write into a shared folder: names read from a codes
folder must be plain relative paths (``safe_relative_name``), no two items of
a job write one file, files are written without following symlinks
(``write_file``), and a file already in the way that this job did not write
(another job's output, or an input) is refused before any work, unless the job
was made with ``overwrite=True``. A job is its kind and settings (model,
seed, edits...): a rerun of the same job resumes in its folder, any other is
refused there. The manifest, the naming of inputs and the driver that records
results are in ``hvae.batch_base``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from hvae.batch_base import (
    MANIFEST,
    BatchJob,
    JobSummary,
    Manifest,
    PngPerInputJob,
    drive,
    failed_result,
    group_results,
    in_micro_batches,
    list_inputs,
    pending_inputs,
    per_input_image,
    png_bytes,
    read_manifest,
    refuse_shared_outputs,
    runs_alone,
    start_job,
)
from hvae.errors import HVAEError
from hvae.safe_io import MAX_LATENT_PIXELS, check_image_size, printable, safe_relative_name
from hvae.seeds import image_seed


class GenerateJob(BatchJob):
    """``n`` prior samples; image ``i`` depends only on (seed, i, temperature, model)."""

    kind = "generate"
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
        overwrite: bool = False,
    ):
        if n < 1:
            raise HVAEError(f"-n must be positive, got {n}")
        self.n, self.out_dir, self.seed = n, Path(out_dir), seed
        self.temperature, self.overwrite = temperature, overwrite
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

    def output_of(self, item: dict) -> str:
        return f"sample_{item['item']:06d}.png"

    def compute(self, pipe, items: list[dict]) -> Iterator[dict]:
        images = in_micro_batches(
            [item["item"] for item in items],
            lambda chunk: pipe.sample(
                len(chunk),
                temperature=self.temperature,
                seed=self.seed,
                indices=chunk,
                prior=self.prior,
            ),
        )
        yield from group_results(items, images, png_bytes)

    def record(self, manifest: Manifest, result: dict) -> None:
        index = result["item"]
        name = self.output_of(result)
        manifest.append({"index": index, "file": name, "image_seed": image_seed(self.seed, index)})
        self.write(name, result["data"])


class EditJob(PngPerInputJob):
    """Every input image with the same edits applied; the output keeps the input's relative
    path. Two inputs with one output name are refused before any work (``list_inputs``)."""

    kind = "edit"
    description = "editing"

    def __init__(
        self,
        inputs: list[str],
        out_dir: Path,
        edits: dict[str, float],
        keep: list[str] | None = None,
        overwrite: bool = False,
    ):
        self.inputs, self.out_dir = list_inputs(inputs), Path(out_dir)
        self.edits, self.keep = dict(edits), sorted(keep or [])
        self.total, self.overwrite = len(self.inputs), overwrite

    def settings(self, fingerprint: str) -> dict:
        return {"edits": self.edits, "keep": self.keep, "model": fingerprint}

    def plan(self, manifest: Manifest) -> list[dict]:
        return pending_inputs(self.inputs, manifest)

    def compute(self, pipe, items: list[dict]) -> Iterator[dict]:
        def edit(chunk):
            return pipe(chunk, edits=self.edits, keep=self.keep)

        yield from per_input_image(pipe, items, edit, png_bytes)


class EncodeJob(BatchJob):
    """Latent codes of every input, written as safetensors shards of one image size each.

    A shard holds ``group_<i>`` tensors and the ``detail`` the latents leave out
    (one row per image; see ``HVAEPipeline.encode``), and JSON metadata
    (names, image and feature size, model fingerprint). The manifest says which
    shard and row hold each input, and is the index that ``DecodeJob`` reads:
    a shard orphaned by a crash is never referenced, so it is harmless.
    """

    kind = "encode"
    output_field = "shard"
    description = "encoding"

    def __init__(
        self, inputs: list[str], out_dir: Path, shard_size: int = 256, overwrite: bool = False
    ):
        self.inputs, self.out_dir = list_inputs(inputs), Path(out_dir)
        self.shard_size, self.overwrite = shard_size, overwrite
        self.total = len(self.inputs)
        self._pending: dict[tuple, list[dict]] = defaultdict(list)
        self._fingerprint = ""

    def settings(self, fingerprint: str) -> dict:
        self._fingerprint = fingerprint
        return {"model": fingerprint}

    def plan(self, manifest: Manifest) -> list[dict]:
        return pending_inputs(self.inputs, manifest)

    def compute(self, pipe, items: list[dict]) -> Iterator[dict]:
        # Over MAX_LATENT_PIXELS, pipe.encode refuses each image, saying why.
        yield from per_input_image(pipe, items, partial(_encode_rows, pipe), bytes)

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
        numbers = [
            re.fullmatch(r"codes-(\d+)\.safetensors", p.name) for p in self.out_dir.iterdir()
        ]
        name = f"codes-{max((int(m[1]) for m in numbers if m), default=-1) + 1:05d}.safetensors"
        tensors = {
            key: torch.cat([row["tensors"][key] for row in rows]) for key in rows[0]["tensors"]
        }
        metadata = {
            "names": json.dumps([row["item"] for row in rows]),
            "image_size": size_key[0],
            "feature_size": size_key[1],
            "fingerprint": self._fingerprint,
        }
        for index, row in enumerate(rows):
            manifest.append({"input": row["item"], "status": "ok", "shard": name, "row": index})
        self.write(name, save(tensors, metadata=metadata))


class DecodeJob(PngPerInputJob):
    """Images from the codes folder that ``EncodeJob`` wrote (its manifest is the index).

    Every name, shard and row read from the codes folder is checked: one that would write
    outside ``out_dir`` or read outside the codes folder fails its item, and the rest go on;
    names whose outputs would be one file refuse the job before any work."""

    kind = "decode"
    description = "decoding"

    def __init__(self, codes_dir: Path, out_dir: Path, overwrite: bool = False):
        self.codes_dir, self.out_dir = Path(codes_dir), Path(out_dir)
        self.overwrite = overwrite
        manifest_path = self.codes_dir / MANIFEST
        if not self.codes_dir.is_dir() or not manifest_path.exists():
            raise HVAEError(
                f"{codes_dir}: not a codes folder written by 'hvae encode' (no {MANIFEST})"
            )
        latest = {}
        for record in read_manifest(manifest_path):
            if "input" in record:
                name = record["input"]
                latest[name if isinstance(name, str) else repr(name)] = record
        self.entries = [
            self._entry(name, r) for name, r in latest.items() if r.get("status") == "ok"
        ]
        refuse_shared_outputs(
            (e["item"], f"{e['item']!r} in {manifest_path}") for e in self.entries if not e["error"]
        )
        self.total = len(self.entries)
        self.fingerprints = {r.get("model") for r in latest.values() if r.get("status") == "ok"}
        self._shards: dict[str, tuple[dict, tuple, tuple]] = {}

    def _entry(self, name: str, record: dict) -> dict:
        """The work item of a codes-manifest line: its error, if the line names no plain
        relative name, no shard inside the codes folder, or no row."""
        entry = {"item": name, "shard": "", "row": 0, "error": None}
        shard, row = record.get("shard"), record.get("row")
        try:
            if not isinstance(record["input"], str):
                raise HVAEError(f"{printable(name)}: not a name")
            safe_relative_name(name)
            if not isinstance(shard, str):
                raise HVAEError(f"no shard named for {printable(name)!r}")
            entry["shard"] = str(self.codes_dir.joinpath(*safe_relative_name(shard).parts))
            if not isinstance(row, int) or isinstance(row, bool) or row < 0:
                raise HVAEError(f"{printable(repr(row))} is not a row of {printable(shard)}")
            entry["row"] = row
        except HVAEError as error:
            entry["error"] = f"{self.codes_dir / MANIFEST}: {error}"
        return entry

    def settings(self, fingerprint: str) -> dict:
        if self.fingerprints - {fingerprint}:
            raise HVAEError(
                f"{self.codes_dir} was encoded by model {', '.join(sorted(map(str, self.fingerprints)))}, "
                f"but the given model is {fingerprint}"
            )
        return {"model": fingerprint}

    def plan(self, manifest: Manifest) -> list[dict]:
        return [e for e in self.entries if not manifest.finished(e["item"])]

    def compute(self, pipe, items: list[dict]) -> Iterator[dict]:
        by_shard: dict[str, list[dict]] = defaultdict(list)
        for item in items:
            if item["error"]:
                yield failed_result(item, item["error"])
            else:
                by_shard[item["shard"]].append(item)
        for shard, group in by_shard.items():
            try:
                tensors, image_size, feature_size = self._read_shard(shard, pipe)
            except HVAEError as error:
                yield from (failed_result(item, error) for item in group)
                continue
            held = len(tensors["group_0"])
            yield from (
                failed_result(item, f"{shard}: holds {held} rows, not row {item['row']}")
                for item in group
                if item["row"] >= held
            )
            group = [item for item in group if item["row"] < held]
            decode_rows = partial(_decode_rows, pipe, tensors, image_size, feature_size)
            alone = runs_alone(image_size, pipe.pixel_multiple)
            images = in_micro_batches([item["row"] for item in group], decode_rows, alone)
            yield from group_results(group, images, png_bytes)

    def _read_shard(self, shard: str, pipe) -> tuple[dict, tuple, tuple]:
        if shard not in self._shards:
            from safetensors import safe_open

            try:
                with safe_open(shard, "pt") as f:
                    tensors, metadata = {key: f.get_tensor(key) for key in f.keys()}, f.metadata()
            except Exception as error:  # noqa: BLE001 - safetensors raises several types
                raise HVAEError(f"{shard}: unreadable codes shard ({error})") from None
            try:
                sizes = _shard_sizes(tensors, metadata or {}, pipe.stage1.stride)
            except HVAEError as error:
                raise HVAEError(f"{shard}: not a codes shard of this model ({error})") from None
            self._shards[shard] = (tensors, *sizes)
        return self._shards[shard]


def _shard_sizes(tensors: dict, metadata: dict, stride: int) -> tuple[tuple, tuple]:
    """A shard's (image size, feature size), checked against its tensors and, before any
    pixel is decoded, against the size limit of latent codes."""
    try:
        image_size, feature_size = (
            tuple(json.loads(metadata[key])) for key in ("image_size", "feature_size")
        )
    except (KeyError, TypeError, ValueError):
        raise HVAEError("no image and feature size in its metadata") from None
    for size in (image_size, feature_size):
        if len(size) != 2 or not all(type(side) is int and side > 0 for side in size):
            raise HVAEError(f"{size} is not a size")
    rows = {len(t) for key, t in tensors.items() if key == "detail" or key.startswith("group_")}
    if "group_0" not in tensors or len(rows) != 1:
        raise HVAEError("its latent groups do not hold one row per image")
    if "detail" in tensors and tuple(tensors["detail"].shape[-2:]) != feature_size:
        raise HVAEError(f"its detail is not of the feature size {feature_size}")
    decoded = tuple(side * stride for side in feature_size)
    if any(i > d for i, d in zip(image_size, decoded, strict=True)):
        raise HVAEError(f"image size {image_size} is larger than its features decode to")
    check_image_size(decoded[1], decoded[0], max_pixels=MAX_LATENT_PIXELS)
    return image_size, feature_size


def _encode_rows(pipe, images: list) -> list[bytes]:
    """One image size per call -> per image, as safetensors: its latents (``group_<i>``), its
    ``detail``, and its sizes."""
    from safetensors.torch import save

    codes = pipe.encode(images)
    sizes = {
        "image_size": json.dumps(list(codes.image_size)),
        "feature_size": json.dumps(list(codes.feature_size)),
    }
    rows = []
    for row in range(len(images)):
        tensors = {f"group_{i}": z[row : row + 1] for i, z in enumerate(codes.latents)}
        tensors["detail"] = codes.detail[row : row + 1]
        rows.append(save({k: v.contiguous().cpu() for k, v in tensors.items()}, metadata=sizes))
    return rows


def _decode_rows(
    pipe, tensors: dict, image_size: tuple, feature_size: tuple, rows: list[int]
) -> list[Image.Image]:
    from hvae.model import HVAECodes

    index = torch.tensor(rows)
    n_groups = sum(key.startswith("group_") for key in tensors)
    codes = HVAECodes(
        latents=[tensors[f"group_{i}"][index].to(pipe.device) for i in range(n_groups)],
        feature_size=feature_size,
        image_size=image_size,
        detail=tensors["detail"][index] if "detail" in tensors else None,
    )
    return pipe.decode(codes)


def _safetensors_metadata(data: bytes) -> dict:
    header_length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_length]).get("__metadata__", {})


# ---------------------------------------------------------------- running
def run_job(job, pipe, batch_size: int = 16) -> JobSummary:
    """Run ``job`` on the local pipeline, ``batch_size`` items per compute call."""
    manifest, items = start_job(job, pipe.fingerprint())
    chunks = (items[start : start + batch_size] for start in range(0, len(items), batch_size))
    results = (result for chunk in chunks for result in job.compute(pipe, chunk))
    return drive(job, manifest, len(items), results)
