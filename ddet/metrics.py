"""The RealSR evaluation protocol (Cai et al., ICCV 2019), as this project fixes it.

Both images are reduced to the Y channel of MATLAB ``rgb2ycbcr`` rounded to uint8, cropped to a
multiple of 4 (top-left anchored) and optionally shaved by ``border`` pixels; PSNR uses peak 255 and
SSIM the 11×11 Gaussian window (σ = 1.5), K = (0.01, 0.03) with valid filtering, no down-sampling.
With ``patch`` set, both scores are averaged over ``patch``×``patch`` windows taken every ``stride``
pixels (the official script uses 1200 and 800 on large images).

Accepted images: H×W (already Y) or H×W×3 (RGB) numpy arrays, uint8, uint16 or floats in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ddet.data.color import rgb_to_y

MULTIPLE = 4
PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
OFFICIAL_PATCH = 1200
OFFICIAL_STRIDE = 800


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 from uint8, uint16 (rounded 65535 → 255 scaling) or floats in [0, 1] (clipped, rounded)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image / 257.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise TypeError(f"unsupported image dtype {image.dtype}: expected uint8, uint16 or float in [0, 1]")


def y_uint8(image: np.ndarray) -> np.ndarray:
    """The protocol's luminance: MATLAB ``rgb2ycbcr`` Y of the uint8 image, rounded to uint8."""
    image = to_uint8(image)
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[-1] == 1:
        return image[..., 0]
    y = rgb_to_y(image.astype(np.float64) / 255.0) * 255.0
    return np.round(y).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """PSNR in dB of two equally shaped arrays (inf when identical)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check_same_shape(a, b)
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)`` (the 2-D window is its outer product)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return taps / taps.sum()


def _filter_valid(image, taps):
    """Separable 'valid' correlation with the same taps along both axes."""
    n = len(taps)
    rows = sum(t * image[k : image.shape[0] - n + 1 + k] for k, t in enumerate(taps))
    return sum(t * rows[:, k : rows.shape[1] - n + 1 + k] for k, t in enumerate(taps))


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    peak: float = PEAK,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    k: tuple[float, float] = SSIM_K,
) -> float:
    """Mean SSIM (Wang et al. 2004) of two grey images, valid filtering, no down-sampling."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check_same_shape(a, b)
    if a.ndim != 2 or min(a.shape) < window:
        raise ValueError(f"SSIM needs 2-D images of at least {window}×{window} pixels, got {a.shape}")
    taps = gaussian_window(window, sigma)
    c1, c2 = (k[0] * peak) ** 2, (k[1] * peak) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _check_same_shape(a, b):
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def _patch_starts(length, patch, stride):
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def evaluate(
    output: np.ndarray, target: np.ndarray, border: int = 0, patch: int | None = None, stride: int = OFFICIAL_STRIDE
) -> dict[str, float]:
    """PSNR and SSIM of ``output`` against ``target`` under the RealSR protocol: {"psnr", "ssim"}."""
    out_y, ref_y = y_uint8(output), y_uint8(target)
    _check_same_shape(out_y, ref_y)
    height = out_y.shape[0] // MULTIPLE * MULTIPLE
    width = out_y.shape[1] // MULTIPLE * MULTIPLE
    out_y, ref_y = out_y[:height, :width], ref_y[:height, :width]
    if border:
        out_y, ref_y = out_y[border:-border, border:-border], ref_y[border:-border, border:-border]
    if patch is None:
        return {"psnr": psnr(out_y, ref_y), "ssim": ssim(out_y, ref_y)}
    windows = [
        (slice(top, top + patch), slice(left, left + patch))
        for top in _patch_starts(out_y.shape[0], patch, stride)
        for left in _patch_starts(out_y.shape[1], patch, stride)
    ]
    return {
        "psnr": float(np.mean([psnr(out_y[w], ref_y[w]) for w in windows])),
        "ssim": float(np.mean([ssim(out_y[w], ref_y[w]) for w in windows])),
    }


def summarize(rows: Sequence[Mapping[str, float | str]], prefix: str = "") -> dict[str, float]:
    """Mean PSNR and SSIM over per-image result dicts, read from their ``prefix + "psnr"`` and
    ``prefix + "ssim"`` entries (``prefix="bicubic_"``: the bicubic baseline's)."""
    if not rows:
        raise ValueError("no images to summarize")
    return {key: float(np.mean([row[prefix + key] for row in rows])) for key in ("psnr", "ssim")}
