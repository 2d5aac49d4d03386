"""``FeatureFlows``: linear flows of the stage-1 features, fitted on pixel adjustments
(``AUTO_ADJUSTMENTS``) of each picture; and applying a flow to features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn

from hvae.data.images import to_pil
from hvae.directions.base import solve_ridge
from hvae.directions.labels import image_statistics
from hvae.errors import HVAEError


def _map_pixels(image: Image.Image, change) -> Image.Image:
    """``image`` with ``change`` applied to its RGB values (0-255, float), rounded and clipped."""
    rgb = change(np.asarray(image.convert("RGB"), dtype=np.float64))
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))


def _warm(image: Image.Image, amount: float) -> Image.Image:
    return _map_pixels(image, lambda rgb: rgb * np.array([1 + amount, 1.0, 1 - amount]))


def _lighten(image: Image.Image, amount: float) -> Image.Image:
    # Additive, not multiplicative: scaling would raise contrast (luma std) along with it.
    return _map_pixels(image, lambda rgb: rgb + 255 * amount)


# Pixel adjustments that move each ``auto`` statistic, as functions of (image, step) for
# steps -1 and +1; ``FeatureFlows`` learns what they do to the features. Each step moves
# its statistic by about 0.2-0.6 sd on photos: big enough to measure through stage 1,
# small enough that one linear flow describes both directions.
AUTO_ADJUSTMENTS = {
    "brightness": lambda image, step: _lighten(image, 0.06 * step),
    "saturation": lambda image, step: ImageEnhance.Color(image).enhance(1.6**step),
    "warmth": lambda image, step: _warm(image, 0.08 * step),
    "contrast": lambda image, step: ImageEnhance.Contrast(image).enhance(1.3**step),
    "sharpness": lambda image, step: ImageEnhance.Sharpness(image).enhance(1 + 0.9 * step),
}


FLOW_BANDS = 3  # the image mean, the smooth deviation from it, and the detail
FLOW_BOX = 3  # the box filter that separates the smooth band from the detail


def feature_bands(features: torch.Tensor, valid: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, 3C, H, W): the features' mean over the image, the smooth band's deviation from
    it (a FLOW_BOX box mean), and the detail band; the three add up to the features.
    ``valid`` (rows, columns) limits the mean to the image's own cells, not its padding."""
    half = FLOW_BOX // 2
    smooth = F.avg_pool2d(F.pad(features, (half,) * 4, mode="replicate"), FLOW_BOX, 1)
    rows, columns = valid or features.shape[-2:]
    mean = features[..., :rows, :columns].mean((2, 3), keepdim=True).expand_as(features)
    return torch.cat([mean, smooth - mean, features - smooth], 1)


