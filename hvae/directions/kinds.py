"""Every kind of direction set, and rebuilding one from its saved ``describe()`` entry.

The entries come from a pipeline folder's ``fields.json``, which anyone can edit or
hand over: a width of a billion would exhaust memory while the empty set is built,
before any weight is compared with it. So an entry is checked first, field by field,
against bounds and against the model it is loaded into, and then its size is counted
on torch's ``meta`` device, which allocates nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hvae.directions.editor import FeatureEditor
from hvae.directions.field import DirectionField
from hvae.directions.flows import FLOW_BANDS, FLOW_BOX, FeatureFlows
from hvae.directions.moments import MomentDirections
from hvae.errors import HVAEError

DirectionSet = DirectionField | MomentDirections | FeatureFlows | FeatureEditor

MAX_ATTRIBUTES = 256
MAX_WIDTH = 4096  # an editor's channels, a field's hidden units and components
MAX_BLOCKS = 16
MAX_FIELD_DIM = 2**24  # a field's flattened latents
# Weights and buffers of one set; the bundled sets hold 0.4 M (flows) and 1 M (editor).
MAX_ELEMENTS = 64_000_000


@dataclass(frozen=True)
class ModelShapes:
    """What a direction set must match in the model it edits."""

    feature_channels: int  # stage-1 features, which flows and editors edit
    group_channels: tuple[int, ...]  # every latent group's channels


def load_direction_set(spec: dict, model: ModelShapes) -> DirectionSet:
    """An empty direction set built from its ``describe()`` entry, ready for its weights;
    ``HVAEError`` for an entry that does not describe a set of sane size for ``model``."""
    if not isinstance(spec, dict):
        raise HVAEError(f"a direction set must be described by an object, got {spec!r:.80}")
    check_spec(spec, model)
    with torch.device("meta"):  # counts the elements without allocating them
        probe = _build(spec)
    elements = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    if elements > MAX_ELEMENTS:
        raise HVAEError(
            f"a {spec.get('kind', 'field')} direction set of {elements:,} weights is over the "
            f"limit of {MAX_ELEMENTS:,}"
        )
    return _build(spec)


def read_direction_sets(path: Path, model: ModelShapes) -> list[DirectionSet]:
    """The empty direction sets a ``fields.json`` describes (``load_direction_set``), or
    ``HVAEError`` naming the file and the entry at fault."""
    try:
        specs = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HVAEError(f"{path}: unreadable ({error})") from None
    if not isinstance(specs, list):
        raise HVAEError(f"{path}: must hold a list of direction sets")
    sets = []
    for i, spec in enumerate(specs):
        try:
            sets.append(load_direction_set(spec, model))
        except HVAEError as error:
            raise HVAEError(f"{path}: entry {i}: {error}") from None
    return sets


def _build(spec: dict) -> DirectionSet:
    if spec.get("kind") == FeatureEditor.kind:
        return FeatureEditor(
            spec["names"], spec["units"], spec["channels"], spec["width"], spec["blocks"]
        )
    if spec.get("kind", "field") == "moments":
        return MomentDirections(spec["names"], spec["group_channels"], spec["detail_channels"])
    if spec.get("kind") == "feature-flow":
        return FeatureFlows(spec["names"], spec["channels"])
    return DirectionField(
        spec["names"], spec["dim"], spec["components"], spec["groups"], spec["hidden"]
    )


def check_spec(spec: dict, model: ModelShapes) -> None:
    """Refuse an entry whose kind is unknown, whose fields are missing or out of bounds, or
    whose channels or groups are not the model's."""
    kind = spec.get("kind", "field")
    if kind not in (FeatureEditor.kind, "moments", "feature-flow", "field"):
        raise HVAEError(f"unknown kind of direction set {kind!r}")
    names = _field(spec, "names", list)
    if not 1 <= len(names) <= MAX_ATTRIBUTES or not all(isinstance(n, str) for n in names):
        raise HVAEError(f"a {kind} set needs 1 to {MAX_ATTRIBUTES} attribute names")

    def count(key: str, high: int) -> int:
        value = _field(spec, key, int)
        if not 1 <= value <= high:
            raise HVAEError(f"a {kind} set's {key} must be between 1 and {high}, got {value}")
        return value

    def features(key: str) -> None:
        if count(key, MAX_WIDTH) != model.feature_channels:
            raise HVAEError(
                f"a {kind} set of {spec[key]}-channel features; this model's have "
                f"{model.feature_channels}"
            )

    if kind == FeatureEditor.kind:
        features("channels")
        count("width", MAX_WIDTH)
        count("blocks", MAX_BLOCKS)
        if len(_field(spec, "units", list)) != len(names):
            raise HVAEError(f"a {kind} set has {len(spec['units'])} units for {len(names)} names")
    elif kind == "feature-flow":
        features("channels")
        made = (spec.get("bands", FLOW_BANDS), spec.get("box", FLOW_BOX))
        if made != (FLOW_BANDS, FLOW_BOX):
            raise HVAEError(
                f"these feature flows were fitted with {made[0]} bands and a {made[1]}-cell "
                f"box; this version uses {FLOW_BANDS} and {FLOW_BOX}: refit them"
            )
    elif kind == "moments":
        features("detail_channels")
        if _int_list(spec, "group_channels") != list(model.group_channels):
            raise HVAEError(
                f"a moments set for latent groups of {spec['group_channels']} channels; "
                f"this model's have {list(model.group_channels)}"
            )
    else:
        groups = _int_list(spec, "groups")
        if not groups or not all(0 <= g < len(model.group_channels) for g in groups):
            raise HVAEError(
                f"a field over latent groups {groups}; this model has "
                f"{len(model.group_channels)} (0 to {len(model.group_channels) - 1})"
            )
        dim = count("dim", MAX_FIELD_DIM)
        count("components", min(dim, MAX_WIDTH))
        count("hidden", MAX_WIDTH)


def _field(spec: dict, key: str, kind: type):
    value = spec.get(key)
    # bool is an int to Python, but never a width.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HVAEError(
            f"a {spec.get('kind', 'field')} set needs {key!r} ({kind.__name__}), got {value!r:.80}"
        )
    return value


def _int_list(spec: dict, key: str) -> Sequence[int]:
    values = _field(spec, key, list)
    if len(values) > MAX_ATTRIBUTES or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise HVAEError(f"a {spec.get('kind', 'field')} set's {key!r} must be a list of integers")
    return values
