"""Encoder-side refinement (hvae.refine), on tiny untrained models."""

import numpy as np
import pytest
import torch

from hvae.cli import main
from hvae.data.images import to_tensor
from hvae.data.shapes import ShapesDataset
from hvae.entropy import encode_symbols, rounded_rate_bits, symbol_bits
from hvae.errors import HVAEError
from hvae.refine import rd_cost, refine_features
from tests.conftest import tiny_codec


@pytest.fixture(scope="module")
def codec():
    return tiny_codec()


@pytest.fixture(scope="module")
def scene():
    return ShapesDataset(1, seed=5, size=64)[0][0]


def test_rounded_rate_rebuilds_what_the_coder_rebuilds_and_costs_what_it_costs(codec, scene):
    features = codec.features_of(scene)
    for step in (0.1, 0.5, 1.6):
        chunks, rebuilt = encode_symbols(codec.hvae, features, step)
        bits, differentiable = rounded_rate_bits(codec.hvae, features, torch.tensor([step]))
        assert torch.allclose(differentiable, rebuilt, atol=1e-5)
        coder_bits = sum(symbol_bits(c.symbols, c.indexes) for c in chunks)
        # the coder snaps each std to the table; the search uses the std itself
        assert abs(bits.item() - coder_bits) < 0.05 * coder_bits


def test_refinement_lowers_the_rate_distortion_cost_and_leaves_the_models_alone(codec, scene):
    features = codec.features_of(scene)
    target = to_tensor([scene])
    step = 0.5
    models = [*codec.hvae.parameters(), *codec.autoencoder.parameters()]
    before = [p.clone() for p in models]
    refined = refine_features(
        codec.stage1, codec.hvae, features, target, step, iterations=20, learning_rate=0.1
    )
    start_cost = rd_cost(codec.stage1, codec.hvae, features, target, step, bf16=False)[0].item()
    end_cost = rd_cost(codec.stage1, codec.hvae, refined, target, step, bf16=False)[0].item()
    assert end_cost < 0.97 * start_cost
    assert all(torch.equal(a, b) for a, b in zip(before, models, strict=True))
    assert all(p.grad is None and p.requires_grad for p in models)
    assert refine_features(codec.stage1, codec.hvae, features, target, step, 0) is features


def test_refined_payloads_decode_with_the_same_decoder(codec, scene):
    plain = codec.encode_image(scene, 3, refine_steps=0)
    refined = codec.encode_image(scene, 3, refine_steps=10)
    assert plain != refined
    assert codec.encode_image(scene, 3, refine_steps=10) == refined  # deterministic
    size = (scene.height, scene.width)

    def error(payload):
        decoded = np.asarray(codec.decode_image(payload, size), dtype=float)
        return np.abs(decoded - np.asarray(scene, dtype=float)).mean()

    # a desynchronised stream decodes to noise, far from the unrefined decode's error
    assert error(refined) < 1.2 * error(plain)


def test_bad_refine_steps_are_refused(codec, scene, tmp_path, capsys):
    for bad in (-1, True, 2.5):
        with pytest.raises(HVAEError, match="refine_steps"):
            codec.encode_image(scene, 3, refine_steps=bad)
    scene.save(tmp_path / "scene.png")
    args = ["compress", str(tmp_path / "scene.png"), "-o", str(tmp_path / "a.hvz")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--refine-steps", "-1"])
    assert exit_info.value.code == 2
    assert "whole number >= 0" in capsys.readouterr().err


def test_ms_ssim_tuning_lowers_its_own_cost_and_bad_tunings_are_refused(codec):
    scene = ShapesDataset(1, seed=6, size=192)[0][0]  # MS-SSIM needs 176 pixels a side
    features = codec.features_of(scene)
    target = to_tensor([scene])

    def cost(f, tune):
        return rd_cost(codec.stage1, codec.hvae, f, target, 0.5, False, tune=tune)[0].item()

    refined = refine_features(
        codec.stage1, codec.hvae, features, target, 0.5, 10, 0.1, tune="ms-ssim"
    )
    assert cost(refined, "ms-ssim") < cost(features, "ms-ssim")
    with pytest.raises(HVAEError, match="tune must be one of"):
        codec.encode_image(scene, 3, tune="ssim")
    with pytest.raises(HVAEError, match="tune must be one of"):
        refine_features(codec.stage1, codec.hvae, features, target, 0.5, 1, tune="ssim")
