"""``HVAEPipeline``: images -> hierarchical codes -> edits -> images, plus sampling.

The pipeline only composes two models, as diffusers pipelines do: a stage-1
diffusers autoencoder (``autoencoder``) and the stage-2 ``HierarchicalVAE``
(``hvae``). Named edit directions are stored beside them in ``directions/``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from hvae.autoencoder import FeatureAutoencoder
from hvae.data.images import to_pil
from hvae.directions import project_out
from hvae.errors import HVAEError
from hvae.fingerprint import fingerprint
from hvae.model import HierarchicalVAE, HVAECodes

DIRECTIONS_FOLDER = "directions"


@dataclass
class Direction:
    """A vector added to one latent group; ``strength`` 1 adds it once."""

    vector: torch.Tensor
    group: int = 0
    source: str = "user"
    units: str = "vector"


def load_pipeline_folder(load, pretrained_model_name_or_path, **kwargs):
    """``load`` (a DiffusionPipeline.from_pretrained) with our errors: a folder that is not a
    pipeline, or a part that fails to load, is an HVAEError that names the folder."""
    path = Path(pretrained_model_name_or_path)
    if path.exists() and not (path / "model_index.json").is_file():
        raise HVAEError(f"{path}: not a pipeline folder (no model_index.json)")
    try:
        return load(pretrained_model_name_or_path, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HVAEError(
            f"{pretrained_model_name_or_path}: could not load the pipeline ({error})"
        ) from None


def cached_stage1(pipe) -> FeatureAutoencoder:
    """The pipeline's ``FeatureAutoencoder``, one per autoencoder: building it anew on every
    call would re-probe the stride (a forward pass) for classes that do not declare it."""
    cached = getattr(pipe, "_stage1", None)
    if cached is None or cached.model is not pipe.autoencoder:
        cached = pipe._stage1 = FeatureAutoencoder(pipe.autoencoder)
    return cached


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` in a run started with ``seed``: independent of batching."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class HVAEPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "hvae->autoencoder"

    def __init__(self, autoencoder, hvae: HierarchicalVAE):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, hvae=hvae)
        self._directions: dict[str, Direction] = {}

    # ------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> HVAEPipeline:
        path = Path(pretrained_model_name_or_path)
        pipe = load_pipeline_folder(
            super().from_pretrained, pretrained_model_name_or_path, **kwargs
        )
        if path.exists():
            pipe.load_directions(path / DIRECTIONS_FOLDER)
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        self.save_directions(Path(save_directory) / DIRECTIONS_FOLDER)

    def save_directions(self, folder: Path) -> None:
        # Replace, never merge: stale directions of an earlier model must not survive a save.
        shutil.rmtree(folder, ignore_errors=True)
        if not self._directions:
            return
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {name: d.vector.contiguous().cpu() for name, d in self._directions.items()},
            str(folder / "directions.safetensors"),
        )
        (folder / "directions.json").write_text(json.dumps(self.direction_metadata(), indent=2))

    def direction_metadata(self) -> dict[str, dict]:
        """name -> {group, source, units} for every direction (what directions.json stores)."""
        return {
            name: {"group": d.group, "source": d.source, "units": d.units}
            for name, d in sorted(self._directions.items())
        }

    def load_directions(self, folder: Path) -> None:
        if not (folder / "directions.json").is_file():
            return
        vectors = load_file(str(folder / "directions.safetensors"))
        for name, meta in json.loads((folder / "directions.json").read_text()).items():
            if name not in vectors:
                raise HVAEError(f"{folder}: direction {name!r} is listed but has no vector")
            # register_direction checks the vector against this model's group shapes.
            self.register_direction(
                name,
                vectors[name],
                meta["group"],
                meta.get("source", "user"),
                meta.get("units", "vector"),
            )

    # ------------------------------------------------------------ helpers
    @property
    def stage1(self) -> FeatureAutoencoder:
        return cached_stage1(self)

    def fingerprint(self) -> str:
        """Hash of both models' configs and weights: identifies the exact model that made an output."""
        return fingerprint(self.autoencoder, self.hvae)

    # ------------------------------------------------------------ directions
    @property
    def directions(self) -> list[str]:
        return sorted(self._directions)

    def register_direction(
        self,
        name: str,
        vector: torch.Tensor,
        group: int = 0,
        source: str = "user",
        units: str = "vector",
    ) -> None:
        """Make ``name`` editable: ``edit(codes, {name: s})`` adds ``s * vector`` to latent ``group``."""
        groups = self.hvae.latent_groups
        if not 0 <= group < len(groups):
            raise HVAEError(f"group must be in [0, {len(groups) - 1}], got {group}")
        vector = torch.as_tensor(vector, dtype=torch.float32)
        channels = groups[group].z_channels
        if vector.ndim == 1:
            vector = vector[:, None, None]
        if vector.ndim != 3 or vector.shape[0] != channels:
            raise HVAEError(
                f"direction {name!r} must have {channels} channels for group {group}, got shape {tuple(vector.shape)}"
            )
        self._directions[name] = Direction(vector, group, source, units)

    # ------------------------------------------------------------ the user API
    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image] | Image.Image) -> HVAECodes:
        """Images (one size per call) -> codes: every latent group's posterior mean, plus the
        feature detail those means do not reproduce (``codes.detail``)."""
        if isinstance(images, Image.Image):
            images = [images]
        stage1 = self.stage1
        pixels = stage1._as_tensor(list(images))
        features = stage1.encode(pixels).to(self.device)
        self._check_feature_size(features)
        codes = self.hvae.encode(features)
        codes.image_size = (pixels.shape[-2], pixels.shape[-1])
        return codes

    @torch.no_grad()
    def decode(self, codes: HVAECodes, keep_detail: bool = True) -> list[Image.Image]:
        return to_pil(self.decode_tensor(codes, keep_detail))

    @torch.no_grad()
    def decode_tensor(self, codes: HVAECodes, keep_detail: bool = True) -> torch.Tensor:
        """Codes -> images in [-1, 1]. With ``keep_detail`` (the default) the detail kept at
        encoding is added back, so a zero edit returns the stage-1 reconstruction and an edit
        changes only what its latents change; without it, the latents alone are decoded."""
        features = self._features(codes)
        if keep_detail and codes.detail is not None:
            features = features + codes.detail.to(features.device, features.dtype)
        return self.stage1.decode(features, codes.image_size)

    def check_directions(self, names: Sequence[str]) -> None:
        """Raise ``HVAEError`` naming the unknown ones among ``names`` and the known ones."""
        unknown = sorted(set(names) - set(self._directions))
        if unknown:
            known = ", ".join(self.directions) or "none registered"
            raise HVAEError(f"unknown direction(s) {', '.join(unknown)}; known: {known}")

    def edit(
        self,
        codes: HVAECodes,
        edits: dict[str, float],
        keep: Sequence[str] | None = None,
    ) -> HVAECodes:
        """New codes with each named direction added at its strength; ``codes`` is left unchanged.

        ``keep`` names directions whose attributes must not move: each edit's vector is
        projected orthogonally to theirs (in the same group) before it is added. The
        detail kept at encoding is carried over, so it survives the edit.
        """
        self.check_directions([*edits, *(keep or ())])
        edited = codes.clone()
        for name, strength in edits.items():
            direction = self._directions[name]
            held = [
                self._directions[k].vector
                for k in keep or ()
                if k != name and self._directions[k].group == direction.group
            ]
            vector = project_out(direction.vector, held)
            z = edited.latents[direction.group]
            edited.latents[direction.group] = z + float(strength) * vector.to(z.device, z.dtype)
            edited.edited_groups = edited.edited_groups | {direction.group}
        return edited

    def _features(self, codes: HVAECodes) -> torch.Tensor:
        """Stage-2 decode. Below the highest edited group, latents are rebuilt from their
        residuals under the new priors (lower groups keep their residuals, not their values),
        so the detail they carry follows the edit instead of pinning the old content."""
        if not codes.edited_groups or not codes.priors:
            return self.hvae.decode(codes)
        top = min(codes.edited_groups)
        given = list(codes.latents[: top + 1]) + [None] * (len(codes.latents) - top - 1)
        return self.hvae.decode(
            given, feature_size=codes.feature_size, residuals=codes.residuals()[top + 1 :]
        )

    @staticmethod
    def interpolate(start: HVAECodes, end: HVAECodes, t: float) -> HVAECodes:
        """Codes a fraction ``t`` of the way from ``start`` to ``end`` (same sizes): every group's
        latents and the kept detail alike."""
        if start.feature_size != end.feature_size or len(start) != len(end):
            raise HVAEError(
                f"interpolation needs codes of one size and count, got {start.feature_size} x {len(start)} "
                f"and {end.feature_size} x {len(end)}"
            )
        mixed = start.clone()
        mixed.latents = [
            torch.lerp(a, b, t) for a, b in zip(start.latents, end.latents, strict=True)
        ]
        if start.detail is not None and end.detail is not None:
            mixed.detail = torch.lerp(start.detail, end.detail, t)
        return mixed

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        seed: int = 0,
        start: int = 0,
        indices: Sequence[int] | None = None,
        size: tuple[int, int] | None = None,
    ) -> list[Image.Image]:
        """``n`` images from the prior: images ``start`` .. ``start + n - 1`` of the run ``seed``,
        or the images ``indices``. Image ``i`` depends only on (seed, i), never on which others
        are drawn with it. ``size`` (height, width) defaults to the training size."""
        if indices is None:
            if n < 1:
                raise HVAEError(f"n must be positive, got {n}")
            indices = range(start, start + n)
        if temperature < 0:
            raise HVAEError(f"temperature must be non-negative, got {temperature}")
        generators = [
            torch.Generator(self.device).manual_seed(image_seed(seed, i)) for i in indices
        ]
        feature_size = None
        if size is not None:
            stride = self.stage1.stride
            if size[0] % stride or size[1] % stride:
                raise HVAEError(f"sample size {size} must be a multiple of the stride {stride}")
            feature_size = (size[0] // stride, size[1] // stride)
        features = self.hvae.sample(
            len(generators),
            temperature=temperature,
            generator=generators,
            feature_size=feature_size,
        )
        return to_pil(self.stage1.decode(features))

    def __call__(
        self,
        images: Sequence[Image.Image] | Image.Image,
        edits: dict[str, float] | None = None,
        keep: Sequence[str] | None = None,
    ) -> list[Image.Image]:
        codes = self.encode(images)
        return self.decode(self.edit(codes, edits, keep) if edits else codes)

    def _check_feature_size(self, features: torch.Tensor) -> None:
        try:
            self.hvae.check_features(features)
        except ValueError as error:
            stride = self.stage1.stride
            raise HVAEError(
                f"image size does not fit this model: {error} (feature stride {stride})"
            ) from None
