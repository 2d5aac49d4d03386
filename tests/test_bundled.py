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
