"""Tiled stage-1 encode and decode (``hvae.autoencoder.Tiling``) against whole-image processing."""

import pytest
import torch
import torch.nn.functional as F

from hvae.autoencoder import FALLBACK_HALOS, FeatureAutoencoder, Tiling, tile_spans
from hvae.data.images import pad_to_multiple, to_pil, to_tensor
from hvae.errors import HVAEError
from hvae.patch_autoencoder import PatchAutoencoder
from tests.conftest import tiny_autoencoder

# Float32 tiles at the declared receptive field differ from whole images by rounding only
# (kernels sum in another order on other tile shapes): measured up to 1.5e-4 on random
# models, whose activations grow large, and 0.0 on the bundled photo autoencoder. A halo
# one step short of the receptive field misses by 6e-3 to 2.0.
TOLERANCE = 5e-4
SEAMS = 1e-3
SIZES = [(1, 300), (300, 1), (37, 45), (50, 90)]


def randomised(model):
    """``model`` with every convolution random: residual blocks start as the identity,
    which would hide most of the receptive field that halos must cover."""
    torch.manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim == 4:
                weight.normal_(0.0, (2.0 / weight[0].numel()) ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return randomised(tiny_autoencoder())  # stride 4, receptive field (20 px, 8 features)


def tiled(model, tile=16, **halos):
    return FeatureAutoencoder(model, tiling=Tiling(tile=tile, **halos))


def differences(stage1, model, images):
    """Max |tiled - whole| of the features and of the decoded images."""
    whole = FeatureAutoencoder(model, tiling=None)
    features = whole.encode(images)
    decoded = whole.decode(features)
    return (
        (stage1.encode(images) - features).abs().max().item(),
        (stage1.decode(features) - decoded).abs().max().item(),
    )


@pytest.mark.parametrize(
    "config",
    [
        {"block_out_channels": (4, 8), "layers_per_block": 1, "patch_size": 2},
        {"block_out_channels": (4, 8, 8), "layers_per_block": 1, "patch_size": 2},
        {"block_out_channels": (4, 8), "layers_per_block": 2, "patch_size": 4},  # as bundled
    ],
)
def test_the_declared_receptive_field_is_the_narrowest_exact_halo(config):
    """In float64, where no rounding hides anything: tiles with halos of the declared
    receptive field are the whole image exactly, and one step narrower they are not."""
    torch.manual_seed(0)
    model = randomised(PatchAutoencoder(latent_channels=4, **config)).double()
    pixels, features = model.receptive_field
    stride = model.spatial_stride
    images = torch.rand(1, 3, 160, 224, dtype=torch.float64) * 2 - 1
    exact = tiled(model, tile=64, encode_halo=pixels, decode_halo=features)
    assert differences(exact, model, images) == (0.0, 0.0)
    short = tiled(model, tile=64, encode_halo=pixels - stride, decode_halo=features - 1)
    assert min(differences(short, model, images)) > SEAMS


def test_an_image_within_one_tile_is_processed_whole_bit_for_bit(model):
    # 16 is exactly one tile; 13 pads to one; neither may take the tiled path.
    for size in [(16, 16), (13, 9)]:
        images = torch.rand(3, 3, *size) * 2 - 1
        padded = F.pad(images, (0, (-size[1]) % 4, 0, (-size[0]) % 4), mode="replicate")
        with torch.no_grad():
            latents = model.encode(padded).latents
            decoded = model.decode(latents).sample.clamp(-1, 1)
        features = tiled(model).encode(images)
        # Values and layout: later layers sum in another order on another memory layout.
        assert torch.equal(features, latents) and features.stride() == latents.stride()
        again = tiled(model).decode(latents)
        assert torch.equal(again, decoded) and again.stride() == decoded.stride()


@pytest.mark.parametrize("size", SIZES)
def test_tiles_match_the_whole_image_in_shape_and_values(model, size):
    torch.manual_seed(0)
    images = torch.rand(2, 3, *size) * 2 - 1
    whole = FeatureAutoencoder(model, tiling=None)
    features = whole.encode(images)
    decoded = whole.decode(features, size)

    tiled_features = tiled(model).encode(images)
    tiled_decoded = tiled(model).decode(features, size)
    assert tiled_features.shape == features.shape == (2, 4, -(-size[0] // 4), -(-size[1] // 4))
    assert tiled_decoded.shape == decoded.shape == (2, 3, *size)
    assert (tiled_features - features).abs().max() <= TOLERANCE
    assert (tiled_decoded - decoded).abs().max() <= TOLERANCE


def test_halos_narrower_than_the_receptive_field_show_seams(model):
    """The test above can fail: with short halos the tiles do differ from the whole image."""
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    short = tiled(model, encode_halo=16, decode_halo=7)
    assert min(differences(short, model, images)) > SEAMS


def test_the_model_sees_a_tile_and_the_halos_of_its_receptive_field(model):
    seen = {"encode": [], "decode": []}
    for name, shapes in seen.items():
        method = getattr(model, name)

        def record(x, *args, _method=method, _shapes=shapes, **kwargs):
            _shapes.append(tuple(x.shape[-2:]))
            return _method(x, *args, **kwargs)

        setattr(model, name, record)
    try:
        stage1 = tiled(model, tile=32)  # halos not given: the model's receptive field
        stage1.decode(stage1.encode(torch.rand(1, 3, 96, 160) * 2 - 1))
    finally:
        del model.encode, model.decode  # back to the class's methods
    # Interior tiles read a core and a halo on both sides: 32 + 2 * 20 pixels, 8 + 2 * 8
    # features (the tiny model's receptive field), and no tile more.
    assert len(seen["encode"]) == len(seen["decode"]) == 3 * 5
    assert max(max(shape) for shape in seen["encode"]) == 32 + 2 * 20
    assert max(max(shape) for shape in seen["decode"]) == 8 + 2 * 8


def test_models_that_declare_no_receptive_field_get_the_fallback_halos():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    model = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    stage1 = tiled(model, tile=64)
    images = torch.rand(1, 3, 8 * 64, 64) * 2 - 1  # 8 tiles high: one of them interior
    assert stage1.encode(images).shape == (1, 4, 64, 8)
    short = tiled(model, tile=64, encode_halo=FALLBACK_HALOS[0] // 2)
    # The fallback halo reaches further than half of it, so it differs from the whole less.
    assert differences(stage1, model, images)[0] < differences(short, model, images)[0]


def test_batches_and_tiles_combine(model):
    images = torch.rand(5, 3, 40, 56) * 2 - 1
    one_batch = FeatureAutoencoder(model, tiling=None).encode(images)
    stage1 = tiled(model)
    stage1.batch_size = 2
    # Batches of 2 and 5 sum in another order, with or without tiles.
    assert (stage1.encode(images) - one_batch).abs().max() <= TOLERANCE


def test_gradients_through_tiled_decoding_match_whole_decoding(model):
    features = torch.randn(1, 4, 20, 28)
    target = torch.rand(1, 3, 80, 112) * 2 - 1
    grads = []
    for stage1 in (FeatureAutoencoder(model, tiling=None), tiled(model)):
        start = features.clone().requires_grad_(True)
        loss = ((stage1.decode_with_grad(start) - target) ** 2).mean()
        (grad,) = torch.autograd.grad(loss, [start])
        grads.append(grad)
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= TOLERANCE * grads[0].abs().max()


def test_outputs_can_be_trained_on(model):
    """Tiles run in inference mode, but the features must still feed a model that learns."""
    features = tiled(model).encode(torch.rand(2, 3, 48, 48) * 2 - 1)
    layer = torch.nn.Conv2d(4, 4, 3)
    layer(features).sum().backward()
    assert layer.weight.grad is not None


@pytest.mark.parametrize(
    ("length", "core", "halo", "align"),
    [(1, 8, 4, 1), (300, 32, 8, 4), (33, 32, 8, 1), (1000, 256, 64, 8), (7, 3, 1, 1)],
)
def test_tile_spans_cover_the_length_once(length, core, halo, align):
    spans = tile_spans(length, core, halo, align)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (start, end, read_start, read_end), following in zip(
        spans, spans[1:] + [None], strict=True
    ):
        assert 0 < end - start <= core
        assert start % align == 0
        assert read_start == max(0, start - halo) and read_end == min(length, end + halo)
        if following is not None:
            assert following[0] == end


def test_bad_tiling_settings_are_refused():
    with pytest.raises(HVAEError, match="tile must be positive"):
        Tiling(tile=0)
    with pytest.raises(HVAEError, match="encode_halo"):
        Tiling(encode_halo=-1)
    with pytest.raises(HVAEError, match="decode_halo"):
        Tiling(decode_halo=1.5)


def test_pil_images_are_read_tile_by_tile_as_their_tensors_would_be(model):
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 45, 70) * 2 - 1
    images = to_pil(pixels)
    stage1 = tiled(model)
    assert torch.equal(stage1.encode(images), stage1.encode(to_tensor(images)))


def test_padding_to_a_multiple_matches_padding_the_image_first(model):
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 45, 70) * 2 - 1
    stage1 = tiled(model)
    features = stage1.encode(to_pil(pixels), multiple=32)
    assert features.shape[-2:] == (64 // 4, 96 // 4)
    whole = FeatureAutoencoder(model, tiling=None).encode(
        pad_to_multiple(to_tensor(to_pil(pixels)), 32)
    )
    assert (features - whole).abs().max() <= TOLERANCE
    with pytest.raises(HVAEError, match="multiples of the stride 4"):
        stage1.encode(pixels, multiple=6)


def test_decoding_to_pil_matches_decoding_to_tensors(model):
    torch.manual_seed(0)
    features = torch.randn(2, 4, 12, 20)
    stage1 = tiled(model)
    expected = to_pil(stage1.decode(features, (45, 77)))
    decoded = stage1.decode_pil(features, (45, 77))
    assert [image.size for image in decoded] == [(77, 45)] * 2
    for got, want in zip(decoded, expected, strict=True):
        assert got.tobytes() == want.tobytes()
