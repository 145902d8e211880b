import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ddet import metrics
from ddet.data.color import rgb_to_ycbcr, ycbcr_to_rgb


def test_matlab_y_of_primaries():
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    # 16 + 65.481, 16 + 128.553, 16 + 24.966 (MATLAB rgb2ycbcr on uint8), rounded
    assert metrics.y_uint8(colours).tolist() == [[16, 235, 81, 145, 41]]


def test_ycbcr_round_trip_and_range():
    rgb = np.random.default_rng(0).random((5, 7, 3))
    ycbcr = rgb_to_ycbcr(rgb)
    assert np.allclose(ycbcr_to_rgb(ycbcr), rgb)
    assert np.allclose(rgb_to_ycbcr(np.ones((1, 1, 3)))[0, 0], np.array([235, 128, 128]) / 255)


def test_psnr_by_hand():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[1, 2] = 16  # mse = 256 / 16 = 16
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 16))
    assert metrics.psnr(a, a) == math.inf


def test_ssim_of_constant_images_by_hand():
    a, b = np.full((12, 12), 100.0), np.full((12, 12), 120.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)  # zero variances: contrast term is 1
    assert metrics.ssim(a, b) == pytest.approx(expected)
    assert metrics.ssim(a, a) == pytest.approx(1.0)


def test_agrees_with_scikit_image():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 36)).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    expected_ssim = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert metrics.ssim(a, b) == pytest.approx(expected_ssim, abs=1e-10)
    assert metrics.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))


def test_evaluate_crops_to_multiple_of_four_and_border():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 256, (22, 23, 3)).astype(np.uint8)
    output = target.copy()
    output[20:, :] = 0  # rows cut by the multiple-of-4 crop
    output[:, 20:] = 0
    assert metrics.evaluate(output, target)["psnr"] == math.inf
    output = target.copy()
    output[0, 0] = 255 - output[0, 0]  # inside the border, ignored with border=1
    assert metrics.evaluate(output, target)["psnr"] < math.inf
    assert metrics.evaluate(output, target, border=1)["psnr"] == math.inf


def test_evaluate_float_and_uint16_inputs_match_uint8():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    output = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    reference = metrics.evaluate(output, target)
    as_float = metrics.evaluate(output / 255.0, target.astype(np.float32) / 255.0)
    as_uint16 = metrics.evaluate(output.astype(np.uint16) * 257, target.astype(np.uint16) * 257)
    assert as_float == pytest.approx(reference)
    assert as_uint16 == pytest.approx(reference)


def test_patch_averaging_matches_manual_windows():
    rng = np.random.default_rng(4)
    target = rng.integers(0, 256, (20, 20)).astype(np.uint8)
    output = np.clip(target + rng.normal(0, 8, target.shape), 0, 255).astype(np.uint8)
    # starts 0, 6, then 8 so that the last window ends at the edge
    windows = [(slice(t, t + 12), slice(s, s + 12)) for t in (0, 6, 8) for s in (0, 6, 8)]
    result = metrics.evaluate(output, target, patch=12, stride=6)
    assert result["psnr"] == pytest.approx(np.mean([metrics.psnr(output[w], target[w]) for w in windows]))
    assert result["ssim"] == pytest.approx(np.mean([metrics.ssim(output[w], target[w]) for w in windows]))
    # an image no larger than the patch is one window
    assert metrics.evaluate(output, target, patch=1200) == pytest.approx(metrics.evaluate(output, target))


def test_shape_mismatch_and_bad_dtype_are_clear():
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate(np.zeros((12, 12), np.uint8), np.zeros((16, 16), np.uint8))
    with pytest.raises(TypeError, match="dtype"):
        metrics.evaluate(np.zeros((12, 12), np.int32), np.zeros((12, 12), np.int32))
    with pytest.raises(ValueError, match="11"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_summaries_of_the_model_and_of_the_bicubic_baseline():
    rows = [
        {"psnr": 30.0, "ssim": 0.9, "bicubic_psnr": 28.0, "bicubic_ssim": 0.8},
        {"psnr": 32.0, "ssim": 0.7, "bicubic_psnr": 29.0, "bicubic_ssim": 0.6},
    ]
    assert metrics.summarize(rows) == pytest.approx({"psnr": 31.0, "ssim": 0.8})
    assert metrics.summarize(rows, prefix="bicubic_") == pytest.approx({"psnr": 28.5, "ssim": 0.7})
    with pytest.raises(ValueError, match="no images"):
        metrics.summarize([])
