"""Upscale photographs with a trained model: bicubic to the target size, then the network, in tiles.

Y models (the paper's setting) see the MATLAB BT.601 luminance; the chroma is bicubic-upscaled and
put back. RGB models see all three channels. Large images run tile by tile (``tile`` pixels of the
upscaled image, ``tile_overlap`` shared with each neighbour); overlapping outputs are blended with
weights that fade to almost zero toward a tile's inner edges, where the network lacks context, so
the seams vanish and memory stays bounded by the tile size.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ddet import metrics
from ddet.data.color import rgb_to_ycbcr, ycbcr_to_rgb
from ddet.data.io import read_image
from ddet.weights import BUNDLED_MODEL, load_bundled, load_model

# Tile origins are multiples of this (the models work on ×4 pixel-unshuffled and pyramid grids).
TILE_ALIGN = 16
# Weight of the outermost pixels of a tile edge that has a neighbour: small but not zero, so
# the weights still sum to more than zero in a corner shared by four tiles.
EDGE_WEIGHT = 1e-3


def as_float_rgb(image):
    """A path, or an H×W(×3) uint8 / uint16 / float array → float32 H×W×3 in [0, 1]."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    else:
        raise TypeError(f"unsupported image dtype {array.dtype}: expected uint8, uint16 or float in [0, 1]")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an H×W, H×W×1, H×W×3 or H×W×4 image, got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=2)
    return array[..., :3]


class Resolved(NamedTuple):
    model: torch.nn.Module
    scale: int
    channels: str  # "y" or "rgb"
    name: str  # registry name, or the class name of a model object


def resolve_model(model=None, weights=None, scale=None, device="cpu"):
    """The network to run (a ``Resolved``) from weights, a model object, or the bundled weights of ``scale``.

    ``model`` may be a module (then ``scale`` is required), or a registry name: only ``ddet`` has
    bundled weights, every other name needs ``weights``.
    """
    if isinstance(model, torch.nn.Module):
        if scale is None:
            raise ValueError("pass scale= with a model object")
        return Resolved(model.to(device).eval(), scale, "y" if model.in_channels == 1 else "rgb", type(model).__name__)
    if weights is not None:
        loaded, metadata = load_model(weights, device)
        if model is not None and model != metadata["model"]:
            raise ValueError(f"--model {model} but {weights} holds a {metadata['model']!r} model")
        if scale is not None and scale != metadata["scale"]:
            raise ValueError(f"--scale {scale} but {weights} was trained for ×{metadata['scale']}")
        return Resolved(loaded, metadata["scale"], metadata["channels"], metadata["model"])
    if model not in (None, BUNDLED_MODEL):
        raise ValueError(f"no bundled weights for model {model!r}; pass --weights FILE")
    scale = 2 if scale is None else scale
    loaded, metadata = load_bundled(scale, device)
    return Resolved(loaded, scale, metadata["channels"], metadata["model"])


def _spans(length, tile, overlap):
    """(start, stop) of the tiles along one axis. Starts are multiples of TILE_ALIGN, so every tile
    sees the same pixel-unshuffle and pyramid grid as the whole image; the last tile runs to the end
    (up to TILE_ALIGN − 1 pixels longer than ``tile``)."""
    if length <= tile:
        return [(0, length)]
    stride = (tile - overlap) // TILE_ALIGN * TILE_ALIGN
    starts = list(range(0, length - tile, stride))
    last = (length - tile) // TILE_ALIGN * TILE_ALIGN
    if last > starts[-1]:
        starts.append(last)
    return [(start, start + tile) for start in starts[:-1]] + [(starts[-1], length)]


def _ramp(length, fade_before, fade_after, overlap):
    """1-D blending weights of a tile along one axis. Toward an edge that has a neighbour the weight
    falls from 1 to EDGE_WEIGHT over the middle half of the ``overlap``, and stays there in the
    outer quarter, where the tile lacks the context its neighbour has."""
    weights = np.ones(length, np.float32)
    if not overlap:
        return weights
    distance = np.arange(overlap, dtype=np.float32)
    margin = overlap / 4
    fade = np.clip((distance - margin + 0.5) / max(overlap - 2 * margin, 1), EDGE_WEIGHT, 1.0)
    if fade_before:
        weights[:overlap] = np.minimum(weights[:overlap], fade)
    if fade_after:
        weights[-overlap:] = np.minimum(weights[-overlap:], fade[::-1])
    return weights


def _blend_tiles(height, width, tile, overlap, run_tile, emit_rows, progress=False):
    """Blend the results of ``run_tile(top, bottom, left, right)`` (C×h×w tensors) over a tiling of
    an H×W image, and hand finished rows to ``emit_rows(top, rows)`` (C×n×W tensors) from top to
    bottom. Only one band of tiles is held at a time, so memory grows with ``tile`` × W, not H × W.

    Every (row span, column span) pair is a tile, so the total weight at a pixel is the product of
    the summed vertical and horizontal ramps: each tile's weight is normalised up front and the
    bands are simply added."""
    if tile is None or (height <= tile and width <= tile):
        emit_rows(0, run_tile(0, height, 0, width))
        return
    if tile < 2 * TILE_ALIGN or not 0 <= overlap <= tile - TILE_ALIGN:
        raise ValueError(f"--tile must be at least {2 * TILE_ALIGN} and --tile-overlap in [0, tile − {TILE_ALIGN}], got tile {tile}, overlap {overlap}")
    rows, cols = _spans(height, tile, overlap), _spans(width, tile, overlap)
    vertical = [_ramp(bottom - top, top > 0, bottom < height, overlap) for top, bottom in rows]
    horizontal = [_ramp(right - left, left > 0, right < width, overlap) for left, right in cols]
    vertical_total, horizontal_total = np.zeros(height, np.float32), np.zeros(width, np.float32)
    for (top, bottom), ramp in zip(rows, vertical):
        vertical_total[top:bottom] += ramp
    for (left, right), ramp in zip(cols, horizontal):
        horizontal_total[left:right] += ramp
    carried = None  # the previous band's sums over rows this band shares with it
    bar = tqdm(total=len(rows) * len(cols), desc="tiles", leave=False, disable=not progress)
    for index, (top, bottom) in enumerate(rows):
        band = None
        row_weight = vertical[index] / vertical_total[top:bottom]
        for (left, right), ramp in zip(cols, horizontal):
            result = run_tile(top, bottom, left, right)
            if band is None:
                band = torch.zeros(result.shape[0], bottom - top, width)
            weight = np.outer(row_weight, ramp / horizontal_total[left:right])
            band[:, :, left:right] += result * torch.from_numpy(weight)
            bar.update()
        if carried is not None:
            band[:, : carried.shape[1]] += carried
        finished = (rows[index + 1][0] if index + 1 < len(rows) else height) - top
        emit_rows(top, band[:, :finished])
        carried = band[:, finished:]
    bar.close()


