import colorsys

import numpy as np
import pytest

from hvae.data.shapes import HUES, ORIENTATIONS, SCALES, SHAPES, ShapesDataset, render


def pure(hue):
    return np.array(colorsys.hsv_to_rgb(hue, 1.0, 1.0)) * 255


def test_canonical_values_match_the_spec():
    assert len(HUES) == 10 and HUES[0] == 0.0 and HUES[-1] == pytest.approx(0.8)
    assert len(SCALES) == 8 and SCALES[0] == 0.75 and SCALES[-1] == 1.25
    assert len(ORIENTATIONS) == 15 and ORIENTATIONS[0] == -30 and ORIENTATIONS[-1] == 30
    assert SHAPES == ("cube", "cylinder", "sphere", "capsule")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("orientation", [-30.0, 0.0, 30.0])
def test_wall_floor_and_object_layout(shape, orientation):
    wall, floor, obj = 0.1, 0.5, 0.7
    pixels = np.asarray(render(floor, wall, obj, 1.0, shape, orientation, size=64)).astype(float)
    for corner in (pixels[0, 0], pixels[0, -1]):
        np.testing.assert_allclose(corner, pure(wall), atol=2)
    for corner in (pixels[-1, 0], pixels[-1, -1]):
        np.testing.assert_allclose(corner, pure(floor), atol=2)
    # The object stands centred: the pixel above the base on the centre line has the object's hue.
    r, g, b = pixels[int(64 * 0.7), 32] / 255
    hue, saturation, _ = colorsys.rgb_to_hsv(r, g, b)
    assert saturation > 0.9 and abs(hue - obj) < 0.02


def test_every_factor_changes_the_image():
    base = dict(
        floor_hue=0.2, wall_hue=0.4, object_hue=0.6, scale=1.0, shape="cube", orientation=10.0
    )
    reference = np.asarray(render(**base))
    for name, value in [
        ("floor_hue", 0.3),
        ("wall_hue", 0.5),
        ("object_hue", 0.7),
        ("scale", 1.2),
        ("shape", "sphere"),
        ("orientation", -10.0),
    ]:
        changed = np.asarray(render(**(base | {name: value})))
        assert np.abs(changed.astype(int) - reference).sum() > 0, name


def test_any_float_in_range_renders_and_out_of_range_is_refused():
    assert render(0.123, 0.456, 0.789, 0.9, "capsule", 12.3, size=32).size == (32, 32)
    with pytest.raises(ValueError, match="floor_hue"):
        render(0.9, 0.1, 0.1, 1.0, "cube", 0.0)
    with pytest.raises(ValueError, match="shape"):
        render(0.1, 0.1, 0.1, 1.0, "cone", 0.0)
    with pytest.raises(ValueError, match="orientation"):
        render(0.1, 0.1, 0.1, 1.0, "cube", 45.0)


def test_dataset_is_deterministic_and_yields_canonical_factors():
    a, b = ShapesDataset(5, seed=3, size=32), ShapesDataset(5, seed=3, size=32)
    items = list(a)
    assert len(items) == 5
    for (image, factors), i in zip(items, range(5), strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(b[i][0]))
        assert factors.floor_hue in HUES and factors.scale in SCALES and factors.shape in SHAPES
        assert factors.orientation in ORIENTATIONS
    assert not np.array_equal(
        np.asarray(ShapesDataset(5, seed=4, size=32)[0][0]), np.asarray(items[0][0])
    )
    with pytest.raises(IndexError):
        a[5]


def test_edit_pairs_change_what_they_say_and_stay_in_range():
    from hvae.data.shapes import FACTOR_RANGES, edit_pair, next_shape, sample_factors

    rng = np.random.default_rng(5)
    kinds, overshoots = set(), 0
    for _ in range(400):
        source = sample_factors(rng)
        target, change = edit_pair(source, rng)
        for name, (low, high) in FACTOR_RANGES.items():
            before, after = getattr(source, name), getattr(target, name)
            assert low <= after <= high
            requested = before + change.get(name, 0.0)
            if low <= requested <= high:
                assert after == pytest.approx(requested)
            else:  # asked past the end: the target stops there
                assert after == (high if requested > high else low)
                overshoots += 1
        added = [s for s in SHAPES if change.get(s) == 1.0]
        removed = [s for s in SHAPES if change.get(s) == -1.0]
        assert len(added) <= 1 and len(removed) <= 1
        if added and added[0] != source.shape:  # a swap or an addition
            assert target.shape == added[0]
            kinds.add("swap" if removed else "add")
        elif removed == [source.shape]:  # a removal alone: the next shape
            assert target.shape == next_shape(source.shape)
            kinds.add("remove")
        else:  # nothing asked, or a request that cannot apply
            assert target.shape == source.shape
            kinds.add("keep" if added or removed else "none")
        assert 1 <= len(change) <= 4  # up to 3 factors, a shape swap counting as 2 entries
    assert kinds == {"swap", "add", "remove", "keep", "none"}
    assert 100 <= overshoots <= 180  # about a quarter of the 557 continuous changes
