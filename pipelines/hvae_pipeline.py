"""``HVAEPipeline``: images -> hierarchical codes -> edits -> images, plus sampling.

The pipeline only composes two models, as diffusers pipelines do: a stage-1
diffusers autoencoder (``autoencoder``) and the stage-2 ``HierarchicalVAE``
(``hvae``). Named edit directions are stored beside them in ``directions/``, and a
prior fitted to the top groups' posteriors, which ``sample`` uses, in ``sample_prior/``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from hvae.autoencoder import FeatureAutoencoder
from hvae.data.images import to_pil
from hvae.directions import (
    DEFAULT_STRENGTH_RANGE,
    DirectionSet,
    FeatureEditor,
    FeatureFlows,
    ModelShapes,
    check_strength,
    flow_features,
    project_out,
    read_direction_sets,
    read_strength_range,
)
from hvae.errors import HVAEError
from hvae.fingerprint import fingerprint
from hvae.latent_prior import FittedPrior
from hvae.model import HierarchicalVAE, HVAECodes
from hvae.safe_io import MAX_LATENT_PIXELS, MAX_PIXELS, check_image_size
from hvae.seeds import image_seed
from pipelines.common import cached_stage1, load_pipeline_folder

DIRECTIONS_FOLDER = "directions"
SAMPLE_PRIOR_FOLDER = "sample_prior"
SAMPLE_PRIORS = ("auto", "fitted", "model")


@dataclass
class Direction:
    """A vector added to one latent group (``strength`` 1 adds it once), or attribute
    ``index`` of a direction set, a ``DirectionField``, ``MomentDirections`` or
    ``FeatureFlows`` or ``FeatureEditor`` (then ``vector`` is its linear summary in the
    global group); edits take strengths in ``strength_range`` (see hvae.directions.ranges)."""

    vector: torch.Tensor
    group: int = 0
    source: str = "user"
    units: str = "vector"
    field: DirectionSet | None = None
    index: int = 0
    strength_range: tuple[float, float] = DEFAULT_STRENGTH_RANGE


def lerp_or_none(start: torch.Tensor | None, end: torch.Tensor | None, t: float):
    """``lerp(start, end, t)`` where a missing end is zero; None when both are missing."""
    if start is None and end is None:
        return None
    start = torch.zeros_like(end) if start is None else start
    return torch.lerp(start, torch.zeros_like(start) if end is None else end, t)


EDIT_MODES = ("delta", "residuals")


class HVAEPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "hvae->autoencoder"
    # How the groups below an edited one follow the edit; see ``_features``.
    edit_mode = "delta"

    def __init__(self, autoencoder, hvae: HierarchicalVAE):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, hvae=hvae)
        self._directions: dict[str, Direction] = {}
        # Set by from_pretrained or ``hvae prior fit``; see hvae.latent_prior.
        self.fitted_prior: FittedPrior | None = None

    # ------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> HVAEPipeline:
        path = Path(pretrained_model_name_or_path)
        pipe = load_pipeline_folder(
            super().from_pretrained, pretrained_model_name_or_path, **kwargs
        )
        if path.exists():
            pipe.load_directions(path / DIRECTIONS_FOLDER)
            pipe.fitted_prior = FittedPrior.load(path / SAMPLE_PRIOR_FOLDER)
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        self.save_directions(Path(save_directory) / DIRECTIONS_FOLDER)
        self.save_fitted_prior(Path(save_directory) / SAMPLE_PRIOR_FOLDER)

    def save_fitted_prior(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # a stale prior must not outlive its model
        if self.fitted_prior is not None:
            self.fitted_prior.save(folder)

    def save_directions(self, folder: Path) -> None:
        # Replace, never merge: stale directions of an earlier model must not survive a save.
        shutil.rmtree(folder, ignore_errors=True)
        if not self._directions:
            return
        folder.mkdir(parents=True, exist_ok=True)
        fields = list({id(d.field): d.field for d in self._directions.values() if d.field}.values())
        tensors = {name: d.vector.contiguous().cpu() for name, d in self._directions.items()}
        for i, field in enumerate(fields):
            tensors |= {f"field{i}.{k}": v.contiguous() for k, v in field.state_dict().items()}
        save_file(tensors, str(folder / "directions.safetensors"))
        metadata = self.direction_metadata()
        for name, d in self._directions.items():
            if d.field is not None:
                metadata[name] |= {"field": fields.index(d.field), "index": d.index}
        (folder / "directions.json").write_text(json.dumps(metadata, indent=2))
        described = [f.describe() for f in fields]
        (folder / "fields.json").write_text(json.dumps(described, indent=2))

    def direction_metadata(self) -> dict[str, dict]:
        """name -> {group, source, units, range, kind[, groups]} for every direction (what
        directions.json lists); a field direction also names the groups it edits."""
        metadata = {}
        for name, d in sorted(self._directions.items()):
            metadata[name] = {"group": d.group, "source": d.source, "units": d.units}
            metadata[name]["range"] = list(d.strength_range)
            if d.field is None:
                metadata[name]["kind"] = "vector"
            else:
                metadata[name] |= {"kind": d.field.kind, "groups": list(d.field.groups)}
        return metadata

    def load_directions(self, folder: Path) -> None:
        if not (folder / "directions.json").is_file():
            return
        tensors = load_file(str(folder / "directions.safetensors"))
        shapes = ModelShapes(
            self.hvae.config.in_channels, tuple(g.z_channels for g in self.hvae.latent_groups)
        )
        fields = []
        if (folder / "fields.json").is_file():
            for i, field in enumerate(read_direction_sets(folder / "fields.json", shapes)):
                prefix = f"field{i}."
                try:
                    field.load_state_dict(
                        {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                    )
                except RuntimeError as error:  # saved by another version of the direction set
                    raise HVAEError(
                        f"{folder}: direction set {i} ({field.kind}) does not match "
                        f"this version; delete {folder} and refit with 'hvae directions fit' ({error})"
                    ) from None
                fields.append(field.eval())
        for name, meta in json.loads((folder / "directions.json").read_text()).items():
            if name not in tensors:
                raise HVAEError(f"{folder}: direction {name!r} is listed but has no vector")
            # register_direction checks the vector against this model's group shapes.
            self.register_direction(
                name,
                tensors[name],
                meta["group"],
                meta.get("source", "user"),
                meta.get("units", "vector"),
                field=fields[meta["field"]] if "field" in meta else None,
                index=meta.get("index", 0),
                strength_range=read_strength_range(
                    meta.get("range"), f"{folder}: direction {name!r}"
                ),
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
    def edit_size(self) -> int | None:
        """The image side every edit needs, when a direction edits spatial groups (those
        fields were fitted on images of the training size); None when any size edits."""
        spatial = any(
            d.field is not None and not d.field.any_size for d in self._directions.values()
        )
        return self.training_image_size if spatial else None

    @property
    def pixel_multiple(self) -> int:
        """Images are padded to a multiple of this: stage 1's stride times the HVAE's own."""
        return self.stage1.stride * self.hvae.feature_multiple

    @property
    def training_image_size(self) -> int:
        """The image side stage 2 was trained at (its sample size times the stage-1 stride)."""
        return self.hvae.config.sample_size * self.stage1.stride

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
        field: DirectionSet | None = None,
        index: int = 0,
        strength_range: tuple[float, float] | None = None,
    ) -> None:
        """Make ``name`` editable: ``edit(codes, {name: s})`` adds ``s * vector`` to latent ``group``,
        or, with a ``field``, moves attribute ``index`` of the field by ``s``, for ``s`` in
        ``strength_range`` (default ``DEFAULT_STRENGTH_RANGE``)."""
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
        if field is not None and field.groups and max(field.groups) >= len(groups):
            raise HVAEError(
                f"direction {name!r} edits groups {field.groups}; this model has {len(groups)}"
            )
        features = self.hvae.config.in_channels
        if isinstance(field, FeatureFlows | FeatureEditor) and field.channels != features:
            raise HVAEError(
                f"direction {name!r} edits {field.channels}-channel features; "
                f"this model's have {features}"
            )
        strength_range = read_strength_range(strength_range, f"direction {name!r}")
        self._directions[name] = Direction(
            vector, group, source, units, field, index, strength_range
        )

    def strength_range(self, name: str) -> tuple[float, float]:
        """The (lowest, highest) strength direction ``name`` takes."""
        self.check_directions([name])
        return self._directions[name].strength_range

    def set_strength_range(self, name: str, strength_range: tuple[float, float]) -> None:
        """Change the strengths direction ``name`` takes; ``save_directions`` keeps them."""
        self.check_directions([name])
        where = f"direction {name!r}"
        self._directions[name].strength_range = read_strength_range(strength_range, where)

    # ------------------------------------------------------------ the user API
    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image] | Image.Image) -> HVAECodes:
        """Images (one size per call) -> codes: every latent group's posterior mean, plus the
        feature detail those means do not reproduce (``codes.detail``). Stage 2 runs on the
        whole feature map: images over ``MAX_LATENT_PIXELS`` are refused."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        for image in images:  # before any pixel is converted
            try:
                check_image_size(*image.size, self.pixel_multiple, MAX_LATENT_PIXELS)
            except HVAEError as error:
                raise HVAEError(
                    f"{error}: latent codes (stage 2) are made of images up to "
                    f"{MAX_LATENT_PIXELS / 1e6:g} MP; feature-flow edits take images up to "
                    f"{MAX_PIXELS / 1e6:g} MP"
                ) from None
        # Any size encodes: padded to what both models need, cropped back at decode.
        features = self.stage1.encode(images, multiple=self.pixel_multiple).to(self.device)
        self._check_feature_size(features)
        codes = self.hvae.encode(features)
        codes.image_size = (images[0].height, images[0].width)
        return codes

    def _valid_cells(self, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
        """The feature cells that an image of ``image_size`` covers, without the padding."""
        if image_size is None:
            return None
        return tuple(-(-side // self.stage1.stride) for side in image_size)

    def moves_features_only(self, edits: dict[str, float]) -> bool:
        """Whether ``edits`` (maybe none) are all feature flows, which need no latent codes."""
        return all(isinstance(self._directions[n].field, FeatureFlows) for n in edits)

    @torch.no_grad()
    def edit_features(
        self,
        images: Sequence[Image.Image] | Image.Image,
        edits: dict[str, float],
        keep: Sequence[str] | None = None,
    ) -> list[Image.Image]:
        """Images (one size per call) with feature-flow ``edits``, skipping stage 2, whose
        decode plus the kept detail rebuilds stage 1's features to about 2e-7. Stage 1 runs
        in tiles and the flow on the feature map (1/64 of the pixels): up to ``MAX_PIXELS``."""
        self.check_edits(edits, keep)
        if not self.moves_features_only(edits):
            raise HVAEError("edit_features takes feature-flow directions only")
        images = [images] if isinstance(images, Image.Image) else list(images)
        for image in images:  # before any pixel is converted
            check_image_size(*image.size, self.pixel_multiple)
        features = self.stage1.encode(images, multiple=self.pixel_multiple).to(self.device)
        size = (images[0].height, images[0].width)
        generators = [field.generator(*moved) for field, *moved in self._field_moves(edits, keep)]
        if generators:
            features = flow_features(features, sum(generators), self._valid_cells(size))
        return self.stage1.decode_pil(features, size)

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
        if codes.feature_flow is not None:
            valid = self._valid_cells(codes.image_size)
            features = flow_features(features, codes.feature_flow, valid)
        if codes.feature_editor is not None:
            editor, strengths = codes.feature_editor
            features = editor.to(features.device)(features, strengths)
        return self.stage1.decode(features, codes.image_size)

    def check_directions(self, names: Sequence[str]) -> None:
        """Raise ``HVAEError`` naming the unknown ones among ``names`` and the known ones."""
        unknown = sorted(set(names) - set(self._directions))
        if unknown:
            known = ", ".join(self.directions) or "none registered"
            raise HVAEError(f"unknown direction(s) {', '.join(unknown)}; known: {known}")

    def check_edits(self, edits: dict[str, float], keep: Sequence[str] | None = None) -> None:
        """Raise ``HVAEError`` for an unknown direction among ``edits`` and ``keep``, or a
        strength that is not a finite number inside its direction's range: what ``edit``
        checks, for front ends to call before any work."""
        self.check_directions([*edits, *(keep or ())])
        for name, strength in edits.items():
            check_strength(name, strength, self._directions[name].strength_range)

    def edit(
        self,
        codes: HVAECodes,
        edits: dict[str, float],
        keep: Sequence[str] | None = None,
    ) -> HVAECodes:
        """New codes with each named direction added at its strength; ``codes`` is left unchanged.

        A field direction moves its attribute and holds every other attribute fitted
        with the same field. ``keep`` names directions whose attributes must not move
        under vector and moment edits: each vector is projected orthogonally to theirs
        (in the same group, or the same set of moment directions) before it is added.
        The detail kept at encoding is carried over, so it survives the edit (moment
        directions rescale it). Feature flows move no latents: they add to the
        generator that decoding applies to the features. Each strength must lie in its
        direction's range (``strength_range``).
        """
        self.check_edits(edits, keep)
        side = self.edit_size
        fixed = [n for n in edits if (f := self._directions[n].field) and not f.any_size]
        if fixed and codes.image_size is not None and codes.image_size != (side, side):
            height, width = codes.image_size
            raise HVAEError(
                f"{', '.join(sorted(fixed))} edit(s) {side}×{side} images, the size they were "
                f"fitted at; these codes are of a {height}×{width} image: resize it first"
            )
        edited = codes.clone()  # shares codes.base_cache, which belongs to the unedited latents
        if edited.unedited is None:
            edited.unedited = codes.latents
        for name, strength in edits.items():
            direction = self._directions[name]
            if direction.field is not None:
                continue
            held = [
                self._directions[k].vector
                for k in keep or ()
                if k != name and self._directions[k].group == direction.group
            ]
            vector = project_out(direction.vector, held)
            z = edited.latents[direction.group]
            edited.latents[direction.group] = z + float(strength) * vector.to(z.device, z.dtype)
            edited.edited_groups = edited.edited_groups | {direction.group}
        for field, strengths, held in self._field_moves(edits, keep):
            field.edit_codes(edited, strengths, held)
        return edited

    def _field_moves(
        self, edits: dict[str, float], keep: Sequence[str] | None
    ) -> list[tuple[DirectionSet, torch.Tensor, list[int]]]:
        """Per direction set that ``edits`` move: (the set, the strength of each of its
        attributes, the indices of its attributes that ``keep`` holds)."""
        moves: dict[int, tuple[DirectionSet, torch.Tensor, list[int]]] = {}
        for name, strength in edits.items():
            field, index = self._directions[name].field, self._directions[name].index
            if field is not None:
                held = [
                    self._directions[k].index
                    for k in keep or ()
                    if self._directions[k].field is field
                ]
                _, strengths, _ = moves.setdefault(
                    id(field), (field, torch.zeros(len(field.names)), held)
                )
                strengths[index] += float(strength)
        return list(moves.values())

    def _features(self, codes: HVAECodes) -> torch.Tensor:
        """Stage-2 decode of possibly edited codes. Below the deepest edited group, either

        - ``delta`` (the default): the edited groups and those above them are decoded
          with every lower group at its prior mean, before and after the edit, and
          the difference is added to the unedited decode. The lower groups and the
          kept detail then carry the image's own texture through the edit, and the
          edit changes what the upper groups say (colour, shape, pose); or
        - ``residuals``: lower latents are rebuilt from their residuals under the
          new priors (kept in prior stds, not as values), so they follow the edit.

        ``benchmarks/editing.py --mode`` measures both. When the deepest group is
        edited (a field over every group), no group lies below and the edited
        latents decode as they are.
        """
        if not codes.edited_groups:
            if codes.feature_flow is None and codes.feature_editor is None:
                return self.hvae.decode(codes)
            # Edits that moved no latents (feature flows and editors): one decode serves every slider
            # move. It is kept with the latents it decoded, so latents changed by hand, in
            # these codes or in those they were edited from, are decoded afresh.
            made_from, decoded = codes.base_cache.get("whole", ((), None))
            if len(made_from) != len(codes.latents) or not all(
                torch.equal(a, b) for a, b in zip(made_from, codes.latents, strict=True)
            ):
                decoded = self.hvae.decode(codes)
                codes.base_cache["whole"] = ([z.clone() for z in codes.latents], decoded)
            return decoded
        if not codes.priors:
            return self.hvae.decode(codes)
        top = max(codes.edited_groups)  # the deepest edited group
        lower = len(codes.latents) - top - 1
        if lower == 0:  # every group was edited or lies above an edited one: nothing to carry
            return self.hvae.decode(list(codes.latents), feature_size=codes.feature_size)
        if self.edit_mode == "residuals":
            given = list(codes.latents[: top + 1]) + [None] * lower
            return self.hvae.decode(
                given, feature_size=codes.feature_size, residuals=codes.residuals()[top + 1 :]
            )
        if self.edit_mode != "delta":
            raise HVAEError(f"edit_mode must be one of {EDIT_MODES}, got {self.edit_mode!r}")
        unedited = codes.unedited if codes.unedited is not None else codes.latents

        def upper_only(latents):
            given = list(latents[: top + 1]) + [None] * lower
            return self.hvae.decode(given, temperature=0.0, feature_size=codes.feature_size)

        base = codes.base_cache.get(top)
        if base is None:
            whole = self.hvae.decode(list(unedited), feature_size=codes.feature_size)
            base = codes.base_cache[top] = whole - upper_only(unedited)
        return base + upper_only(codes.latents)

    @staticmethod
    def interpolate(start: HVAECodes, end: HVAECodes, t: float) -> HVAECodes:
        """Codes a fraction ``t`` of the way from ``start`` to ``end`` (same sizes): every group's
        latents, the kept detail and any feature-flow or feature-editor edit alike."""
        if start.feature_size != end.feature_size or len(start) != len(end):
            raise HVAEError(
                f"interpolation needs codes of one size and count, got {start.feature_size} x {len(start)} "
                f"and {end.feature_size} x {len(end)}"
            )
        mixed = start.clone()
        # New latents: nothing cached for the old ones applies, and they decode as they are.
        mixed.base_cache, mixed.unedited, mixed.edited_groups = {}, None, frozenset()
        mixed.latents = [
            torch.lerp(a, b, t) for a, b in zip(start.latents, end.latents, strict=True)
        ]
        if start.detail is not None and end.detail is not None:
            mixed.detail = torch.lerp(start.detail, end.detail, t)
        # Flow generators and editor strengths blend like strengths; unedited codes have zero.
        mixed.feature_flow = lerp_or_none(start.feature_flow, end.feature_flow, t)
        editors = {
            id(c.feature_editor[0]): c.feature_editor[0] for c in (start, end) if c.feature_editor
        }
        if len(editors) > 1:
            raise HVAEError("cannot interpolate codes edited by two different feature editors")
        if editors:
            strengths = [c.feature_editor and c.feature_editor[1] for c in (start, end)]
            mixed.feature_editor = (*editors.values(), lerp_or_none(*strengths, t))
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
        prior: str = "auto",
    ) -> list[Image.Image]:
        """``n`` images from the prior: images ``start`` .. ``start + n - 1`` of the run ``seed``,
        or the images ``indices``. Image ``i`` depends only on (seed, i), never on which others
        are drawn with it. ``size`` (height, width) defaults to the training size.

        ``prior``: "fitted" draws the top groups from the pipeline's fitted prior
        (``hvae.latent_prior``) and the rest from the model's conditional priors; "model"
        draws every group from the model's own prior; "auto" (default) uses the fitted prior
        when the pipeline has one for this size. ``temperature`` scales every draw's spread."""
        if indices is None:
            if n < 1:
                raise HVAEError(f"n must be positive, got {n}")
            indices = range(start, start + n)
        if temperature < 0:
            raise HVAEError(f"temperature must be non-negative, got {temperature}")
        generators = [
            torch.Generator(self.device).manual_seed(image_seed(seed, i)) for i in indices
        ]
        feature_size = (self.hvae.config.sample_size,) * 2
        if size is not None:
            stride = self.stage1.stride
            if size[0] % stride or size[1] % stride:
                raise HVAEError(f"sample size {size} must be a multiple of the stride {stride}")
            feature_size = (size[0] // stride, size[1] // stride)
        fitted = self._sample_prior(prior, feature_size)
        if fitted is None:
            features = self.hvae.sample(
                len(generators),
                temperature=temperature,
                generator=generators,
                feature_size=feature_size,
            )
        else:
            latents: list[torch.Tensor | None] = [None] * len(self.hvae.latent_groups)
            for group, z in zip(fitted.groups, fitted.sample(generators, temperature), strict=True):
                latents[group] = z.to(self.device, self.hvae.dtype)
            features = self.hvae.decode(
                latents, temperature=temperature, generator=generators, feature_size=feature_size
            )
        return to_pil(self.stage1.decode(features))

    def sampler_id(self, prior: str = "auto") -> str:
        """What ``sample(prior=prior)`` at the training size draws from: "model prior", or
        "fitted prior" and the fitted prior's fingerprint."""
        fitted = self._sample_prior(prior, (self.hvae.config.sample_size,) * 2)
        return "model prior" if fitted is None else f"fitted prior {fingerprint(fitted)}"

    def _sample_prior(self, prior: str, feature_size: tuple[int, int]) -> FittedPrior | None:
        """The fitted prior that ``sample(prior=...)`` draws the top groups from, or None for
        the model's own prior."""
        if prior not in SAMPLE_PRIORS:
            raise HVAEError(f"prior must be one of {', '.join(SAMPLE_PRIORS)}, got {prior!r}")
        fitted = self.fitted_prior
        applies = fitted is not None and fitted.fits(self.hvae.group_shapes(feature_size))
        if prior == "fitted" and not applies:
            raise HVAEError(
                "this pipeline has no fitted prior; fit one with 'hvae prior fit'"
                if fitted is None
                else f"the fitted prior does not fit this model's latents at {feature_size} "
                "features (fitted at another sample size, or for another model); use "
                "prior='model', or the training size"
            )
        return fitted if prior != "model" and applies else None

    def __call__(
        self,
        images: Sequence[Image.Image] | Image.Image,
        edits: dict[str, float] | None = None,
        keep: Sequence[str] | None = None,
    ) -> list[Image.Image]:
        """Images edited by ``edits`` (none: reconstructed). Feature-flow edits, and none,
        skip stage 2 (``edit_features``) and take images up to ``MAX_PIXELS``; the others go
        through latent codes (``encode``, up to ``MAX_LATENT_PIXELS``)."""
        edits = edits or {}
        self.check_edits(edits, keep)
        if self.moves_features_only(edits):
            return self.edit_features(images, edits, keep)
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
