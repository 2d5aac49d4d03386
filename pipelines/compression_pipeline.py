"""``HVAECompressionPipeline``: images <-> ``.hvz`` archives, entropy-coded under the HVAE.

Like ``HVAEPipeline`` it composes a stage-1 diffusers autoencoder with a
``HierarchicalVAE``; here the HVAE is a rate-conditioned entropy model
(``rate_conditioned=True``). The quality level picks the quantization step of
the stage-1 features: one model serves every level (see ``hvae.entropy``).

Every image is computed on its own (batch 1), and every tile of its features on
one thread, in both directions; tiles run side by side on the cores torch is
given. Decodes are bit-identical whatever the batch size or thread count (see
``hvae.entropy.one_thread``), and memory is bounded by the tiles, not the image.
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
from hvae.batch_base import list_inputs, load_all, png_bytes
from hvae.codec import (
    STEP,
    TILED_VERSION,
    VERSION,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    DamagedRecord,
    Record,
    coding_tiles,
    join_tiles,
    split_payload,
    split_tiles,
)
from hvae.codec_settings import (
    DEFAULT_QUALITY,
    DEFAULT_REFINE_STEPS,
    QUALITY_LEVELS,
    check_refine_steps,
    check_tune,
)
from hvae.data.images import FLATTENED_ALPHA, as_rgb
from hvae.entropy import (
    decode_symbols,
    decode_tiles,
    encode_symbols,
    on_threads,
    one_thread,  # noqa: F401  (benchmarks import it from here)
    pack,
    symbol_bits,
)
from hvae.errors import HVAEError
from hvae.fingerprint import fingerprint
from hvae.model import HierarchicalVAE
from hvae.refine import refine_tile
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
from pipelines.common import cached_stage1, load_pipeline_folder

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
CODING_DTYPES = {1: torch.float32, 2: torch.float64, 3: torch.float64}
# The side, in feature cells, of the tiles that format 3 codes alone (a record stores it).
# On the bundled photo model, 64 (512 pixels; the entropy model was trained on crops of
# 32 to 64) made files 1-16 % smaller than whole images, 128 and 256 less so, and halved
# the coding time (python benchmarks/large_images.py --only tiled-rate).
CODING_TILE = 64


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
    coding_tile = CODING_TILE  # what encode_image writes; decoders read any (codec.MAX_TILE_SIDE)

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
        """Stage-1 features of one image, padded to what both models need (replicated edges),
        computed tile by tile (``FeatureAutoencoder.encode``)."""
        return self.stage1.encode([image], multiple=self.pixel_multiple)

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
        """One image -> its payload: the quantization step, then the tiles of ``coding_tile``
        feature cells, each coded alone (format version 3). With ``return_bits``, also the
        -log2 p the model assigns to the coded symbols (the ideal size of the streams).
        ``refine_steps`` iterations of ``hvae.refine.refine_tile`` choose each tile's
        features (0: stage 1's own), minimising bits and MSE, or (1 - MS-SSIM) with
        ``tune="ms-ssim"``; decoders need not know, the payload is the same kind either way.
        Tiles are computed side by side, one per torch thread the caller allows, each on
        one thread, so the payload is the same whatever the thread count."""
        step = _STEP.unpack(_STEP.pack(quality_step(quality)))[0]  # exactly what decode reads
        check_refine_steps(refine_steps)
        check_tune(tune)
        # Refused here with the limit every decoder applies, so no archive holds what none decodes.
        check_image_size(image.width, image.height, self.pixel_multiple)
        image = as_rgb(image)
        workers = torch.get_num_threads()
        with one_thread():
            features = self.features_of(image)
            payload, bits, clamped = self.encode_features(
                features, image, step, refine_steps, tune, workers
            )
        if clamped:
            warnings.warn(
                f"{clamped} symbols were outside the coder's range and were clamped", stacklevel=2
            )
        return (payload, bits) if return_bits else payload

    def encode_features(
        self,
        features: torch.Tensor,
        image: Image.Image,
        step: float,
        refine_steps: int,
        tune: str = "psnr",
        workers: int = 1,
    ) -> tuple[bytes, float, int]:
        """``features_of(image)`` -> (payload, -log2 p of its symbols, symbols clamped), the
        tiles coded on ``workers`` threads: ``encode_image`` after stage 1, for callers that
        time its parts."""
        align = self.hvae.feature_multiple
        side = max(align, self.coding_tile // align * align)
        model = self.coding_model()
        # The search depends on the machine (bf16 where fast); any of its archives decodes
        # anywhere the model does.
        bf16 = resolve_precision("auto", on_gpu=self.stage1.device.type == "cuda") == "bf16"

        def code(tile: tuple[int, int, int, int]) -> tuple[bytes, float, int]:
            top, bottom, left, right = tile
            part = features[..., top:bottom, left:right]
            if refine_steps:
                part = refine_tile(
                    self.stage1, self.hvae, image, features, tile, step, refine_steps,
                    bf16=bf16, tune=tune,
                )  # fmt: skip
            chunks, _ = encode_symbols(model, part, step)
            bits = sum(symbol_bits(c.symbols, c.indexes) for c in chunks)
            return pack(chunks), bits, sum(c.clamped for c in chunks)

        tiles = coding_tiles(tuple(features.shape[-2:]), side, align)
        coded = list(on_threads(code, tiles, workers))
        payload = _STEP.pack(step) + join_tiles(side, [stream for stream, _, _ in coded])
        return payload, sum(bits for _, bits, _ in coded), sum(n for _, _, n in coded)

    @torch.no_grad()
    def decode_image(
        self, payload: bytes, size: tuple[int, int], version: int = VERSION
    ) -> Image.Image:
        """Payload and original (height, width) -> the decoded image; ``version`` is the format
        version of the archive it came from (it sets the entropy model's arithmetic, and
        whether the features come in tiles). A size over the limits (``check_image_size``,
        at this model's padding) is refused before anything is allocated, as is a payload
        that is not a step and a stream, or not the tiles that the size needs."""
        workers = torch.get_num_threads()
        with one_thread():
            features = self.decode_features(payload, size, version, workers)
            return self.stage1.decode_pil(features, size)[0]

    def decode_features(
        self, payload: bytes, size: tuple[int, int], version: int = VERSION, workers: int = 1
    ) -> torch.Tensor:
        """``decode_image`` before stage 1: the features, tiles decoded on ``workers`` threads."""
        step, coded = split_payload(payload)
        feature_size = self.feature_size(size)
        try:
            check_image_size(size[1], size[0], self.pixel_multiple)
            tiles = self._tiles_of(coded, feature_size) if version >= TILED_VERSION else None
        except HVAEError as error:
            raise DamagedRecord(str(error)) from None
        model = self.coding_model(version)
        try:
            if tiles is None:
                return decode_symbols(model, coded, step, feature_size)
            return decode_tiles(model, tiles[1], step, tiles[0], workers)
        except (ValueError, RuntimeError, OverflowError) as error:
            raise DamagedRecord(f"undecodable bitstream ({error})") from None

    def _tiles_of(self, coded: bytes, feature_size: tuple[int, int]) -> tuple[list, list[bytes]]:
        """(tile bounds, streams) of a version-3 payload, or ``HVAEError`` when it does not hold
        the tiles that ``feature_size`` needs: found from the lengths, before any decoding."""
        side, streams = split_tiles(coded)
        align = self.hvae.feature_multiple
        if side % align:
            raise HVAEError(f"tile side {side} is not a multiple of this model's {align}")
        tiles = coding_tiles(feature_size, side, align)
        if len(streams) != len(tiles):
            height, width = feature_size
            raise HVAEError(
                f"{len(streams)} tiles of {side} cells, where {height}x{width} features need "
                f"{len(tiles)}"
            )
        return tiles, streams

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
