import numpy as np
import pytest
import torch

from hvae.data.shapes import ShapesDataset
from hvae.directions import FeatureFlows
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


def _with_flow(pipe) -> None:
    """Register a feature flow "warm" with a random generator, as fitted flows are stored."""
    flows = FeatureFlows(["warm"], channels=pipe.hvae.config.in_channels)
    torch.manual_seed(2)
    flows.generators[0, :-1] = 0.1 * torch.randn(flows.state_size - 1, flows.state_size)
    group0 = pipe.hvae.latent_groups[0].z_channels
    pipe.register_direction("warm", torch.zeros(group0), field=flows, units="sd")
    pipe.register_direction("up", torch.ones(group0))


def test_feature_flow_edits_skip_stage_2_and_match_the_codes_path(tiny_pipeline, monkeypatch):
    _with_flow(tiny_pipeline)
    image = scenes(1, size=40)[0].crop((0, 0, 37, 29))
    through_codes = tiny_pipeline.decode_tensor(
        tiny_pipeline.edit(tiny_pipeline.encode([image]), {"warm": 1.5})
    )
    unedited = tiny_pipeline.decode_tensor(tiny_pipeline.encode([image]))
    with monkeypatch.context() as patch:
        patch.setattr(tiny_pipeline.hvae, "encode", lambda *a: pytest.fail("stage 2 ran"))
        (edited,) = tiny_pipeline([image], edits={"warm": 1.5})
        (plain,) = tiny_pipeline([image])
    assert edited.size == plain.size == (37, 29)
    # Stage 2's decode plus the kept detail rebuilds stage 1's features to float rounding:
    # pixels agree to within one level of 255.
    for ours, theirs in ((edited, through_codes), (plain, unedited)):
        levels = torch.from_numpy(np.array(ours)).permute(2, 0, 1).float()
        expected = ((theirs[0] + 1) * 127.5).clamp(0, 255)
        assert (levels - expected).abs().max() <= 1.0
    assert pixels([edited]) != pixels([plain])


def test_latent_edits_of_images_over_the_latent_limit_are_refused_naming_it(
    tiny_pipeline, monkeypatch
):
    _with_flow(tiny_pipeline)
    monkeypatch.setattr("pipelines.hvae_pipeline.MAX_LATENT_PIXELS", 48 * 48)
    large = scenes(1, size=64)[0]
    with pytest.raises(HVAEError, match=r"64x64 pixels is over the limit of 2304: latent codes"):
        tiny_pipeline([large], edits={"up": 1.0})
    with pytest.raises(HVAEError, match="feature-flow edits take images up to 64 MP"):
        tiny_pipeline.encode([large])
    (edited,) = tiny_pipeline([large], edits={"warm": 1.0})  # no latent codes needed
    assert edited.size == (64, 64)
    with pytest.raises(HVAEError, match="feature-flow directions only"):
        tiny_pipeline.edit_features([large], {"up": 1.0, "warm": 1.0})
