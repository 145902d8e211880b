"""Synthetic cross-camera pairs: what a second, lower-resolution camera would see of the same scene.

Given a sharp photograph (the HR target) and a seeded ``numpy.random.Generator``, ``degrade`` makes
the LR image at HR size, in this order (each step documented by the parameter that sets it):

1. misalignment — the scene re-sampled with a random shift in [−0.5, 0.5] px per axis and a rotation
   in ±``max_rotation_deg`` about the centre (imperfect registration of the two cameras);
2. lens blur — a random anisotropic Gaussian (σ per axis in ``blur_sigma`` × scale, random angle);
3. down-scale by the SR factor (bicubic with antialiasing, as MATLAB's ``imresize``);
4. sensor response — per-channel gain in ``gain`` and gamma in ``gamma``;
5. sensor noise — signal-dependent shot noise (variance ``shot`` · x) plus read noise (σ ``read``);
6. JPEG at a quality in ``jpeg_quality``;
7. bicubic up-scale back to the HR size (the network's input convention).

The HR image itself is never resampled, so the target stays exactly the photograph.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

from ddet.data.io import to_pil


@dataclasses.dataclass(frozen=True)
class Degradation:
    """Ranges of the random draws; defaults model two registered cameras at base ISO: residual
    misalignment below a pixel everywhere in a 600-pixel frame (0.05° moves a corner 0.3 px),
    noise up to σ ≈ 5/255 at white, in-camera JPEG quality."""

    max_shift_px: float = 0.5
    max_rotation_deg: float = 0.05
    blur_sigma: tuple = (0.2, 0.6)
    gain: tuple = (0.97, 1.01)
    gamma: tuple = (0.97, 1.03)
    shot: tuple = (0.0, 0.0004)
    read: tuple = (0.0, 0.004)
    jpeg_quality: tuple = (85, 95)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize (antialiased when shrinking) of a float H×W×C array, channel by channel."""
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F").resize((width, height), Image.BICUBIC)
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def _misalign(image, rng, spec):
    height, width = image.shape[:2]
    angle = math.radians(rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg))
    shift_x, shift_y = rng.uniform(-spec.max_shift_px, spec.max_shift_px, size=2)
    # Room for the rotated corners, so no empty border enters the frame.
    pad = int(math.ceil(math.hypot(height, width) / 2 * abs(math.sin(angle)) + spec.max_shift_px)) + 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    centre_x, centre_y = padded.shape[1] / 2, padded.shape[0] / 2
    cos, sin = math.cos(angle), math.sin(angle)
    # Pillow's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
    coefficients = (
        cos,
        -sin,
        centre_x - cos * centre_x + sin * centre_y + shift_x,
        sin,
        cos,
        centre_y - sin * centre_x - cos * centre_y + shift_y,
    )
    size = (padded.shape[1], padded.shape[0])
    warped = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(padded[..., c]), mode="F").transform(
                size, Image.AFFINE, coefficients, Image.BICUBIC
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(warped, axis=-1)[pad : pad + height, pad : pad + width]


def _gaussian_kernel(rng, spec, scale):
    sigma_u, sigma_v = rng.uniform(*spec.blur_sigma, size=2) * scale
    theta = rng.uniform(0, math.pi)
    radius = int(math.ceil(3 * max(sigma_u, sigma_v)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    x, y = np.meshgrid(offsets, offsets)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    kernel = np.exp(-0.5 * ((u / sigma_u) ** 2 + (v / sigma_v) ** 2))
    return kernel / kernel.sum()


def _blur(image, kernel):
    radius = kernel.shape[0] // 2
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            out += kernel[i, j] * padded[i : i + height, j : j + width]
    return out


def _jpeg(image, quality):
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0


def degrade(hr: np.ndarray, scale: int, rng: np.random.Generator, spec: Degradation = Degradation()) -> np.ndarray:
    """LR image at HR size for the float32 H×W×3 ``hr`` in [0, 1]; H and W must be multiples of ``scale``."""
    height, width = hr.shape[:2]
    if height % scale or width % scale:
        raise ValueError(f"image size {height}×{width} is not a multiple of the scale {scale}")
    scene = _misalign(hr.astype(np.float32), rng, spec)
    scene = _blur(scene, _gaussian_kernel(rng, spec, scale).astype(np.float32))
    small = np.clip(resize(scene, height // scale, width // scale), 0.0, 1.0)
    gain = rng.uniform(*spec.gain, size=3).astype(np.float32)
    gamma = rng.uniform(*spec.gamma, size=3).astype(np.float32)
    small = gain * small**gamma
    noise_std = np.sqrt(rng.uniform(*spec.shot) * small + rng.uniform(*spec.read) ** 2)
    small = np.clip(small + noise_std * rng.standard_normal(small.shape).astype(np.float32), 0.0, 1.0)
    small = _jpeg(small, rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))
    return np.clip(resize(small, height, width), 0.0, 1.0).astype(np.float32)