@torch.no_grad()
def run_model(model, image, tile=None, overlap=32, device="cpu", progress=False):
    """The model on a float32 C×H×W tensor, whole or in ``tile``×``tile`` tiles; returns C×H×W on the CPU."""
    height, width = image.shape[1:]
    output = torch.empty(image.shape)  # same-size networks: as many channels out as in

    def run_tile(top, bottom, left, right):
        return model(image[None, :, top:bottom, left:right].to(device)).float()[0].cpu()

    def emit_rows(top, rows):
        output[:, top : top + rows.shape[1]] = rows

    _blend_tiles(height, width, tile, overlap, run_tile, emit_rows, progress)
    return output


class _Bicubic:
    """Windows of the bicubic up-scaling of an RGB image, each equal to the same window of the
    whole up-scaled image (Pillow's resampling box reads the source pixels around the window)."""

    def __init__(self, rgb, scale):
        self.planes = [Image.fromarray(np.ascontiguousarray(rgb[..., c]), mode="F") for c in range(3)]
        self.scale = scale

    def window(self, top, bottom, left, right):
        box = tuple(edge / self.scale for edge in (left, top, right, bottom))
        planes = [np.asarray(plane.resize((right - left, bottom - top), Image.BICUBIC, box=box)) for plane in self.planes]
        return np.clip(np.stack(planes, axis=-1), 0.0, 1.0)


@torch.no_grad()
def upscale(image, scale=None, model=None, weights=None, tile=512, tile_overlap=32, device="cpu", progress=False, dtype=np.float32):
    """Upscale ``image`` (path or array) by ``scale`` (default: 2, or the scale of ``weights``).

    Returns H·s × W·s × 3: float32 in [0, 1], or with ``dtype=np.uint8`` the rounded 8-bit image
    (a quarter of the memory). ``model``: a registry name (``ddet`` uses the bundled weights) or a
    module; ``weights``: a safetensors file written by ``ddet train``. The bicubic input, the
    network and the colour conversion all run tile by tile, so beyond the input and the returned
    image the memory grows with ``tile`` × width only.
    """
    if np.dtype(dtype) not in (np.float32, np.uint8):
        raise TypeError(f"dtype must be numpy.float32 or numpy.uint8, got {dtype}")
    network, scale, channels, _ = resolve_model(model, weights, scale, device)
    rgb = as_float_rgb(image)
    height, width = rgb.shape[0] * scale, rgb.shape[1] * scale
    bicubic = _Bicubic(rgb, scale)
    del rgb
    output = np.empty((height, width, 3), dtype)

    def run_tile(top, bottom, left, right):
        window = bicubic.window(top, bottom, left, right)
        network_input = window if channels == "rgb" else rgb_to_ycbcr(window)[..., :1]
        return network(_tensor(network_input)[None].to(device)).float()[0].cpu()

    def emit_rows(top, rows):
        restored = _array(rows)
        bottom = top + restored.shape[0]
        if channels == "y":
            ycbcr = rgb_to_ycbcr(bicubic.window(top, bottom, 0, width))
            ycbcr[..., :1] = restored
            restored = ycbcr_to_rgb(ycbcr)
        restored = np.clip(restored, 0.0, 1.0)
        output[top:bottom] = np.round(restored * 255.0) if output.dtype == np.uint8 else restored

    _blend_tiles(height, width, tile, tile_overlap, run_tile, emit_rows, progress)
    return output


def _tensor(image):
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def _array(tensor):
    return tensor.numpy().transpose(1, 2, 0)


def evaluate_images(model, images, tile=None, overlap=32, device="cpu", border=0, patch=None, progress=False):
    """Per-image RealSR-protocol rows {name, psnr, ssim, bicubic_psnr, bicubic_ssim} for a dataset
    of (lr at HR size, hr, name) tensors in the model's channels."""
    rows = []
    for lr, hr, name in tqdm(images, desc="evaluate", disable=not progress):
        output = run_model(model, lr, tile, overlap, device).clamp(0.0, 1.0)
        target = _plane(hr)
        ours = metrics.evaluate(_plane(output), target, border=border, patch=patch)
        bicubic = metrics.evaluate(_plane(lr), target, border=border, patch=patch)
        rows.append({"name": name, **ours, "bicubic_psnr": bicubic["psnr"], "bicubic_ssim": bicubic["ssim"]})
    return rows


def _plane(tensor):
    """C×H×W → H×W (Y) or H×W×3 (RGB) numpy, as ``metrics.evaluate`` expects."""
    array = _array(tensor)
    return array[..., 0] if array.shape[-1] == 1 else array
