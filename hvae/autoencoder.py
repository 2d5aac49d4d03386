"""One small interface over any diffusers autoencoder: images <-> feature maps.

``FeatureAutoencoder.encode(images) -> features`` and ``decode(features) -> images``
hide what differs between autoencoder classes: how the latent comes out
(``latent_dist`` or ``latents``), the scaling and shift factors, the stride that
inputs must be padded to, batching, device and dtype.

Images larger than a tile are processed in overlapping tiles (``Tiling``), so memory
is bounded by the tile size, not the image size: each tile reads a halo of context
around its core and only the core's output is kept. With a halo as wide as the
model's receptive field the tiles agree with whole-image processing up to float
rounding; an image that fits in one tile is processed whole, bit for bit as before.
For the whole path to stay bounded, give ``encode`` PIL images (converted tile by
tile; ``multiple`` pads them as ``pad_to_multiple`` would) and decode with
``decode_pil``: neither makes a float copy of a whole image.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from PIL import Image

from hvae import patch_autoencoder
from hvae.codec import even_splits
from hvae.data.images import to_pil, to_tensor
from hvae.errors import HVAEError

# Our own autoencoder classes, looked up after diffusers' by config class name.
LOCAL_CLASSES = {"PatchAutoencoder": patch_autoencoder.PatchAutoencoder}


def autoencoder_class(class_name: str) -> type:
    cls = LOCAL_CLASSES.get(class_name) or getattr(diffusers, class_name, None)
    if cls is None or not issubclass(cls, diffusers.ModelMixin):
        raise HVAEError(f"'{class_name}' is not a diffusers autoencoder class this package knows")
    return cls


def _read_config(path: str | Path, subfolder: str | None) -> dict:
    local = Path(path) / (subfolder or "")
    if Path(path).exists():
        config_file = local / "config.json"
        if not config_file.is_file():
            raise HVAEError(f"{local}: not a model folder (no config.json)")
        try:
            return json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise HVAEError(f"{config_file}: invalid JSON ({error})") from None
    # Not a local path: treat it as a hub id (needs a network or a filled cache).
    from huggingface_hub import hf_hub_download

    try:
        config_file = hf_hub_download(str(path), "config.json", subfolder=subfolder)
    except Exception as error:  # noqa: BLE001 - hub errors come in many types
        raise HVAEError(
            f"{path}: no such folder, and not loadable from the hub ({error})"
        ) from None
    return json.loads(Path(config_file).read_text())


def load_autoencoder(
    path: str | Path, subfolder: str | None = None, **kwargs
) -> diffusers.ModelMixin:
    """Load a diffusers autoencoder from a folder or hub id, choosing the class from its config."""
    config = _read_config(path, subfolder)
    class_name = config.get("_class_name")
    if not class_name:
        raise HVAEError(f"{path}: config.json has no _class_name, so the model class is unknown")
    cls = autoencoder_class(class_name)
    try:
        return cls.from_pretrained(str(path), subfolder=subfolder, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise HVAEError(f"{path}: could not load {class_name} ({error})") from None


def _config_value(model, name: str, default):
    value = getattr(model.config, name, None)
    return default if value is None else value


# Halos for models that do not declare their ``receptive_field`` (as PatchAutoencoder
# does): twice the bundled photo autoencoder's. Wider-looking models show seams with them.
FALLBACK_HALOS = (128, 16)


@dataclass(frozen=True)
class Tiling:
    """How ``FeatureAutoencoder`` splits images larger than one tile.

    ``tile``: the side of a tile's core in image pixels (features: ``tile // stride``).
    ``encode_halo``: pixels of context read on each side of a core when encoding
    (rounded up to the stride). ``decode_halo``: feature positions of context when
    decoding. A halo at least as wide as the model's receptive field makes tiles agree
    with whole-image processing up to float rounding. None (the default) takes the
    model's ``receptive_field`` when it declares one, else ``FALLBACK_HALOS``; models
    with attention (``AutoencoderKL``'s mid-block) see the whole image, and no halo
    makes their tiles exact.
    """

    # At their receptive field (64 px encoding, 11 features decoding) the bundled photo
    # autoencoder's tiles match whole images bit for bit, on 1 and 2 threads, also on a
    # 13 MP photo; 48 px and 10 features are 1e-3 and 0.01 levels off. The tile: at
    # 24 MP, 512 / 1024 / 2048 px tiles raise the peak RSS by about 0.2 / 0.4 / 0.6 GB
    # and take 2.2 / 1.1 / 0.9 CPU s per MP to encode (whole images 0.8, and 3.9 GB),
    # 3.5 / 1.8 / 1.5 to decode (python benchmarks/large_images.py --only stage1).
    tile: int = 1024
    encode_halo: int | None = None
    decode_halo: int | None = None

    def __post_init__(self):
        for name in ("tile", "encode_halo", "decode_halo"):
            value = getattr(self, name)
            if value is None and name != "tile":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise HVAEError(f"tiling {name} must be a whole number >= 0, got {value!r}")
        if self.tile == 0:
            raise HVAEError("tiling tile must be positive; pass tiling=None to turn tiling off")


DEFAULT_TILING = Tiling()


def _replicated(start: int, end: int, length: int) -> tuple[int, int, int]:
    """Positions [start, end) of a side of ``length`` padded by repeating its last position:
    the real positions [first, last) to read, and how many copies of the last one follow."""
    first = min(start, length - 1)
    last = max(first + 1, min(end, length))
    return first, last, (end - start) - (last - first)


def tile_spans(
    length: int, core: int, halo: int, align: int = 1
) -> list[tuple[int, int, int, int]]:
    """Split ``[0, length)`` into near-equal cores of at most ``core`` positions that start on
    multiples of ``align`` (``core`` and ``halo`` must be multiples of it, ``length`` too
    unless the last core may end off the grid). Each span is ``(start, end, read_start,
    read_end)``: the core and the core widened by ``halo``, clipped to ``[0, length)``."""
    # Equal shares rather than full tiles and a sliver: a sliver would cost a whole halo.
    bounds = even_splits(length, core, align)
    return [
        (start, end, max(0, start - halo), min(length, end + halo))
        for start, end in itertools.pairwise(bounds)
    ]


class FeatureAutoencoder:
    """Stage 1: images (PIL, or tensors in [-1, 1]) <-> scaled feature maps.

    ``features = (latents - shift_factor) * scaling_factor``, as diffusers
    pipelines do, so stage 2 sees roughly unit-scale inputs. Images larger than
    ``tiling.tile`` are encoded and decoded in tiles (see ``Tiling``); ``tiling=None``
    processes every image whole.
    """

    def __init__(
        self,
        model: diffusers.ModelMixin,
        batch_size: int = 16,
        bf16: bool = False,
        tiling: Tiling | None = DEFAULT_TILING,
    ):
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.bf16 = bf16
        self.tiling = tiling
        self.scaling_factor = float(_config_value(model, "scaling_factor", 1.0))
        self.shift_factor = float(_config_value(model, "shift_factor", 0.0))
        self._stride: int | None = getattr(model, "spatial_stride", None)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, subfolder: str | None = None, **kwargs
    ) -> FeatureAutoencoder:
        return cls(load_autoencoder(path, subfolder), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def stride(self) -> int:
        """Spatial downsampling factor; probed once when the class does not declare it."""
        if self._stride is None:
            probe = torch.zeros(1, 3, 64, 64, device=self.device, dtype=self.dtype)
            with torch.inference_mode():
                self._stride = 64 // self._latents(probe).shape[-1]
        return self._stride

    @property
    def latent_channels(self) -> int:
        return int(_config_value(self.model, "latent_channels", 4))

    def _autocast(self, bf16: bool | None = None):
        if self.bf16 if bf16 is None else bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.model.encode(pixels)
        if hasattr(output, "latent_dist"):
            return output.latent_dist.mode()  # deterministic: the mean, not a sample
        if hasattr(output, "latents"):
            return output.latents
        return output[0]

    def _as_tensor(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise HVAEError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
            return images
        if isinstance(images, Image.Image):
            images = [images]
        return to_tensor(list(images))

    # ------------------------------------------------------------ tiling
    @property
    def decode_halo(self) -> int:
        """Feature positions of context that decoding a region needs on each side to match
        whole-image decoding: the tiling's ``decode_halo``, else the model's receptive field."""
        tiling = self.tiling or Tiling()
        if tiling.decode_halo is not None:
            return tiling.decode_halo
        return (getattr(self.model, "receptive_field", None) or FALLBACK_HALOS)[1]

    def _tile_grid(self, in_features: bool) -> tuple[int, int, int]:
        """(core, halo, align) of the tiles, in feature positions (decoding) or pixels
        (encoding, where tiles must start on the stride); without tiling, one core larger
        than any image."""
        stride, tiling = self.stride, self.tiling
        if tiling is None:
            return sys.maxsize, 0, 1 if in_features else stride
        if in_features:
            return max(1, tiling.tile // stride), self.decode_halo, 1
        declared = getattr(self.model, "receptive_field", None) or FALLBACK_HALOS
        halo = declared[0] if tiling.encode_halo is None else tiling.encode_halo
        core = max(stride, tiling.tile // stride * stride)
        return core, -(-halo // stride) * stride, stride

    def _tiles(
        self,
        count: int,
        size: tuple[int, int],
        read: Callable[[slice, int, int, int, int], torch.Tensor],
        run: Callable[[torch.Tensor], torch.Tensor],
        scale: Fraction,
        grid: tuple[int, int, int],
    ) -> Iterator[tuple[slice, slice, slice, torch.Tensor]]:
        """``run`` on every batch of ``batch_size`` of ``count`` images and every tile of their
        (height, width) = ``size`` grid, where ``read(batch, top, bottom, left, right)`` fetches
        a tile's input and an output position spans ``scale`` input positions. Yields (batch,
        output rows, output columns, the core's output). An image no larger than a core is
        one tile: the whole image, computed as without tiling."""
        core, halo, align = grid
        if max(size) <= core:
            core, halo = max(size), 0
        rows = tile_spans(size[0], core, halo, align)
        columns = tile_spans(size[1], core, halo, align)
        for start in range(0, count, self.batch_size):
            batch = slice(start, min(count, start + self.batch_size))
            for top, bottom, read_top, read_bottom in rows:
                for left, right, read_left, read_right in columns:
                    result = run(read(batch, read_top, read_bottom, read_left, read_right))
                    kept = result[
                        ...,
                        int((top - read_top) * scale) : int((bottom - read_top) * scale),
                        int((left - read_left) * scale) : int((right - read_left) * scale),
                    ]
                    output_rows = slice(int(top * scale), int(bottom * scale))
                    output_columns = slice(int(left * scale), int(right * scale))
                    yield batch, output_rows, output_columns, kept

    @staticmethod
    def _assembled(tiles: Iterator, count: int, size: tuple[int, int]) -> torch.Tensor:
        """The tiles of ``_tiles`` in one (count, C, *size) tensor."""
        output = None
        for batch, rows, columns, tile in tiles:
            if output is None:
                # Made here, outside inference mode: callers may train on the output. In the
                # layout the model returned (channels last, on CPU): later convolutions sum
                # in another order on another layout, and one tile must be bit-identical.
                layout = torch.channels_last if tile.stride(1) == 1 else torch.contiguous_format
                output = torch.empty(
                    (count, tile.shape[1], *size),
                    dtype=tile.dtype,
                    device=tile.device,
                    memory_format=layout,
                )
            output[batch, :, rows, columns] = tile
        return output

    # ------------------------------------------------------------ encode
    def _encode_tile(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            latents = self._latents(pixels)
            return (latents.float() - self.shift_factor) * self.scaling_factor

    def encode(
        self, images: Sequence[Image.Image] | torch.Tensor, multiple: int | None = None
    ) -> torch.Tensor:
        """Images -> features (N, C, ceil(H/m)*m/stride, ceil(W/m)*m/stride), float32 on the
        model's device, where the images are padded to a multiple m of the stride
        (``multiple``, default the stride itself) by repeating their last row and column.
        PIL images are converted tile by tile: no float copy of a whole image is made."""
        stride = self.stride
        multiple = multiple or stride
        if multiple % stride:
            raise HVAEError(
                f"images can be padded to multiples of the stride {stride}, not {multiple}"
            )
        count, (height, width), region = self._pixel_regions(images)

        def read(batch, top, bottom, left, right):
            # Replicate edges: zero borders would show up as dark frames after decoding.
            first_row, last_row, pad_h = _replicated(top, bottom, height)
            first_column, last_column, pad_w = _replicated(left, right, width)
            tile = region(batch, first_row, last_row, first_column, last_column)
            tile = tile.to(self.device, self.dtype)
            if pad_h or pad_w:
                tile = F.pad(tile, (0, pad_w, 0, pad_h), mode="replicate")
            return tile

        padded = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
        tiles = self._tiles(
            count,
            padded,
            read,
            self._encode_tile,
            Fraction(1, stride),
            self._tile_grid(in_features=False),
        )
        with torch.no_grad():
            return self._assembled(tiles, count, (padded[0] // stride, padded[1] // stride))

    def _pixel_regions(self, images) -> tuple[int, tuple[int, int], Callable]:
        """(count, (height, width), region): ``region(batch, top, bottom, left, right)`` is
        that part of the images as a (n, 3, h, w) tensor in [-1, 1]."""
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, torch.Tensor):
            pixels = self._as_tensor(images)

            def region(batch, top, bottom, left, right):
                return pixels[batch, :, top:bottom, left:right]

            return len(pixels), tuple(pixels.shape[-2:]), region
        images = list(images)
        sizes = sorted({image.size for image in images})
        if len(sizes) != 1:
            raise HVAEError(
                "no images given"
                if not sizes
                else f"images in one batch must share a size, got {sizes}"
            )

        def region(batch, top, bottom, left, right):
            return to_tensor([image.crop((left, top, right, bottom)) for image in images[batch]])

        width, height = sizes[0]
        return len(images), (height, width), region

    # ------------------------------------------------------------ decode
    def _decode_tile(self, features: torch.Tensor, bf16: bool | None = None) -> torch.Tensor:
        latents = features.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        with self._autocast(bf16):
            output = self.model.decode(latents.to(self.dtype))
        sample = output.sample if hasattr(output, "sample") else output[0]
        return sample.float().clamp(-1.0, 1.0)

    def _decoded_tiles(self, features: torch.Tensor, bf16: bool | None = None) -> Iterator:
        """``_tiles`` of decoding. With gradients on, the tiles of an image larger than one are
        recomputed in the backward pass instead of kept, so memory stays bounded there too."""
        size = tuple(features.shape[-2:])
        grid = self._tile_grid(in_features=True)
        recompute = features.requires_grad and max(size) > grid[0]

        def run(tile):
            if not torch.is_grad_enabled():
                with torch.inference_mode():
                    return self._decode_tile(tile, bf16)
            if recompute:
                return torch.utils.checkpoint.checkpoint(
                    self._decode_tile, tile, bf16, use_reentrant=False
                )
            return self._decode_tile(tile, bf16)

        def read(batch, top, bottom, left, right):
            return features[batch, :, top:bottom, left:right]

        return self._tiles(len(features), size, read, run, Fraction(self.stride), grid)

    def decode(
        self, features: torch.Tensor, image_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Features -> images in [-1, 1], cropped to ``image_size`` (H, W) when given."""
        with torch.no_grad():
            images = self.decode_with_grad(features)
        if image_size is not None:
            images = images[..., : image_size[0], : image_size[1]]
        return images

    def decode_with_grad(self, features: torch.Tensor, bf16: bool | None = None) -> torch.Tensor:
        """``decode``, differentiable in the features when gradients are on (for encoder-side
        search); ``bf16`` overrides the wrapper's precision."""
        size = tuple(side * self.stride for side in features.shape[-2:])
        return self._assembled(self._decoded_tiles(features, bf16), len(features), size)

    def decode_pil(
        self, features: torch.Tensor, image_size: tuple[int, int] | None = None
    ) -> list[Image.Image]:
        """``to_pil(decode(features, image_size))``, assembled tile by tile: no float copy of
        a whole image is made."""
        stride = self.stride
        height, width = image_size or (features.shape[-2] * stride, features.shape[-1] * stride)
        canvases = [Image.new("RGB", (width, height)) for _ in range(len(features))]
        with torch.no_grad():
            for batch, rows, columns, tile in self._decoded_tiles(features):
                tile = tile[..., : height - rows.start, : width - columns.start]
                if tile.shape[-2] > 0 and tile.shape[-1] > 0:  # not all padding
                    for canvas, image in zip(canvases[batch], to_pil(tile), strict=True):
                        canvas.paste(image, (columns.start, rows.start))
        return canvases

    def reconstruct(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        _, size, _ = self._pixel_regions(images)
        return self.decode_pil(self.encode(images), size)
