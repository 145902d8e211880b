"""Colour conversions of MATLAB's ``rgb2ycbcr`` / ``ycbcr2rgb`` (ITU-R BT.601, studio range).

Images are channel-last numpy arrays of floats in [0, 1]; Y lies in [16/255, 235/255] and Cb, Cr in
[16/255, 240/255], exactly as MATLAB returns them for double input.
"""

from __future__ import annotations

import numpy as np

# Rows give Y, Cb, Cr from R, G, B in [0, 1], in units of 1/255 (MATLAB's coefficients).
_RGB_TO_YCBCR = (
    np.array(
        [
            [65.481, 128.553, 24.966],
            [-37.797, -74.203, 112.0],
            [112.0, -93.786, -18.214],
        ]
    )
    / 255.0
)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)


def _check_rgb(rgb):
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {tuple(rgb.shape)}")


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    _check_rgb(rgb)
    return rgb @ _RGB_TO_YCBCR.T.astype(rgb.dtype) + _YCBCR_OFFSET.astype(rgb.dtype)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    _check_rgb(ycbcr)
    return (ycbcr - _YCBCR_OFFSET.astype(ycbcr.dtype)) @ _YCBCR_TO_RGB.T.astype(ycbcr.dtype)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Y of ``rgb_to_ycbcr`` without computing the chroma: H×W×3 → H×W."""
    _check_rgb(rgb)
    return rgb @ _RGB_TO_YCBCR[0].astype(rgb.dtype) + rgb.dtype.type(_YCBCR_OFFSET[0])
