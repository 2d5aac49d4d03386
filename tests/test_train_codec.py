"""The codec recipe end to end on a tiny autoencoder: train, save, resume, compress."""

import json

import numpy as np
import pytest
import torch

from hvae.cli import main
from hvae.data.shapes import ShapesDataset
from hvae.errors import HVAEError
from hvae.model import HierarchicalVAE
from hvae.train_codec import (
    CODEC_PRESETS,
    crop_sampler,
    load_entropy_model,
    make_codec_model,
    make_rate_loss,
)
from pipelines import HVAECompressionPipeline
from tests.conftest import scene_folder, tiny_autoencoder


def test_rate_loss_is_lower_at_coarser_steps():
    model = make_codec_model("tiny", 4)
    features = torch.randn(4, 4, 16, 16)
    fine, _ = make_rate_loss(0.05, 0.05, seed=0)(model, features, 0)
    coarse, _ = make_rate_loss(2.0, 2.0, seed=0)(model, features, 0)
    assert float(coarse) < float(fine)


def codec_args(tmp_path, out) -> list[str]:
    """train-codec on a tiny autoencoder and three scenes, all under ``tmp_path``."""
    autoencoder = tmp_path / "ae"
    if not autoencoder.exists():
        tiny_autoencoder().save_pretrained(autoencoder)
    data = scene_folder(tmp_path / "images")
    return [
        "train-codec",
        "--autoencoder",
        str(autoencoder),
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--crop",
        "16",
        "--scales",
        "1",
        "0.5",
        "--batch-size",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--checkpoint-every",
        "2",
    ]


def test_train_codec_saves_a_pipeline_that_compresses_and_resumes(tmp_path):
    out = tmp_path / "codec"
    common = codec_args(tmp_path, out)
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "4"]) == 0  # resumes at step 2
    steps = [
        json.loads(line)["step"]
        for line in (out / "run" / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 4
    pipe = HVAECompressionPipeline.from_pretrained(out)
    image = ShapesDataset(1, seed=1, size=128)[0][0]
    decoded = pipe.decompress(pipe.compress(image, quality=6))[0]
    assert decoded.size == image.size
    assert np.asarray(decoded).std() > 0


def test_init_from_continues_the_saved_entropy_model(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*codec_args(tmp_path, first), "--steps", "2"]) == 0
    # A learning rate too small to move the weights: what comes out is what went in.
    continued = [*codec_args(tmp_path, second), "--steps", "1", "--lr", "1e-12"]
    assert main([*continued, "--init-from", str(first)]) == 0
    source = HierarchicalVAE.from_pretrained(first / "hvae").state_dict()
    result = HierarchicalVAE.from_pretrained(second / "hvae").state_dict()
    assert all(torch.allclose(source[k], result[k], atol=1e-6) for k in source)
    # The saved config is the model's, not a record of where it was loaded from.
    assert "_name_or_path" not in json.loads((second / "hvae" / "config.json").read_text())
    # Without --init-from the same seed starts from a fresh model, far from the trained one.
    fresh = tmp_path / "fresh"
    assert main([*codec_args(tmp_path, fresh), "--steps", "1", "--lr", "1e-12"]) == 0
    restarted = HierarchicalVAE.from_pretrained(fresh / "hvae").state_dict()
    assert any(not torch.allclose(source[k], restarted[k], atol=1e-6) for k in source)


def test_init_from_refuses_what_is_not_a_matching_codec(tmp_path):
    with pytest.raises(HVAEError, match="no compression pipeline"):
        load_entropy_model(str(tmp_path), 4)
    make_codec_model("tiny", 4).save_pretrained(tmp_path / "codec" / "hvae")
    with pytest.raises(HVAEError, match="codes 4 feature channels, the autoencoder gives 8"):
        load_entropy_model(str(tmp_path / "codec"), 8)
    plain = HierarchicalVAE(in_channels=4, sample_size=16, **CODEC_PRESETS["tiny"])
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(HVAEError, match="not rate-conditioned"):
        load_entropy_model(str(tmp_path / "plain"), 4)


def test_mixed_crop_sides_draw_shapes_from_maps_that_hold_them():
    small, large = torch.zeros(2, 16, 40), torch.ones(2, 40, 40)
    sample = crop_sampler([small, large], (16, 32), batch_size=8, seed=0)
    shapes = set()
    for step in range(60):
        batch = sample(step)
        h, w = batch.shape[-2:]
        shapes.add((h, w))
        # Every step covers about as many positions as 8 crops of the smallest side.
        assert batch.shape[0] == round(8 * 16 * 16 / (h * w))
        if h > 16:  # only the large map holds a crop this tall
            assert bool((batch == 1).all())
        assert torch.equal(batch, sample(step))  # a pure function of the step
    assert shapes == {(16, 16), (16, 32), (32, 16), (32, 32)}
    with pytest.raises(HVAEError, match="holds a 16x48 crop"):
        crop_sampler([small, large], (16, 48), batch_size=8, seed=0)


def test_one_crop_side_draws_fixed_batches():
    maps = [torch.randn(2, 20, 24) for _ in range(3)]
    batch = crop_sampler(maps, 16, batch_size=5, seed=1)(7)
    assert batch.shape == (5, 2, 16, 16)
    assert torch.equal(batch, crop_sampler(maps, (16,), batch_size=5, seed=1)(7))