def flow_features(
    features: torch.Tensor, generator: torch.Tensor, valid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Features moved along the flow ``exp(generator)``, which acts on each position's
    [image mean; smooth deviation; detail; 1]; the moved bands add back up to features.
    Computed in float32 at least: summing the bands back in bf16 would add rounding noise."""
    dtype = torch.promote_types(features.dtype, torch.float32)
    bands = feature_bands(features.to(dtype), valid)
    step = torch.linalg.matrix_exp(generator.double()).to(bands)
    moved = torch.einsum("dc,nchw->ndhw", step[:-1, :-1], bands)
    moved = moved + step[:-1, -1][None, :, None, None]
    return moved.unflatten(1, (FLOW_BANDS, features.shape[1])).sum(1).to(features.dtype)


class FeatureFlows(nn.Module):
    """Attribute edits as linear flows of the stage-1 features, the same at every position.

    Per attribute, a generator ``G`` acts on each position's bands (the image's mean
    features, the smooth deviation from them, the detail) and a constant; strength
    ``s`` maps them by ``exp(s G)``, and the bands add back up to features. ``G`` is
    fitted on pairs: each picture and the same picture adjusted in pixels
    (``AUTO_ADJUSTMENTS``: brighter, more saturated, ...), as the least-squares
    change of the bands per sd of the statistic, both measured through stage 1.

    Why this form: colour and light are per-pixel linear maps, and the features
    carry them nearly so; the mean band lets contrast pivot about the picture's
    own mean, and the detail band lets sharpness scale fine structure. The
    exponential keeps large strengths sensible (desaturating approaches grey
    instead of passing through it), and several edits add generators before one
    exponential. Fitted on pairs, a direction carries what its adjustment changes,
    not what merely comes with the attribute across pictures (in photos, saturated
    ones tend to be dark), which regressing across pictures picks up.

    ``keep`` solves a joint fit instead: on the pairs of the moved and the kept
    attributes' adjustments, the band changes are regressed on the changes of all
    those statistics together, so the moved attribute's generator is its change
    with the kept ones held (to first order). Each adjustment's normal equations
    over every attribute are stored, so any subset can be kept; without ``keep``
    the same solve over one adjustment's pairs gives the stored generators.

    It moves no latents: an edit adds its generator to ``codes.feature_flow``, and
    decoding applies it to the features (the latents decoded plus the kept detail).
    """

    kind = "feature-flow"
    any_size = True
    groups: tuple[int, ...] = ()
    ridge = 1e-4  # relative to the mean diagonal of the normal equations

    def __init__(self, names: Sequence[str], channels: int):
        super().__init__()
        self.names = list(names)
        self.channels = channels
        size, k = self.state_size, len(names)
        self.register_buffer("generators", torch.zeros(k, size, size))
        # Per adjustment: normal equations of band changes on (statistic change x state).
        self.register_buffer("grams", torch.zeros(k, k * size, k * size, dtype=torch.float64))
        self.register_buffer("crosses", torch.zeros(k, k * size, size - 1, dtype=torch.float64))

    @property
    def state_size(self) -> int:
        """Bands of every channel, plus the constant."""
        return FLOW_BANDS * self.channels + 1

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "names": self.names,
            "channels": self.channels,
            "bands": FLOW_BANDS,
            "box": FLOW_BOX,
        }

    def edit_codes(self, codes, strengths: torch.Tensor, keep: Sequence[int] = ()) -> None:
        """Add the edit's generator to ``codes.feature_flow`` (``codes`` is already a copy).
        A zero edit adds nothing, so it decodes exactly as the unedited codes."""
        generator = self.generator(strengths, keep)
        if generator.any():
            previous = codes.feature_flow
            codes.feature_flow = generator if previous is None else previous + generator

    def generator(self, strengths: torch.Tensor, keep: Sequence[int] = ()) -> torch.Tensor:
        """The generator of an edit by ``strengths`` (K,), each moved attribute holding the
        attributes ``keep`` (indices)."""
        combined = torch.zeros_like(self.generators[0])
        for k, strength in enumerate(strengths.tolist()):
            if strength:
                held = [j for j in keep if j != k]
                combined += strength * (self.solve(k, held) if held else self.generators[k])
        return combined

    def solve(self, k: int, held: Sequence[int] = ()) -> torch.Tensor:
        """Attribute ``k``'s generator fitted on the pairs of the adjustments of ``k`` and
        ``held``, jointly with the held attributes' generators."""
        size, attributes = self.state_size, [k, *held]
        rows = torch.cat([torch.arange(j * size, (j + 1) * size) for j in attributes])
        gram = self.grams[attributes].sum(0)[rows][:, rows]
        cross = self.crosses[attributes].sum(0)[rows]
        generator = torch.zeros_like(self.generators[k])
        generator[:-1] = solve_ridge(gram, cross, self.ridge)[:size].T.float()
        return generator

    def add_pair(self, k: int, state: torch.Tensor, change: torch.Tensor, stats: torch.Tensor):
        """Add one pair of adjustment ``k``: ``state`` (S, P) the original's bands and constant
        at P positions, ``change`` (S - 1, P) the bands' change, ``stats`` (K,) every
        statistic's change in sds."""
        inputs = (stats.double()[:, None, None] * state.double()[None]).flatten(0, 1)
        self.grams[k] += inputs @ inputs.T
        self.crosses[k] += inputs @ change.double().T

    @classmethod
    @torch.no_grad()
    def fit(
        cls, stage1, images: Sequence[Image.Image], grey_copies: bool = True
    ) -> tuple[FeatureFlows, dict[str, float]]:
        """Fit on ``images`` (any sizes) through ``stage1`` (a ``FeatureAutoencoder``), and on a
        grey copy of each unless ``grey_copies`` is off (which halves the time); returns the flows
        and, per attribute, the (centred) R^2 with which its flow predicts the band changes
        of its own pairs."""
        from tqdm.auto import tqdm

        if len(images) < 2:
            raise HVAEError(f"feature flows need at least 2 images to fit, got {len(images)}")
        names = list(AUTO_ADJUSTMENTS)

        def through_stage1(image):
            features = stage1.encode([image])
            decoded = to_pil(stage1.decode(features, (image.height, image.width)))[0]
            bands = feature_bands(features)[0].flatten(1).double().cpu()
            return torch.cat([bands, torch.ones_like(bands[:1])]), image_statistics(decoded)

        # Grey copies of the pictures teach what an adjustment cannot do: saturating a grey
        # picture changes nothing. Such a pair is entered as a request of the usual size
        # (the step's mean change over the pictures) that changed nothing; with its own
        # change of the statistic (none) it would constrain nothing, and the saturation
        # flow tinted grey photos both ways. The rule needs the step's mean, so it applies
        # to the copies, which come last; a picture already grey is covered by its copy.
        greys = [image.convert("L").convert("RGB") for image in images] if grey_copies else []
        pictures = [*images, *greys]
        originals = [through_stage1(i) for i in tqdm(pictures, desc="encoding", dynamic_ncols=True)]
        spread = {
            n: max(float(np.std([stats[n] for _, stats in originals[: len(images)]])), 1e-12)
            for n in names
        }
        flows = cls(names, (originals[0][0].shape[0] - 1) // FLOW_BANDS)
        totals = []  # per adjustment: (count, sum, sum of squares) of the band changes
        progress = tqdm(
            total=len(names) * 2 * len(pictures), desc="fitting flows", dynamic_ncols=True
        )
        for k, name in enumerate(names):
            count, total, squares = 0, 0.0, 0.0
            for step in (-1, 1):
                usual = 0.0  # the step's mean change of the statistic over the pictures
                for index, (image, (state, stats)) in enumerate(
                    zip(pictures, originals, strict=True)
                ):
                    moved, moved_stats = through_stage1(AUTO_ADJUSTMENTS[name](image, step))
                    change = (moved - state)[:-1]
                    stat_changes = torch.tensor(
                        [(moved_stats[n] - stats[n]) / spread[n] for n in names]
                    )
                    if index < len(images):
                        usual += float(stat_changes[k]) / len(images)
                    elif abs(float(stat_changes[k])) < 0.01 * abs(usual):
                        stat_changes[k] = usual
                    flows.add_pair(k, state, change, stat_changes)
                    count += change.shape[1]
                    total = total + change.sum(1)
                    squares += float(change.pow(2).sum())
                    progress.update()
            totals.append((count, total, squares))
        progress.close()
        fits = {}
        for k, name in enumerate(names):
            flows.generators[k] = flows.solve(k)
            fits[name] = flows.r_squared(k, *totals[k])
        return flows.eval(), fits

    def r_squared(self, k: int, count: int, total: torch.Tensor, squares: float) -> float:
        """Centred R^2 of attribute ``k``'s generator on its own pairs, from the normal
        equations (no pair is kept in memory) and the changes' count, sum and squares."""
        size = self.state_size
        block = slice(k * size, (k + 1) * size)
        gram, cross = self.grams[k][block, block], self.crosses[k][block]
        weights = self.generators[k][:-1].double().T
        residual = squares - 2 * (weights * cross).sum() + (weights * (gram @ weights)).sum()
        centred = squares - float(total.pow(2).sum()) / max(count, 1)
        return 1 - float(residual) / max(centred, 1e-12)
