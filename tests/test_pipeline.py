import pytest
import torch

from hvae.data.shapes import ShapesDataset
from hvae.errors import HVAEError
from pipelines import HVAEPipeline


def scenes(n=3, size=64):
    dataset = ShapesDataset(n, seed=11, size=size)
    return [dataset[i][0] for i in range(n)]


def pixels(images):
    return [image.tobytes() for image in images]


def test_save_then_load_gives_bit_identical_outputs(tiny_pipeline, tmp_path):
    tiny_pipeline.register_direction(
        "d", torch.randn(tiny_pipeline.hvae.latent_groups[0].z_channels)
    )
    tiny_pipeline.save_pretrained(tmp_path)
    loaded = HVAEPipeline.from_pretrained(tmp_path)
    images = scenes()
    assert pixels(tiny_pipeline(images)) == pixels(loaded(images))
    assert pixels(tiny_pipeline(images, edits={"d": 1.5})) == pixels(
        loaded(images, edits={"d": 1.5})
    )
    assert pixels(tiny_pipeline.sample(2, 0.8, seed=4)) == pixels(loaded.sample(2, 0.8, seed=4))
    assert loaded.directions == ["d"]
    assert loaded.fingerprint() == tiny_pipeline.fingerprint()


def test_encode_and_decode_are_deterministic(tiny_pipeline):
    images = scenes()
    a, b = tiny_pipeline.encode(images), tiny_pipeline.encode(images)
    assert all(torch.equal(x, y) for x, y in zip(a.latents, b.latents, strict=True))
    assert pixels(tiny_pipeline.decode(a)) == pixels(tiny_pipeline.decode(b))
    assert a.image_size == (64, 64)


def test_edit_moves_only_its_group_and_keeps_the_input(tiny_pipeline):
    group0 = tiny_pipeline.hvae.latent_groups[0].z_channels
    tiny_pipeline.register_direction("up", torch.ones(group0))
    codes = tiny_pipeline.encode(scenes())
    before = [z.clone() for z in codes.latents]
    edited = tiny_pipeline.edit(codes, {"up": 2.0})
    torch.testing.assert_close(edited.latents[0], before[0] + 2.0)
    for i in range(1, len(before)):
        assert torch.equal(edited.latents[i], before[i])
    assert all(torch.equal(z, b) for z, b in zip(codes.latents, before, strict=True))
    with pytest.raises(HVAEError, match="unknown direction"):
        tiny_pipeline.edit(codes, {"nope": 1.0})
    with pytest.raises(HVAEError, match="channels"):
        tiny_pipeline.register_direction("bad", torch.ones(group0 + 1))


def test_samples_depend_on_seed_and_index_not_on_batching(tiny_pipeline):
    together = tiny_pipeline.sample(4, temperature=1.0, seed=3)
    pieces = tiny_pipeline.sample(1, temperature=1.0, seed=3, start=2)
    assert pixels(together[2:3]) == pixels(pieces)
    assert pixels(tiny_pipeline.sample(1, seed=4)) != pixels(together[:1])


def test_wrong_folders_get_clear_errors(tmp_path):
    with pytest.raises(HVAEError, match="model_index.json"):
        HVAEPipeline.from_pretrained(tmp_path)


def test_images_of_any_size_encode_and_decode_back_to_their_size(tiny_pipeline):
    image = scenes(1, size=40)[0].crop((0, 0, 37, 29))  # fits neither the stride nor the groups
    codes = tiny_pipeline.encode([image])
    assert tiny_pipeline.decode(codes)[0].size == (37, 29)
    tiny_pipeline.register_direction(
        "up", torch.ones(tiny_pipeline.hvae.latent_groups[0].z_channels)
    )
    assert tiny_pipeline.decode(tiny_pipeline.edit(codes, {"up": 1.0}))[0].size == (37, 29)


def test_encode_refuses_sizes_that_padding_makes_too_large_or_too_thin(tiny_pipeline):
    from PIL import Image

    assert tiny_pipeline.pixel_multiple == 16
    with pytest.raises(HVAEError, match="8000x1 \\(padded to 8000x16\\) is more than 256 times"):
        tiny_pipeline.encode([Image.new("RGB", (8000, 1))])
