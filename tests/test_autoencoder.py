import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from hvae.autoencoder import FeatureAutoencoder, load_autoencoder
from hvae.data.shapes import render
from hvae.errors import HVAEError
from hvae.patch_autoencoder import PatchAutoencoder


def tiny_kl():
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.5,
        shift_factor=0.25,
    )


def tiny_taesd():
    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )


MODELS = {
    "kl": (tiny_kl, 2),
    "tiny": (tiny_taesd, 8),
    "patch": (lambda: PatchAutoencoder(block_out_channels=(8, 16)), 4),
}


@pytest.mark.parametrize("kind", MODELS)
def test_loads_any_diffusers_autoencoder_from_a_folder_by_class_name(tmp_path, kind):
    make, stride = MODELS[kind]
    model = make()
    model.save_pretrained(tmp_path)
    loaded = load_autoencoder(tmp_path)
    assert type(loaded) is type(model)
    stage1 = FeatureAutoencoder(loaded)
    assert stage1.stride == stride
    images = torch.rand(3, 3, 37, 45) * 2 - 1  # not multiples of any stride
    features = stage1.encode(images)
    assert features.shape[-2:] == (-(-37 // stride), -(-45 // stride))
    decoded = stage1.decode(features, (37, 45))
    assert decoded.shape == (3, 3, 37, 45)
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_scaling_and_shift_factors_are_applied_both_ways():
    model = tiny_kl().eval()
    stage1 = FeatureAutoencoder(model)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        raw = model.encode(images).latent_dist.mode()
        expected_pixels = model.decode(raw).sample.clamp(-1, 1)
    features = stage1.encode(images)
    torch.testing.assert_close(features, (raw - 0.25) * 0.5)
    torch.testing.assert_close(stage1.decode(features), expected_pixels)


def test_batching_does_not_change_results_and_pil_input_works():
    stage1 = FeatureAutoencoder(PatchAutoencoder(block_out_channels=(8, 16)).eval())
    images = [render(0.1 * i, 0.2, 0.3, 1.0, "cube", 0.0, size=32) for i in range(5)]
    whole = stage1.encode(images)
    stage1.batch_size = 2
    torch.testing.assert_close(stage1.encode(images), whole)


def test_bad_folders_get_clear_errors(tmp_path):
    with pytest.raises(HVAEError, match="no config.json"):
        load_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text('{"_class_name": "NotAModel"}')
    with pytest.raises(HVAEError, match="NotAModel"):
        load_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HVAEError, match="invalid JSON"):
        load_autoencoder(tmp_path)


def test_mixed_image_sizes_in_one_batch_are_refused():
    stage1 = FeatureAutoencoder(PatchAutoencoder(block_out_channels=(8, 16)).eval())
    with pytest.raises(HVAEError, match="share a size"):
        stage1.encode(
            [
                render(0.1, 0.2, 0.3, 1.0, "cube", 0.0, size=32),
                render(0.1, 0.2, 0.3, 1.0, "cube", 0.0, size=48),
            ]
        )
