import pytest
import torch

from hvae.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr
from hvae.rd_benchmark import bd_rate, value_at_bpp


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 192, 200) * 2 - 1
    scores = [
        float(ms_ssim(image, (image + s * torch.randn_like(image)).clamp(-1, 1)))
        for s in (0.0, 0.05, 0.3)
    ]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert scores[0] > scores[1] > scores[2] > 0
    with pytest.raises(ValueError, match="at least 176"):
        ms_ssim(image[..., :100, :], image[..., :100, :])


def test_ms_ssim_accepts_its_smallest_size_and_refuses_one_less():
    # 161 pixels was once accepted here and crashed in the fifth scale's convolution.
    image = torch.rand(1, 3, MS_SSIM_MIN_SIDE, MS_SSIM_MIN_SIDE) * 2 - 1
    noisy = (image + 0.1 * torch.randn_like(image)).clamp(-1, 1)
    assert 0 < float(ms_ssim(image, noisy)) < 1
    with pytest.raises(ValueError, match="at least 176"):
        ms_ssim(image[..., 1:, :], noisy[..., 1:, :])


def test_ms_ssim_keeps_full_precision_inside_bf16_autocast():
    # Training losses call it under autocast; in bf16 its variance terms lost most
    # of their precision (0.930 read as 0.880 to 0.919).
    torch.manual_seed(0)
    image = torch.rand(2, 3, MS_SSIM_MIN_SIDE, MS_SSIM_MIN_SIDE) * 2 - 1
    noisy = (image + 0.2 * torch.randn_like(image)).clamp(-1, 1)
    exact = ms_ssim(image, noisy, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = ms_ssim(image, noisy, dtype=torch.float32)
    torch.testing.assert_close(under_autocast, exact)


def test_psnr_of_a_known_error():
    a = torch.zeros(1, 3, 8, 8)
    # error 0.2 on a [-1, 1] scale = 0.1 of the peak-to-peak range -> 20 dB
    assert float(psnr(a + 0.2, a)) == pytest.approx(20.0, abs=1e-4)


def test_bd_rate_measures_a_known_rate_saving():
    anchor = [(r, 30 + 10 * r) for r in (0.2, 0.4, 0.6, 0.8, 1.0)]
    half = [(r / 2, q) for r, q in anchor]  # same quality at half the rate
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-6)
    assert bd_rate(anchor, half) == pytest.approx(-50.0, abs=1e-3)
    assert bd_rate(anchor, [(r, q + 100) for r, q in anchor]) is None  # no overlap
    curve = [{"bpp": r, "psnr": q} for r, q in anchor]
    assert value_at_bpp(curve, 0.5, "psnr") == pytest.approx(35.0)
    assert value_at_bpp(curve, 2.0, "psnr") is None
