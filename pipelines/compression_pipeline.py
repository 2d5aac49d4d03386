"""``HVAECompressionPipeline``: images <-> ``.hvz`` archives, entropy-coded under the HVAE.

Like ``HVAEPipeline`` it composes a stage-1 diffusers autoencoder with a
``HierarchicalVAE``; here the HVAE is a rate-conditioned entropy model
(``rate_conditioned=True``). The quality level picks the quantization step of
the stage-1 features: one model serves every level (see ``hvae.entropy``).

Every image is computed on its own (batch 1) and on one thread, in both
directions. That costs speed (one core) and buys decodes that are
bit-identical whatever the batch size or thread count (see ``one_thread``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

# archive_info is re-exported from its old home until every caller imports hvae.archive_info.
from hvae.archive_info import archive_info, bits_per_pixel  # noqa: F401
from hvae.autoencoder import FeatureAutoencoder
from hvae.batch import list_inputs, load_all, png_bytes
from hvae.codec import (
    STEP,
    VERSION,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    DamagedRecord,
    Record,
    split_payload,
)
from hvae.codec_settings import (
    DEFAULT_QUALITY,
    DEFAULT_REFINE_STEPS,
    QUALITY_LEVELS,
    check_refine_steps,
    check_tune,
)
from hvae.data.images import FLATTENED_ALPHA, as_rgb, pad_to_multiple, to_pil, to_tensor
from hvae.entropy import decode_symbols, encode_symbols, pack, symbol_bits
from hvae.errors import HVAEError
from hvae.fingerprint import fingerprint
from hvae.model import HierarchicalVAE
from hvae.refine import refine_features
from hvae.safe_io import (
    ONE_PATH_ERRNOS,
    OutputPaths,
    check_image_size,
    printable,
    safe_relative_name,
    sigterm_as_interrupt,
    write_file,
)
from hvae.training import resolve_precision
from pipelines.hvae_pipeline import cached_stage1, load_pipeline_folder

# Quantization step of the (unit-variance) stage-1 features for quality 1..8.
# Chosen so that the levels span about 0.1 to 0.9 bpp on the held-out photos
# (python benchmarks/quality_steps.py); 0.1 is the smallest step the bundled
# entropy model was trained for. Each record stores its step, so this table
# can change without breaking old archives.
QUALITY_STEPS = (1.6, 1.1, 0.75, 0.5, 0.34, 0.23, 0.15, 0.1)
if len(QUALITY_STEPS) != QUALITY_LEVELS:  # the CLI offers QUALITY_LEVELS without importing torch
    raise ImportError("QUALITY_STEPS and hvae.codec_settings.QUALITY_LEVELS disagree")
_STEP = STEP  # benchmarks/decode_split.py and refine_tuning.py import this name
# The entropy model's arithmetic per format version. Encoder and decoder must snap every
# std to the same table entry; where their sums differ in the last bits (another thread
# count, CPU or GPU), float32 moved a std across a table boundary often enough to break
# 9 of 80 held-out streams (1 thread against 2), float64 none of them
# (python benchmarks/scale_flips.py). Version 1 archives were coded in float32.
CODING_DTYPES = {1: torch.float32, 2: torch.float64}


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside the block.

    Measured on the bundled photo model: 1 and 2 threads compute one image's sums
    differently (oneDNN splits them per thread count), enough to flip a rounded
    pixel now and then, and in float32 to desynchronise 9 of 80 streams (see
    ``CODING_DTYPES``). Coding and decoding on one thread make the output
    bit-identical whatever the caller's thread setting, at the cost of the second core.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Photo pipelines bundled before the present one, by fingerprint: a commit that holds each.
EARLIER_BUNDLED_PHOTO = {
    "69e016d9e4d60fce": "b249f10",
    "7c9bd8e5fc245c90": "613ec61",
    "f236d76c2a475c97": "8190f46",
}


def earlier_bundled_hint(fingerprint: str) -> str:
    """How to get the model back, when an archive names one this project once bundled."""
    commit = EARLIER_BUNDLED_PHOTO.get(fingerprint)
    if commit is None:
        return ""
    return (
        f". It is the photo pipeline this project bundled at commit {commit}: from a clone, "
        f"`mkdir old && git archive {commit} checkpoints/photo | tar -x -C old`, "
        "then pass --model old/checkpoints/photo"
    )


def quality_step(quality: int) -> float:
    if not isinstance(quality, int) or not 1 <= quality <= len(QUALITY_STEPS):
        raise HVAEError(
            f"quality must be an integer from 1 to {len(QUALITY_STEPS)}, got {quality!r}"
        )
    return QUALITY_STEPS[quality - 1]


@dataclass
class CompressionSummary:
    images: int = 0  # in the archive, resumed ones included
    bytes: int = 0
    pixels: int = 0
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # compressed, but not quite as given
    resumed: int = 0  # images kept from the .partial file of an interrupted run

    def add(self, record: Record, size: int) -> None:
        self.images += 1
        self.bytes += size
        self.pixels += record.width * record.height

    @property
    def bpp(self) -> float | None:
        return bits_per_pixel(self.bytes, self.pixels)


@dataclass
class DecompressionSummary:
    written: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # not decoded or not written, and why
    renamed: list[str] = field(default_factory=list)  # "NAME -> PATH": another took its path
    complete: bool = True  # False when the archive had no valid index (cut short)


@dataclass
class CompressJob:
    """The pure compute step of ``compress_files``: items ({item: name, path}) -> record bodies.
    It runs in this process or on Ray workers (``hvae.distributed.map_on_ray``)."""

    quality: int
    refine_steps: int = DEFAULT_REFINE_STEPS
    tune: str = "psnr"
    pipeline = "HVAECompressionPipeline"

    def compute(self, pipe: HVAECompressionPipeline, items: list[dict]) -> list[dict]:
        by_size, results = load_all(items)
        for group in by_size.values():
            for item, image in group:
                result = {"item": item["item"], "data": None, "error": None, "warning": None}
                try:
                    payload = pipe.encode_image(
                        image, self.quality, refine_steps=self.refine_steps, tune=self.tune
                    )
                    record = Record(item["item"], image.height, image.width, self.quality, payload)
                    result["data"] = record.encode()
                except HVAEError as error:
                    result["error"] = f"{item['path']}: {error}"
                if image.info.get(FLATTENED_ALPHA):
                    result["warning"] = (
                        f"{item['path']}: transparent pixels were composited onto white"
                    )
                results.append(result)
        return results


class HVAECompressionPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "hvae->autoencoder"

    def __init__(self, autoencoder, hvae: HierarchicalVAE):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, hvae=hvae)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> HVAECompressionPipeline:
        pipe = load_pipeline_folder(
            super().from_pretrained, pretrained_model_name_or_path, **kwargs
        )
        if not getattr(pipe.hvae.config, "rate_conditioned", False):
            raise HVAEError(
                f"{pretrained_model_name_or_path}: its hvae is not an entropy model "
                "(trained with `hvae train-codec`), so it cannot compress"
            )
        return pipe

    @property
    def stage1(self) -> FeatureAutoencoder:
        return cached_stage1(self)

    def coding_model(self, version: int = VERSION) -> HierarchicalVAE:
        """The entropy model in the arithmetic of format ``version`` (a cached copy when that is
        not the loaded dtype, rebuilt if ``hvae`` is replaced or moved; after changing its
        weights in place, reload the pipeline)."""
        if version not in CODING_DTYPES:
            raise HVAEError(f"no entropy-model arithmetic for format version {version}")
        dtype = CODING_DTYPES[version]
        if self.hvae.dtype == dtype:
            return self.hvae
        cache = self.__dict__.setdefault("_coding_models", {})
        cached = cache.get(dtype)
        if cached is None or cached[0] is not self.hvae or cached[1].device != self.hvae.device:
            # ModelMixin.to warns that casting may skip layers meant to stay float32; the
            # HVAE has none, and every layer must compute in the coding dtype.
            cast = torch.nn.Module.to(copy.deepcopy(self.hvae), dtype)
            cache[dtype] = cached = (self.hvae, cast.eval())
        return cached[1]

    def fingerprint(self) -> str:
        return fingerprint(self.autoencoder, self.hvae)

    # ------------------------------------------------------------ one image
    @property
    def pixel_multiple(self) -> int:
        """Images are padded to a multiple of this: stage 1's stride times the HVAE's own."""
        return self.stage1.stride * self.hvae.feature_multiple

    def features_of(self, image: Image.Image) -> torch.Tensor:
        """Stage-1 features of one image, padded to what both models need (replicated edges)."""
        return self.stage1.encode(pad_to_multiple(to_tensor([image]), self.pixel_multiple))

    def feature_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the coded features of an image of ``size``, padded as
        ``features_of`` pads it."""
        multiple = self.pixel_multiple
        return tuple(-(-side // multiple) * (multiple // self.stage1.stride) for side in size)

    @torch.no_grad()
    def encode_image(
        self,
        image: Image.Image,
        quality: int = DEFAULT_QUALITY,
        return_bits: bool = False,
        refine_steps: int = DEFAULT_REFINE_STEPS,
        tune: str = "psnr",
    ):
        """One image -> its payload: the quantization step, then the ANS bitstream. With
        ``return_bits``, also the -log2 p the model assigns to the coded symbols (the ideal size).
        ``refine_steps`` iterations of ``hvae.refine.refine_features`` choose the features
        (0: stage 1's own), minimising bits and MSE, or (1 - MS-SSIM) with ``tune="ms-ssim"``;
        decoders need not know, the payload is the same kind either way."""
        step = _STEP.unpack(_STEP.pack(quality_step(quality)))[0]  # exactly what decode reads
        check_refine_steps(refine_steps)
        check_tune(tune)
        # Refused here with the limit every decoder applies, so no archive holds what none decodes.
        check_image_size(image.width, image.height, self.pixel_multiple)
        image = as_rgb(image)
        with one_thread():
            # The search runs on one thread too, although no decoder repeats it: on 2 cores it
            # was only 1.3x faster on two, and one thread keeps an archive the same whatever
            # the thread count or Ray layout that wrote it. It still depends on the machine
            # (bf16 where fast); any of its archives decodes anywhere the model does.
            features = self.features_of(image)
            if refine_steps:
                on_gpu = self.stage1.device.type == "cuda"
                features = refine_features(
                    self.stage1,
                    self.hvae,
                    features,
                    to_tensor([image]).to(self.stage1.device),
                    step,
                    refine_steps,
                    bf16=resolve_precision("auto", on_gpu=on_gpu) == "bf16",
                    tune=tune,
                )
            chunks, _ = encode_symbols(self.coding_model(), features, step)
        clamped = sum(c.clamped for c in chunks)
        if clamped:
            warnings.warn(
                f"{clamped} symbols were outside the coder's range and were clamped", stacklevel=2
            )
        payload = _STEP.pack(step) + pack(chunks)
        if return_bits:
            return payload, sum(symbol_bits(c.symbols, c.indexes) for c in chunks)
        return payload

    @torch.no_grad()
    def decode_image(
        self, payload: bytes, size: tuple[int, int], version: int = VERSION
    ) -> Image.Image:
        """Payload and original (height, width) -> the decoded image; ``version`` is the format
        version of the archive it came from (it sets the entropy model's arithmetic). A size
        over the limits (``check_image_size``, at this model's padding) is refused before
        anything is allocated, as is a payload that is not a step and a stream."""
        step, stream = split_payload(payload)
        try:
            check_image_size(size[1], size[0], self.pixel_multiple)
        except HVAEError as error:
            raise DamagedRecord(str(error)) from None
        with one_thread():
            try:
                features = decode_symbols(
                    self.coding_model(version), stream, step, self.feature_size(size)
                )
            except (ValueError, RuntimeError, OverflowError) as error:
                raise DamagedRecord(f"undecodable bitstream ({error})") from None
            return to_pil(self.stage1.decode(features, size))[0]

    # ------------------------------------------------------------ in memory
    def compress(
        self,
        images: Image.Image | Sequence[Image.Image],
        quality: int = DEFAULT_QUALITY,
        names: Sequence[str] | None = None,
        refine_steps: int = DEFAULT_REFINE_STEPS,
        tune: str = "psnr",
    ) -> bytes:
        """Images -> the bytes of an ``.hvz`` archive holding them (named image-00000, ... by default)."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        names = list(names) if names is not None else [f"image-{i:05d}" for i in range(len(images))]
        if len(names) != len(images):
            raise HVAEError(f"{len(names)} names for {len(images)} images")
        buffer = io.BytesIO()
        with ArchiveWriter(buffer, self.fingerprint()) as writer:
            for name, image in zip(names, images, strict=True):
                payload = self.encode_image(image, quality, refine_steps=refine_steps, tune=tune)
                writer.add(Record(name, image.height, image.width, quality, payload))
        return buffer.getvalue()

    def decompress(self, data: bytes) -> list[Image.Image]:
        """Archive bytes -> images, in order; any damaged record raises."""
        reader = self.open_archive(data)
        images = []
        for _, record in reader.records():
            if isinstance(record, DamagedRecord):
                raise record
            images.append(
                self.decode_image(record.payload, (record.height, record.width), reader.version)
            )
        return images

    def open_archive(self, source: str | Path | bytes) -> ArchiveReader:
        """Open an archive and refuse it, naming both fingerprints, if another model wrote it."""
        reader = ArchiveReader(source)
        mine = self.fingerprint()
        if reader.fingerprint != mine:
            raise ArchiveError(
                f"{reader.path} was written by model {reader.fingerprint}, but this model is {mine}; "
                "decode it with the model that wrote it (see `hvae info`)"
                + earlier_bundled_hint(reader.fingerprint)
            )
        return reader

    # ------------------------------------------------------------ files
    def compress_files(
        self,
        inputs: Iterable[str],
        out: str | Path,
        quality: int = DEFAULT_QUALITY,
        progress: bool = True,
        compute: Callable | None = None,
        refine_steps: int = DEFAULT_REFINE_STEPS,
        tune: str = "psnr",
        overwrite: bool = False,
    ) -> CompressionSummary:
        """Files and folders (recursive) -> one archive, records in input order. Unreadable
        files are skipped and reported; if none is left, nothing is written (``HVAEError``).
        An existing ``out`` is refused before any work unless ``overwrite``.

        Each record is flushed as it finishes, and SIGTERM stops the run as Ctrl-C does, so an
        interrupted run leaves ``out.partial`` holding every finished image. Rerunning the
        same command continues it (``summary.resumed`` images kept); a ``.partial`` of
        another model, quality or set of inputs is refused, never truncated.
        ``compute(job, items)`` yields the job's results from elsewhere
        (``hvae.distributed.map_on_ray``); by default this process computes them."""
        quality_step(quality)
        check_refine_steps(refine_steps)
        check_tune(tune)
        out = Path(out)
        summary = CompressionSummary()
        items = []
        for image in list_inputs(list(inputs)):
            name = image.name + Path(image.path).suffix
            try:
                safe_relative_name(name)
            except HVAEError as error:
                summary.skipped.append(
                    f"{printable(image.path)}: not a name an archive can hold ({error})"
                )
                continue
            items.append({"item": name, "path": image.path})
        job = CompressJob(quality, refine_steps, tune)
        with (
            sigterm_as_interrupt(),
            ArchiveWriter(out, self.fingerprint(), overwrite=overwrite, resume=True) as writer,
        ):
            items = _items_left(writer, items, quality, summary)
            if compute is None:
                results = (result for item in items for result in job.compute(self, [item]))
            else:
                results = compute(job, items) if items else []
            bar = tqdm(
                total=len(items),
                desc="compressing",
                unit="img",
                disable=not progress,
                dynamic_ncols=True,
            )
            with contextlib.closing(bar):
                for done in _in_input_order(results, items):
                    bar.update()
                    if done.get("warning"):
                        summary.warnings.append(done["warning"])
                    if done["error"] is not None:
                        summary.skipped.append(done["error"])
                        continue
                    record = Record.decode(done["data"])
                    summary.add(record, writer.add(record))
                    bar.set_postfix(bpp=f"{summary.bpp:.3f}")
            if not summary.images:
                reasons = "; ".join(summary.skipped[:3])
                raise HVAEError(
                    f"none of the inputs could be compressed, so {out} was not written: {reasons}"
                )
        return summary

    def decompress_archive(
        self,
        archive: str | Path,
        out_dir: str | Path,
        only: Sequence[str] | None = None,
        progress: bool = True,
        overwrite: bool = False,
    ) -> DecompressionSummary:
        """Archive -> PNG files under ``out_dir``; damaged records are named and skipped.

        Every name was checked when the archive was parsed (``safe_relative_name``: nothing
        outside ``out_dir``). Two records that would write one file (compared ignoring case)
        do not overwrite each other: the later gets ``-2``, ``-3``... (``summary.renamed``).
        Existing files are refused before anything is decoded, unless ``overwrite``; names
        missing from ``only`` too."""
        reader = self.open_archive(archive)
        summary = DecompressionSummary(complete=reader.complete)
        plan = _output_plan(reader, Path(out_dir), only, summary)
        if not overwrite:
            existing = [str(target) for _, target in plan if os.path.lexists(target)]
            if existing:
                raise HVAEError(
                    f"{len(existing)} of the outputs exist already, e.g. {existing[0]}; "
                    "choose another folder or overwrite them (--force)"
                )
        bar = tqdm(plan, desc="decompressing", unit="img", disable=not progress, dynamic_ncols=True)
        for record, target in bar:
            try:
                image = self.decode_image(
                    record.payload, (record.height, record.width), reader.version
                )
                write_file(target, png_bytes(image), overwrite=overwrite)
            except DamagedRecord as error:
                summary.damaged.append(f"{printable(record.name)}: {error}")
                continue
            except OSError as error:
                if error.errno not in ONE_PATH_ERRNOS:
                    raise HVAEError(f"cannot write {target}: {error.strerror}") from None
                summary.damaged.append(
                    f"{printable(record.name)}: cannot write {printable(str(target))}: "
                    f"{error.strerror}"
                )
                continue
            summary.written.append(str(target))
        return summary


def _items_left(
    writer: ArchiveWriter, items: list[dict], quality: int, summary: CompressionSummary
) -> list[dict]:
    """The items still to compress once the records an interrupted run left in ``writer``'s
    ``.partial`` file are counted in; that file must come from the same inputs and quality
    (other settings, such as refine steps, are not stored and are the caller's to keep)."""
    names = {item["item"] for item in items}
    for record, size in writer.resumed:
        if record.name not in names or record.quality != quality:
            raise HVAEError(
                f"{writer.partial} holds {printable(record.name)!r} at quality {record.quality}, "
                f"left by an interrupted run with other inputs or quality: rerun that command to "
                "finish it, decode it as it is (hvae decompress), or delete it to start again"
            )
        summary.add(record, size)
    summary.resumed = len(writer.resumed)
    done = {record.name for record, _ in writer.resumed}
    return [item for item in items if item["item"] not in done]


def _in_input_order(results: Iterable[dict], items: list[dict]) -> Iterable[dict]:
    """Results as workers finish them (in any order) -> in the items' order, so that an
    archive's record order does not depend on how the work was split."""
    position = {item["item"]: i for i, item in enumerate(items)}
    waiting: dict[int, dict] = {}
    next_index = 0
    for result in results:
        waiting[position[result["item"]]] = result
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1


def _output_plan(
    reader: ArchiveReader, out_dir: Path, only: Sequence[str] | None, summary: DecompressionSummary
) -> list[tuple[Record, Path]]:
    """(record, output path) for each record to decode; damaged records go to ``summary``."""
    wanted = set(only) if only else None
    plan, found, paths = [], set(), OutputPaths()
    for _, record in reader.records():
        if isinstance(record, DamagedRecord):
            summary.damaged.append(str(record))
            continue
        if wanted is not None and record.name not in wanted:
            continue
        found.add(record.name)
        own = PurePosixPath(record.name).with_suffix(".png")
        try:
            target = paths.claim(own)
        except HVAEError as error:
            summary.damaged.append(f"{printable(record.name)}: {error}")
            continue
        if target != own:
            summary.renamed.append(f"{printable(record.name)} -> {printable(str(target))}")
        plan.append((record, out_dir.joinpath(*target.parts)))
    if wanted is not None and wanted - found:
        missing = sorted(wanted - found)
        raise HVAEError(f"not in the archive (or damaged): {', '.join(missing)}")
    return plan
