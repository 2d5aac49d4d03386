"""The strengths each direction takes: its valid range, saved with it in directions.json.

Past some strength every direction breaks down: the features leave what the decoder
was trained on, and photos clip to black or white, show a bright band along their
borders, or turn greys into colours. ``benchmarks/slider_ranges.py`` measures where
that starts for each slider and stores the result as ``"range": [low, high]``; the
pipeline refuses strengths outside it, the CLI before any work, and the UI's sliders
end there (see docs/slider-ranges.md).

A direction saved without a range (fitted before ranges existed, or by ``hvae
directions fit``, which measures none) gets ``DEFAULT_STRENGTH_RANGE``: ±3, three
standard deviations of the attribute over the fitting images, which is what the UI's
sliders spanned before ranges were measured.
"""

from __future__ import annotations

import math

from hvae.errors import HVAEError

DEFAULT_STRENGTH_RANGE = (-3.0, 3.0)


def read_strength_range(value, where: str) -> tuple[float, float]:
    """A saved ``range`` entry as (low, high); ``None`` (none saved) is the default. Refused
    (``HVAEError`` naming ``where``) unless it is two finite numbers with low <= 0 <= high:
    strength 0, the unedited image, is always valid."""
    if value is None:
        return DEFAULT_STRENGTH_RANGE
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise HVAEError(f"{where}: range must be [low, high], got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= 0.0 <= high):
        raise HVAEError(
            f"{where}: range must be finite numbers with low <= 0 <= high, got {value!r}"
        )
    return low, high


def check_strength(name: str, strength, strength_range: tuple[float, float]) -> float:
    """``strength`` as a float, or ``HVAEError`` naming the direction and its range when it
    is not a finite number inside it."""
    low, high = strength_range
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise HVAEError(
            f"direction {name!r}: the strength must be a number, got {strength!r}"
        ) from None
    if not (math.isfinite(value) and low <= value <= high):
        raise HVAEError(
            f"direction {name!r} takes strengths from {low:g} to {high:g} (beyond them its "
            f"edits show artifacts; see docs/slider-ranges.md), got {value:g}"
        )
    return value
