import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hvae.layers import LatentGroup, discretized_gaussian_log_prob, parse_spec
from hvae.model import HierarchicalVAE
from hvae.train_hvae import make_hvae

from .conftest import tiny_hvae


def features(n=4, size=16, seed=0):
    return torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))


def test_spec_parsing_and_typos():
    assert parse_spec("16x2,16d2, 8m4", "xdm") == [(16, "x", 2), (16, "d", 2), (8, "m", 4)]
    with pytest.raises(ValueError, match="16q2"):
        parse_spec("16q2", "xd")
    with pytest.raises(ValueError, match="no latent group"):
        HierarchicalVAE(decoder_blocks="16r2")


def test_groups_span_three_resolutions_with_a_global_group(hvae_model):
    shapes = hvae_model.group_shapes((16, 16))
    assert shapes[0][1:] == (1, 1)
    assert len({s[1:] for s in shapes}) >= 3
    codes = hvae_model.encode(features())
    assert [tuple(z.shape[1:]) for z in codes.latents] == shapes


def test_discretized_likelihood_is_a_probability_over_bins():
    bin_width = 0.25
    grid = torch.arange(-160, 161) * bin_width
    for mean, log_scale in [(0.1, math.log(0.5)), (-1.3, math.log(0.05)), (2.0, math.log(3.0))]:
        log_p = discretized_gaussian_log_prob(
            grid, torch.tensor(mean), torch.tensor(log_scale), bin_width
        )
        assert torch.isfinite(log_p).all()
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=2e-3)
    # Far tail: finite, and decreasing with distance.
    far = discretized_gaussian_log_prob(
        torch.tensor([20.0, 30.0]), torch.tensor(0.0), torch.tensor(0.0), bin_width
    )
    assert torch.isfinite(far).all() and far[1] < far[0]


def test_residual_posterior_kl_matches_torch_distributions():
    torch.manual_seed(0)
    group = LatentGroup(resolution=4, width=8, hidden=8, z_channels=3, depth_scale=1.0)
    for p in group.parameters():  # non-trivial prior and posterior
        torch.nn.init.normal_(p, std=0.3)
    x, act = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    _, state = group(x, act, None, lambda shape: torch.randn(shape), 1.0, use_mean=True)
    q = Normal(state.posterior_mean, state.posterior_log_scale.exp())
    p = Normal(state.prior_mean, state.prior_log_scale.exp())
    torch.testing.assert_close(state.kl, kl_divergence(q, p), rtol=1e-4, atol=1e-5)


def test_forward_reports_per_group_kl_and_free_bits_only_change_the_loss(hvae_model):
    x = features()
    torch.manual_seed(1)
    plain = hvae_model(x, kl_weight=1.0, free_bits=0.0)
    torch.manual_seed(1)
    floored = hvae_model(x, kl_weight=1.0, free_bits=5.0)
    assert len(plain.kl_bits_per_dim) == len(hvae_model.latent_groups)
    assert all(kl >= 0 for kl in plain.kl_bits_per_dim)
    torch.testing.assert_close(plain.bits_per_dim, floored.bits_per_dim)
    assert floored.loss > plain.loss
    torch.manual_seed(1)
    warm = hvae_model(x, kl_weight=0.0)
    assert warm.loss < plain.loss


def test_encode_decode_are_deterministic_in_eval_mode(hvae_model):
    x = features()
    a, b = hvae_model.encode(x), hvae_model.encode(x)
    for za, zb in zip(a.latents, b.latents, strict=True):
        assert torch.equal(za, zb)
    assert torch.equal(hvae_model.decode(a), hvae_model.decode(b))


def test_decode_samples_missing_groups_from_the_prior(hvae_model):
    codes = hvae_model.encode(features())
    top_only = [codes.latents[0]] + [None] * (len(codes.latents) - 1)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(
        hvae_model.decode(top_only, generator=g()), hvae_model.decode(top_only, generator=g())
    )
    assert not torch.equal(hvae_model.decode(top_only, generator=g()), hvae_model.decode(codes))
    with pytest.raises(ValueError, match="at least one"):
        hvae_model.decode([None] * len(codes.latents))


def test_temperature_and_per_image_generators(hvae_model):
    zero_a = hvae_model.sample(2, temperature=0.0)
    zero_b = hvae_model.sample(2, temperature=0.0)
    assert torch.equal(zero_a, zero_b)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    together = hvae_model.sample(3, temperature=1.0, generator=gens([7, 8, 9]))
    alone = hvae_model.sample(1, temperature=1.0, generator=gens([8]))
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-5)
    hot = hvae_model.sample(3, temperature=1.0, generator=gens([7, 8, 9]))
    assert torch.equal(together, hot)


def test_feature_maps_of_other_sizes_encode(hvae_model):
    codes = hvae_model.encode(features(size=32))
    assert codes.feature_size == (32, 32)
    assert codes.latents[0].shape[-2:] == (1, 1)
    out = hvae_model.decode(codes)
    assert out.shape == (4, 4, 32, 32)
    with pytest.raises(ValueError, match="multiples"):
        hvae_model.encode(torch.randn(1, 4, 18, 18))
    with pytest.raises(ValueError, match="expected features"):
        hvae_model.encode(torch.randn(1, 3, 16, 16))


def test_flat_preset_is_a_single_group_model_of_similar_size():
    flat, base = make_hvae("flat", 4, 16), make_hvae("base", 4, 16)
    assert len(flat.latent_groups) == 1 and len(base.latent_groups) >= 3
    n_flat = sum(p.numel() for p in flat.parameters())
    n_base = sum(p.numel() for p in base.parameters())
    assert abs(n_flat - n_base) / n_base < 0.15


def test_code_length_equals_forward_bits(hvae_model):
    x = features()
    bits = hvae_model.code_length_bits(x, generator=torch.Generator().manual_seed(0))
    assert bits.shape == (4,) and torch.isfinite(bits).all() and (bits > 0).all()
    torch.manual_seed(3)
    out = hvae_model(x)
    assert out.bits_per_dim.item() == pytest.approx(bits.mean().item() / x[0].numel(), rel=0.2)


def test_save_and_load_give_bit_identical_outputs(tmp_path):
    model = tiny_hvae()
    model.save_pretrained(tmp_path)
    loaded = HierarchicalVAE.from_pretrained(tmp_path).eval()
    x = features()
    assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
