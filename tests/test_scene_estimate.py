"""The editing benchmark's pixel-only factor reader, checked against true factors."""

import numpy as np
import pytest

from hvae.data.scene_estimate import estimate
from hvae.data.shapes import HUES, ORIENTATIONS, SCALES, ShapesDataset

HALF_HUE = (HUES[1] - HUES[0]) / 2
HALF_SCALE = (SCALES[1] - SCALES[0]) / 2
HALF_ORIENTATION = (ORIENTATIONS[1] - ORIENTATIONS[0]) / 2


def test_reads_every_factor_within_half_a_step_on_rendered_scenes():
    scenes = ShapesDataset(80, seed=21, size=64)  # not the reference seed
    errors = {"floor_hue": [], "wall_hue": [], "object_hue": [], "scale": [], "orientation": []}
    shapes_right = shapes_seen = 0
    for image, truth in scenes:
        read = estimate(image, references=800)
        for name in errors:
            errors[name].append(abs(read[name] - getattr(truth, name)))
        if read["shape"] is not None:
            shapes_seen += 1
            shapes_right += read["shape"] == truth.shape
    half = {"scale": HALF_SCALE, "orientation": HALF_ORIENTATION}
    for name, values in errors.items():
        values = np.array(values)
        seen = values[~np.isnan(values)]
        assert len(seen) >= 0.7 * len(values), name  # unseen only when colours coincide
        assert np.mean(seen < half.get(name, HALF_HUE)) >= 0.9, (name, np.median(seen))
    assert shapes_seen >= 0.7 * len(scenes)
    assert shapes_right / shapes_seen >= 0.9


def test_unseen_factors_are_reported_as_such():
    from hvae.data.shapes import render

    same_hues = render(0.3, 0.3, 0.3, 1.0, "cube", 10.0, size=64)
    read = estimate(same_hues, references=200)
    assert np.isnan(read["orientation"]) and np.isnan(read["scale"]) and read["shape"] is None


def test_hue_changes_go_the_short_way_round_the_colour_circle():
    from hvae.data.scene_estimate import hue_gap, hue_shift

    assert hue_shift(0.0, 0.999) == pytest.approx(-0.001)  # a red read just below 1
    assert hue_shift(0.9, 0.1) == pytest.approx(0.2)
    assert hue_shift(0.1, 0.3) == pytest.approx(0.2)
    assert hue_gap(0.95, 0.05) == pytest.approx(0.1) == hue_gap(0.05, 0.95)
    assert hue_gap(0.0, 0.5) == pytest.approx(0.5)
