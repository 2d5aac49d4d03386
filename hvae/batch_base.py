"""What every batch job of ``hvae.batch`` stands on: the manifest that makes a job
resumable, naming inputs so that no two outputs are one file, loading images within the
size limit of a forward pass, and the driver that records results as they arrive."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from hvae.data.images import find_images, load_image
from hvae.errors import HVAEError
from hvae.safe_io import (
    ONE_PATH_ERRNOS,
    printable,
    safe_relative_name,
    sigterm_as_interrupt,
    write_file,
)

MANIFEST = "manifest.jsonl"
MICRO_BATCH = 16
# Images over this many pixels (padded to the model's multiple) are computed in passes of
# their own, not MICRO_BATCH at a time: a pass then holds at most 4.2 MP (measured with
# photo-edit, hvae edit, peak RSS: 1.6 GB for 16 x 512^2, 3.5 GB for 16 x 1024^2), and an
# image alone is held to the memory its pipeline's tiles need (24 MP: under 2 GB).
ALONE_ABOVE_PIXELS = 512 * 512
# The manifest is fsynced every this many lines and when the job ends: a process killed any
# time keeps every line (they are flushed as written), a power cut loses at most these.
FSYNC_EVERY = 16


def in_micro_batches(items: list, fn, alone: bool = False) -> Iterator:
    """``fn(items) -> per-item outputs``, always called on exactly ``MICRO_BATCH`` items (the
    last pass padded by repetition), or with ``alone`` on one at a time; yields each pass's
    outputs as soon as it is done."""
    size = 1 if alone else MICRO_BATCH
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        padded = chunk + [chunk[-1]] * (size - len(chunk))
        yield from list(fn(padded))[: len(chunk)]


def runs_alone(size: tuple[int, int], multiple: int) -> bool:
    """Whether images of ``size`` (either order of the sides) are computed in passes of their
    own: over ``ALONE_ABOVE_PIXELS`` once padded to ``multiple``. A size always takes the
    same way, so an image's result never depends on the other inputs of its job."""
    return math.prod(-(-side // multiple) * multiple for side in size) > ALONE_ABOVE_PIXELS


# ---------------------------------------------------------------- the manifest
def read_manifest(path: Path) -> list[dict]:
    """Records of a manifest; a last line cut short by a crash is dropped (its item is redone)."""
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise HVAEError(f"{path}: not a manifest (not UTF-8 text)") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise HVAEError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise HVAEError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def _job_of(record: dict) -> str | None:
    """The job that wrote a manifest line. Lines written before they named it say so by their
    fields; an error line of encode or decode cannot tell, and needs not (its item is redone)."""
    if "job" in record:
        return record["job"]
    for job, field in (("generate", "index"), ("edit", "edits"), ("encode", "shard")):
        if field in record:
            return job
    return "decode" if "file" in record else None


class Manifest:
    """Append-only JSONL log of finished items in ``folder``, one line per item.

    ``settings`` (the job, model fingerprint, seed, edits, ...) go into every line, and a
    folder written by another job or with other settings is refused rather than silently
    mixed. Lines are flushed as written and fsynced every ``FSYNC_EVERY`` lines and at
    ``close``. Nothing is ever removed but a last line cut short by a kill, which
    ``read_manifest`` ignores and which would otherwise glue itself to the next line.
    """

    def __init__(self, folder: Path, settings: dict[str, Any], key: str, output_field: str):
        self.folder, self.settings, self.key = Path(folder), settings, key
        self.output_field = output_field
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / MANIFEST
        self.latest: dict[Any, dict] = {}
        for number, record in enumerate(read_manifest(self.path), 1):
            theirs = {name: record.get(name) for name in settings}
            theirs["job"] = _job_of(record) or settings["job"]
            if theirs != settings:
                described = ", ".join(f"{k} {v}" for k, v in theirs.items())
                raise HVAEError(
                    f"{self.folder} holds results of another job or made with other settings "
                    f"({described}); use a new output folder"
                )
            if not isinstance(record.get(key), str | int):
                raise HVAEError(f"{self.path}: record {number} has no {key!r}")
            self.latest[record[key]] = record
        self._file = None
        self._unsynced = 0

    def finished(self, item: Any) -> bool:
        record = self.latest.get(item)
        if record is None or record.get("status", "ok") != "ok":
            return False
        output = record.get(self.output_field)
        return isinstance(output, str) and (self.folder / output).exists()

    def append(self, record: dict) -> None:
        if self._file is None:
            self._file = _open_for_append(self.path)
        record = {self.key: record.pop(self.key)} | record | self.settings
        if self.latest.get(record[self.key]) == record:
            return  # redone after a kill between its line and its file: the line is there
        self._file.write(json.dumps(record).encode() + b"\n")
        self._file.flush()
        self.latest[record[self.key]] = record
        self._unsynced += 1
        if self._unsynced >= FSYNC_EVERY:
            self._sync()

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._unsynced = 0

    def close(self) -> None:
        if self._file is not None:
            self._sync()
            self._file.close()
            self._file = None


def _open_for_append(path: Path):
    """``path`` opened to append, not following a symlink, without a torn last line."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise HVAEError(f"{path}: is a symlink; a manifest must be a file of its own") from None
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0) if size else b""
    if data and not data.endswith(b"\n"):
        os.ftruncate(fd, data.rfind(b"\n") + 1)
    return os.fdopen(fd, "ab")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- inputs
@dataclass
class InputImage:
    name: str  # output name: the path relative to the folder it was found in, without suffix
    path: str


def list_inputs(inputs: list[str]) -> list[InputImage]:
    """Files and folders (recursive) -> named inputs. A file found twice under one name (given
    alone and inside a given folder) counts once; inputs whose outputs would be one file are
    refused (``refuse_shared_outputs``)."""
    found, seen = [], set()
    for item in inputs:
        root = Path(item)
        for path in find_images([root]):
            relative = path.relative_to(root) if root.is_dir() else Path(path.name)
            image = InputImage(relative.with_suffix("").as_posix(), str(path.resolve()))
            if (image.name, image.path) not in seen:
                seen.add((image.name, image.path))
                found.append(image)
    if not found:
        raise HVAEError(f"no images found in {', '.join(inputs)}")
    refuse_shared_outputs((image.name, image.path) for image in found)
    return found


def _same_file_name(name: str) -> str:
    """``name`` as file systems that ignore case (macOS, Windows) or Unicode normalization
    (macOS) see it: ``X`` and ``x``, a composed and a decomposed ``é``, are one file there."""
    return unicodedata.normalize("NFC", name).casefold()


def refuse_shared_outputs(named: Iterable[tuple[str, str]]) -> None:
    """Refuse a job whose outputs (``NAME.png`` for each (name, source)) would overwrite one
    another: the same name, names that differ only in case or Unicode normalization, or a
    file where another's folder goes. A user expects one output per input, and renumbered
    names (``x-2.png``) would shift as inputs come and go between resumed runs."""
    owners: dict[str, list[str]] = defaultdict(list)
    folders: dict[str, str] = {}
    for name, source in named:
        owners[_same_file_name(f"{name}.png")].append(source)
        for folder in PurePosixPath(name).parents[:-1]:
            folders.setdefault(_same_file_name(str(folder)), source)
    clashes = [sources for sources in owners.values() if len(sources) > 1]
    clashes += [[sources[0], folders[key]] for key, sources in owners.items() if key in folders]
    if clashes:
        raise HVAEError(
            f"{len(clashes)} output name(s) would be written twice, e.g. by "
            f"{' and '.join(printable(s) for s in clashes[0])} (names that differ only in case "
            "are one file on macOS and Windows); rename the inputs or process them separately"
        )


def load_all(
    items: list[dict], multiple: int = 1, max_pixels: int | None = None
) -> tuple[dict[tuple[int, int], list], list[dict]]:
    """Load items' images grouped by size (a batch holds one size); failures become error
    results. Sizes are checked (``check_image_size``, padded to ``multiple``, against
    ``max_pixels``, default ``MAX_PIXELS``) before any pixel is decoded."""
    by_size: dict[tuple[int, int], list] = defaultdict(list)
    errors = []
    for item in items:
        try:
            image = load_image(item["path"], max_pixels=max_pixels, multiple=multiple)
        except HVAEError as error:
            errors.append(failed_result(item, error))
            continue
        by_size[image.size].append((item, image))
    return by_size, errors


def per_input_image(pipe, items: list[dict], fn, to_bytes) -> Iterator[dict]:
    """A result per item whose input image goes through ``fn(images)``: images are loaded
    (``load_all``), grouped by size, and run in micro-batches (or alone, ``runs_alone``)."""
    by_size, errors = load_all(items, pipe.pixel_multiple)
    yield from errors
    for size, group in by_size.items():
        outputs = in_micro_batches(
            [image for _, image in group], fn, runs_alone(size, pipe.pixel_multiple)
        )
        yield from group_results([item for item, _ in group], outputs, to_bytes)


def pending_inputs(inputs: list, manifest: Manifest) -> list[dict]:
    """The planned items of a job over input files: those the manifest has not finished."""
    return [
        {"item": image.name, "path": image.path}
        for image in inputs
        if not manifest.finished(image.name)
    ]


def failed_result(item: dict, error) -> dict:
    return {"item": item["item"], "data": None, "error": str(error)}


def group_results(group: list[dict], outputs: Iterator, to_bytes) -> Iterator[dict]:
    """A result per item of ``group``, from its lazily computed ``outputs``. An ``HVAEError``
    (an image its model cannot take, a damaged codes shard) fails the items left in the
    group with its message, and the job goes on."""
    done = 0
    try:
        for item, output in zip(group, outputs, strict=True):
            yield {"item": item["item"], "data": to_bytes(output), "error": None}
            done += 1
    except HVAEError as error:
        yield from (failed_result(item, error) for item in group[done:])


# ---------------------------------------------------------------- the jobs
class BatchJob:
    """What every job has: its name in the manifest (``kind``), a manifest key, the manifest
    field naming its output, a progress label, ``total`` items, and ``record`` for successful
    results (``drive`` records failures, the same way for every job). ``overwrite`` lets it
    replace files in its way that it did not write."""

    kind = ""
    key = "input"
    output_field = "file"
    description = ""
    total = 0
    pipeline = "HVAEPipeline"  # the class in ``pipelines`` that computes this job
    out_dir: Path
    overwrite = False

    def record(self, manifest: Manifest, result: dict) -> None:
        raise NotImplementedError

    def output_of(self, item: dict) -> str | None:
        """The file a planned item will write, relative to ``out_dir`` (None: a new name)."""
        return None

    def write(self, name: str, data: bytes) -> None:
        path = self.out_dir.joinpath(*safe_relative_name(name).parts)
        write_file(path, data, overwrite=self.overwrite)

    def finish(self, manifest: Manifest) -> None:
        """Called once after the last result, or when the job is stopped (a job that buffers
        writes flushes here)."""


class PngPerInputJob(BatchJob):
    """A job that writes one PNG per input, at the input's relative name under ``out_dir``."""

    def output_of(self, item: dict) -> str | None:
        return None if item.get("error") else f"{item['item']}.png"

    def record(self, manifest: Manifest, result: dict) -> None:
        name = self.output_of(result)
        manifest.append({"input": result["item"], "status": "ok", "file": name})
        self.write(name, result["data"])


# ---------------------------------------------------------------- running
@dataclass
class JobSummary:
    done: int
    already_done: int
    failures: list[tuple[str, str]]  # (item, error), printable
    manifest: Path


def start_job(job, fingerprint: str) -> tuple[Manifest, list[dict]]:
    """``job``'s manifest and the items left to do. Files in the way of those items that the
    job did not write (another job's outputs, the inputs themselves) refuse it before any
    work, unless ``job.overwrite``."""
    settings = {"job": job.kind} | job.settings(fingerprint)
    manifest = Manifest(job.out_dir, settings, job.key, job.output_field)
    items = job.plan(manifest)
    outputs = (job.output_of(item) for item in items)
    in_the_way = [name for name in outputs if name and os.path.lexists(job.out_dir / name)]
    if in_the_way and not job.overwrite:
        shown = ", ".join(printable(name) for name in in_the_way[:3])
        raise HVAEError(
            f"{job.out_dir} already holds {len(in_the_way)} file(s) this job would write but "
            f"did not make (e.g. {shown}): another job's outputs, or the inputs themselves; "
            "use a new output folder, or give --force to overwrite them"
        )
    return manifest, items


def drive(job, manifest: Manifest, todo: int, results) -> JobSummary:
    """Record results as they arrive (from any executor); the driver alone writes files.
    SIGTERM stops it as Ctrl-C does, and however it stops, what it finished is kept:
    buffered results are written (``job.finish``) and the manifest is synced."""
    total = job.total
    failures = []

    def fail(item, error) -> None:
        failures.append((printable(str(item)), printable(str(error))))
        manifest.append({job.key: item, "status": "error", "error": str(error)})

    with sigterm_as_interrupt():
        try:
            with tqdm(
                total=total, initial=total - todo, desc=job.description, dynamic_ncols=True
            ) as progress:
                for result in results:
                    if result["error"] is not None:
                        fail(result["item"], result["error"])
                    else:
                        try:
                            job.record(manifest, result)
                        except HVAEError as error:
                            fail(result["item"], error)
                        except OSError as error:
                            if error.errno not in ONE_PATH_ERRNOS:
                                raise
                            fail(result["item"], f"{error.filename}: {error.strerror}")
                    progress.update(1)
        finally:
            try:
                job.finish(manifest)
            finally:
                manifest.close()
    return JobSummary(todo - len(failures), total - todo, failures, manifest.path)
