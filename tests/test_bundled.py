"""The bundled scenes pipeline, loaded the way users load it, against quality floors."""

from pathlib import Path

import pytest
import torch

from hvae.autoencoder import FeatureAutoencoder
from hvae.data.scene_estimate import count_scene_like
from hvae.demo import held_out_scenes, round_trip_psnr
from pipelines import HVAEPipeline

BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes"
# The bundled model's latents alone measure 29.75 dB on 256 held-out scenes
# (benchmarks/roundtrip.py); the floor leaves room for the 32-scene sample used here.
LATENTS_ONLY_FLOOR_DB = 28.5


@pytest.fixture(scope="module")
def pipe():
    return HVAEPipeline.from_pretrained(BUNDLED)


def test_bundled_autoencoder_loads_through_from_pretrained():
    stage1 = FeatureAutoencoder.from_pretrained(BUNDLED / "autoencoder")
    assert stage1.stride == 4 and stage1.latent_channels == 4


def test_round_trip_quality_on_held_out_scenes(pipe):
    measured = round_trip_psnr(pipe, held_out_scenes(32, 64))
    stage1 = measured["stage1"].mean()
    assert stage1 > 33.0
    assert measured["round_trip"].mean() > stage1 - 0.5
    # The latents alone, without the kept detail: a regression floor for the model itself.
    assert measured["latents_only"].mean() > LATENTS_ONLY_FLOOR_DB


def test_kept_detail_survives_an_edit_and_zero_edits_are_free(pipe):
    scenes = held_out_scenes(4, 64)
    codes = pipe.encode(scenes)
    group = pipe.hvae.latent_groups[0]
    pipe.register_direction("test_push", torch.ones(group.z_channels), group=0)
    edited = pipe.edit(codes, {"test_push": 0.0})
    # A zero edit rebuilds the lower groups from their residuals: the same latents up to rounding.
    assert torch.allclose(pipe.decode_tensor(edited), pipe.decode_tensor(codes), atol=1e-4)
    moved = pipe.decode_tensor(pipe.edit(codes, {"test_push": 1.0}))
    assert not torch.equal(moved, pipe.decode_tensor(codes))
    assert torch.equal(edited.detail, codes.detail)


def test_the_scene_check_accepts_real_scenes():
    assert count_scene_like(held_out_scenes(16, 64)) == 16


def test_the_scene_check_rejects_what_is_not_a_scene():
    from PIL import Image

    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    scene = held_out_scenes(1, 64)[0]
    on_its_side = scene.rotate(90)  # wall left, floor right
    bleeding = scene.copy()
    bleeding.paste((255, 0, 0), (0, 0, 8, 8))  # one wall corner another colour
    assert count_scene_like([grey, on_its_side, bleeding]) == 0


def test_samples_at_temperature_0_8_look_like_scenes(pipe):
    assert pipe.fitted_prior is not None  # the bundled folder ships sample_prior/
    # 64 samples, not 16: at a 7-in-8 floor, 16 would pass or fail on one or two samples.
    assert count_scene_like(pipe.sample(64, temperature=0.8, seed=0)) >= 56


@pytest.mark.xfail(
    strict=True,
    reason="known failure: the model's own prior gives few scene-like samples (README, Measured "
    "results); sample() uses the fitted prior by default",
)
def test_samples_from_the_model_prior_alone_look_like_scenes(pipe):
    assert count_scene_like(pipe.sample(64, temperature=0.8, seed=0, prior="model")) >= 56


def test_bundled_scene_sliders_move_their_factor_and_make_shapes(pipe):
    """Read from the pixels alone (no model of ours): the floor-hue slider at ±1 moves the
    floor's hue by at least half a canonical step the way asked and leaves the wall's, and
    the sphere slider at +1 turns other objects into spheres. Benchmarked on 128 scenes in
    benchmarks/editing.py; this is a floor for 16."""
    from hvae.data.scene_estimate import estimate, hue_gap, hue_shift
    from hvae.data.shapes import HUES, ShapesDataset
    from hvae.demo import HELD_OUT_SEED

    dataset = ShapesDataset(64, seed=HELD_OUT_SEED, size=64)
    scenes = [dataset[i] for i in range(16)]
    # One sd towards the middle of the floor hues always has room to move. The slider's
    # range may leave out one way (floor_hue's positive side, docs/slider-ranges.md):
    # the 16 scenes are the first whose way lies inside it.
    low, high = pipe.strength_range("floor_hue")
    towards_middle = ((image, 1.0 if f.floor_hue <= 0.4 else -1.0) for image, f in dataset)
    hue_cases = [(image, s) for image, s in towards_middle if low <= s <= high][:16]
    assert len(hue_cases) == 16, (low, high)
    half_step = (HUES[1] - HUES[0]) / 2
    hue_codes = [pipe.encode([image]) for image, _ in hue_cases]
    before = [estimate(pipe.decode(c)[0]) for c in hue_codes]
    moved = [
        estimate(pipe.decode(pipe.edit(c, {"floor_hue": s}))[0])
        for c, (_, s) in zip(hue_codes, hue_cases, strict=True)
    ]
    success = sum(
        hue_shift(b["floor_hue"], a["floor_hue"]) * s >= half_step
        for a, b, (_, s) in zip(moved, before, hue_cases, strict=True)
    )
    wall_kept = sum(
        hue_gap(a["wall_hue"], b["wall_hue"]) < half_step
        for a, b in zip(moved, before, strict=True)
    )
    assert success >= 15 and wall_kept >= 15, (success, wall_kept)
    codes = [pipe.encode([image]) for image, _ in scenes]
    before = [estimate(pipe.decode(c)[0]) for c in codes]
    # Only where the reader sees the object's shape (not when its hue matches the background).
    others = [
        c
        for c, b, (_, factors) in zip(codes, before, scenes, strict=True)
        if factors.shape != "sphere" and b["shape"] is not None
    ]
    made = [estimate(pipe.decode(pipe.edit(c, {"sphere": 1.0}))[0])["shape"] for c in others]
    assert len(others) >= 5 and made.count("sphere") >= 0.8 * len(others), made
