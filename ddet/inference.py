"""Upscale photographs with a trained model: bicubic to the target size, then the network, in tiles.

Y models (the paper's setting) see the MATLAB BT.601 luminance; the chroma is bicubic-upscaled and
put back. RGB models see all three channels. Large images run tile by tile: each tile's core of
``tile`` × ``tile`` output pixels is computed from a window that reaches ``context`` pixels further
(the model's receptive radius, at most MAX_CONTEXT) and only the core is kept, so there are no
seams: with the full receptive radius a tiling gives exactly the whole-image result. An image
runs whole when the network's measured working set on it fits the memory budget, else in the
tiling whose windows fit it and compute the fewest pixels. The network runs in float32 or in
bfloat16 / float16 autocast (``precision``), where the hardware has the units for it.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from ddet import metrics, models
from ddet.data.color import rgb_to_ycbcr, ycbcr_to_rgb
from ddet.data.datasets import WholeImages, to_tensor
from ddet.data.io import read_image
from ddet.device import pick_device
from ddet.files import PathLike
from ddet.weights import load_bundled, load_model

# Tile origins are multiples of this (the models work on ×4 pixel-unshuffled and pyramid grids).
TILE_ALIGN = 16
# Context a tile reads around its core, at most: the trained DDet's theoretical reach is 144
# pixels, but with 32 its output changes by less than a fifth of an 8-bit level
# (tests/test_inference.py checks it), and a small margin leaves more of each tile's memory to the
# pixels that are kept.
MAX_CONTEXT = 32
# Working set of the network on the tiles, by default (--max-memory overrides it).
DEFAULT_MAX_MEMORY = 5 * 2**28  # 1.25 GiB
# Rows of the output converted to RGB at a time.
EMIT_ROWS = 64
# Side of the tile on which the network's working set is measured.
PROBE_SIDE = 32
DEFAULT_MODEL = "ddet"  # what runs when neither a model nor weights are given
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_HALF_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def as_float_rgb(image: str | Path | np.ndarray) -> np.ndarray:
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


def resolve_model(
    model: str | torch.nn.Module | None = None,
    weights: PathLike | None = None,
    scale: int | None = None,
    device: str | torch.device = "cpu",
) -> Resolved:
    """The network to run (a ``Resolved``) from weights, a model object, or the bundled weights of ``scale``.

    ``model`` may be a module (then ``scale`` is required), or a registry name (default
    ``DEFAULT_MODEL``): names the registry records bundled weights for run them, every other name
    needs ``weights``.
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
    name = DEFAULT_MODEL if model is None else model
    if name not in models.names():
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(models.names())}")
    scale = 2 if scale is None else scale
    loaded, metadata = load_bundled(name, scale, device)
    return Resolved(loaded, scale, metadata["channels"], metadata["model"])


class Precision(NamedTuple):
    name: str  # "fp32", "bf16" or "fp16"
    autocast: torch.dtype | None  # dtype of the autocast region, None for float32
    reason: str  # why ``auto`` chose it, or "requested"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the Linux kernel lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return set(next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []))
    except OSError:
        return set()


def bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX-512 BF16), from the
    kernel's CPU flags, else from torch's own CPU probe (also on systems without /proc)."""
    if {"amx_bf16", "avx512_bf16"} & cpu_flags():
        return True
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(probe() for probe in probes if probe is not None)


def choose_precision(precision: str, device: str | torch.device) -> Precision:
    """The ``Precision`` that ``precision`` (auto, fp32, bf16, fp16) means on ``device``: auto is
    bfloat16 autocast where the hardware has bfloat16 matrix units (CUDA GPUs that support it,
    CPUs with AMX / AVX-512 BF16; elsewhere bfloat16 is emulated and slower than float32),
    float32 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return Precision(precision, _HALF_TYPES.get(precision), "requested")
    if torch.device(device).type == "cuda":
        native = torch.cuda.is_bf16_supported()
        reason = "this GPU has bfloat16 units" if native else "this GPU lacks bfloat16 units"
    else:
        native = bf16_matrix_units()
        reason = (
            "this CPU has bfloat16 matrix units: AMX or AVX-512 BF16"
            if native
            else "this CPU has no bfloat16 matrix units: AMX or AVX-512 BF16"
        )
    return Precision("bf16", torch.bfloat16, reason) if native else Precision("fp32", None, reason)


def describe_precision(settings: Precision) -> str:
    """One line for the user: what runs, and why."""
    kind = "float32" if settings.autocast is None else f"{settings.name} autocast"
    return f"precision: {kind}, channels_last ({settings.reason})"


def prepare_model(model: torch.nn.Module) -> None:
    """Put the weights in the NHWC layout the network runs in (in place): the convolutions run
    1.3× faster on it in float32 too, on this project's AVX2 CPU (see benchmarks/bench_upscale.py)."""
    model.to(memory_format=torch.channels_last)


def run_network(
    model: torch.nn.Module, image: torch.Tensor, settings: Precision, device: str | torch.device
) -> torch.Tensor:
    """The model on one C×H×W float32 tensor under ``settings``; float32 C×H×W on the CPU."""
    batch = image[None].to(device).contiguous(memory_format=torch.channels_last)
    with torch.autocast(
        batch.device.type, dtype=settings.autocast or torch.float32, enabled=settings.autocast is not None
    ):
        output = model(batch).float()[0].cpu()
    if not torch.isfinite(output).all():  # else it would be written as a black or garbled image
        raise ValueError("the network's output holds NaN or infinity: its weights do not work on this image")
    return output


def default_context(model: torch.nn.Module) -> int:
    """Pixels each tile reads beyond its edges: the model's receptive radius, at most MAX_CONTEXT."""
    return int(min(getattr(model, "receptive_radius", math.inf), MAX_CONTEXT))


@torch.no_grad()
def working_set_per_pixel(
    model: torch.nn.Module, in_channels: int, settings: Precision, device: str | torch.device
) -> float:
    """Bytes per pixel of the tensors alive at once at the peak of the network's run, measured on a
    PROBE_SIDE² tile: a convolutional network's working set grows in proportion to the pixels
    (DDet's, KPN's, LP-KPN's and SRResNet's per-pixel peaks measured the same on 32² to 128² tiles). The probe
    runs on one thread: on a busy machine, waiting for a second thread costs more than its work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _LiveTensorBytes() as tracker:
            run_network(model, torch.rand(in_channels, PROBE_SIDE, PROBE_SIDE), settings, device)
    finally:
        torch.set_num_threads(threads)
    return tracker.peak / PROBE_SIDE**2


class _LiveTensorBytes(TorchFunctionMode):
    """The peak of the bytes of the tensor storages that torch functions called inside the
    ``with`` return, each counted from its first tensor to the death of its last (what operators
    allocate and free inside, scratch buffers or autocast's weight copies, is not seen). A
    function mode, not a dispatch mode: entering one of those first imports torch._dynamo."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.tensors = {}  # (storage address, bytes) → its tensors alive

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return output

    def _track(self, tensor):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in self.tensors:
            self.tensors[key] = 0
            self.live += key[1]
            self.peak = max(self.peak, self.live)
        self.tensors[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key):
        self.tensors[key] -= 1
        if not self.tensors[key]:
            del self.tensors[key]
            self.live -= key[1]


def memory_budget(device: str | torch.device, max_memory: int | None = None) -> int:
    """Bytes the network's tiles may use: ``max_memory`` or DEFAULT_MAX_MEMORY, at most half of
    what the device has free now."""
    if torch.device(device).type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(max_memory or DEFAULT_MAX_MEMORY, free // 2)


def window_pixels(
    model: torch.nn.Module,
    in_channels: int,
    settings: Precision,
    device: str | torch.device,
    max_memory: int | None = None,
) -> int:
    """The most pixels a tile's window may hold for the network's working set to fit the budget."""
    return int(memory_budget(device, max_memory) / working_set_per_pixel(model, in_channels, settings, device))


def plan_tiles(height: int, width: int, context: int, max_window_pixels: int) -> tuple[int, int]:
    """(tile height, tile width) of the tiling of an H×W image that computes the fewest pixels, its
    windows (core and context) holding at most ``max_window_pixels``; (0, 0): the whole image fits.
    Full-width bands where the width allows them (context on two sides instead of four), near
    squares otherwise."""
    if height * width <= max_window_pixels:
        return 0, 0
    rows, columns = _tile_choices(height, context), _tile_choices(width, context)
    plans = [
        (computed_h * computed_w, tile_h, tile_w)
        for tile_w, (window_w, computed_w) in columns.items()
        for tile_h, (window_h, computed_h) in rows.items()
        if window_h * window_w <= max_window_pixels
    ]
    if not plans:  # not even the smallest tiles fit: take them anyway
        return 2 * TILE_ALIGN, 2 * TILE_ALIGN
    _, tile_h, tile_w = min(plans)
    return tile_h, tile_w


def _tile_choices(length, context):
    """For each tile length along one axis (multiples of TILE_ALIGN): (its longest window, the
    pixels its windows cover together), from the spans a tiling actually uses."""
    choices = {}
    for tile in range(2 * TILE_ALIGN, length + TILE_ALIGN, TILE_ALIGN):
        spans = _spans(length, tile, context)
        windows = [window_stop - window_start for _, _, window_start, window_stop in spans]
        choices[tile] = (max(windows), sum(windows))
    return choices


def _spans(length, tile, context):
    """(core start, core stop, window start, window stop) of the tiles along one axis: cores of
    at most ``tile`` pixels cover the axis; each tile reads ``context`` more pixels on each side
    (fewer at the image's edges). Window starts are multiples of TILE_ALIGN, so every tile sees the
    same pixel-unshuffle and pyramid grid as the whole image."""
    if not tile or length <= tile:
        return [(0, length, 0, length)]
    count = math.ceil(length / tile)
    core = math.ceil(length / count / TILE_ALIGN) * TILE_ALIGN  # balanced: no sliver at the end
    spans = []
    for start in range(0, length, core):
        stop = min(start + core, length)
        spans.append((start, stop, max(start - context, 0) // TILE_ALIGN * TILE_ALIGN, min(stop + context, length)))
    return spans


def _run_tiled(height, width, tile, context, run_tile, emit_rows, *, on_pixels=None):
    """Run ``run_tile(top, bottom, left, right)`` (a C×h×w tensor for that window) over a tiling
    of an H×W image in ``tile`` (a side, or a (height, width) pair; 0 or None: whole) cores, keep
    each tile's core, and hand finished rows to ``emit_rows(top, rows)`` (C×n×W tensors) from top
    to bottom. One band of tiles is held at a time, so memory grows with the tile height × W, not
    H × W. ``on_pixels(n)`` is told of each finished core's pixel count."""
    tile_h, tile_w = tile if isinstance(tile, tuple) else (tile, tile)
    for side in (tile_h, tile_w):
        if side and side < TILE_ALIGN:
            raise ValueError(f"--tile must be 0 (whole image) or at least {TILE_ALIGN}, got {side}")
    if context < 0:
        raise ValueError(f"--tile-context must be at least 0, got {context}")
    columns = _spans(width, tile_w, context)
    for top, bottom, window_top, window_bottom in _spans(height, tile_h, context):
        band = None
        for left, right, window_left, window_right in columns:
            result = run_tile(window_top, window_bottom, window_left, window_right)
            if band is None:
                band = torch.empty(result.shape[0], bottom - top, width)
            band[:, :, left:right] = result[
                :, top - window_top : bottom - window_top, left - window_left : right - window_left
            ]
            if on_pixels is not None:
                on_pixels((bottom - top) * (right - left))
        emit_rows(top, band)


@torch.no_grad()
def run_model(
    model: torch.nn.Module,
    image: torch.Tensor,
    tile: int | None = None,
    context: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """The model on a float32 C×H×W tensor, whole or in ``tile``×``tile`` tiles with ``context``
    pixels around each (default: :func:`default_context`); returns float32 C×H×W on the CPU.
    The weights stay as they are (a model in training keeps its layout)."""
    height, width = image.shape[1:]
    output = torch.empty(image.shape)  # same-size networks: as many channels out as in
    settings = choose_precision(precision, device)

    def run_tile(top, bottom, left, right):
        return run_network(model, image[:, top:bottom, left:right], settings, device)

    def emit_rows(top, rows):
        output[:, top : top + rows.shape[1]] = rows

    _run_tiled(height, width, tile, default_context(model) if context is None else context, run_tile, emit_rows)
    return output


class _Bicubic:
    """Windows of the bicubic up-scaling of an RGB image, each equal to the same window of the
    whole up-scaled image (Pillow's resampling box reads the source pixels around the window)."""

    def __init__(self, rgb, scale):
        self.planes = [Image.fromarray(np.ascontiguousarray(rgb[..., c]), mode="F") for c in range(3)]
        self.scale = scale

    def window(self, top, bottom, left, right):
        box = tuple(edge / self.scale for edge in (left, top, right, bottom))
        planes = [
            np.asarray(plane.resize((right - left, bottom - top), Image.BICUBIC, box=box)) for plane in self.planes
        ]
        return np.clip(np.stack(planes, axis=-1), 0.0, 1.0)


@torch.no_grad()
def upscale(
    image: str | Path | np.ndarray,
    scale: int | None = None,
    *,
    model: str | torch.nn.Module | None = None,
    weights: PathLike | None = None,
    tile: int | tuple[int, int] | Literal["auto"] | None = "auto",
    tile_context: int | None = None,
    max_memory: int | None = None,
    precision: str = "auto",
    device: str | torch.device = "auto",
    progress: bool = False,
    dtype: npt.DTypeLike = np.float32,
    on_pixels: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Upscale ``image`` (path or array) by ``scale`` (default: 2, or the scale of ``weights``).

    Returns H·s × W·s × 3: float32 in [0, 1], or with ``dtype=np.uint8`` the rounded 8-bit image
    (a quarter of the memory). ``model``: a registry name (``ddet`` uses the bundled weights) or a
    module (its weights are put in the layout the precision runs in); ``weights``: a safetensors
    file written by ``ddet train``. ``precision``: auto, fp32, bf16 or fp16 (see
    :func:`choose_precision`); ``device``: auto (CUDA when available), cpu, cuda or cuda:N.
    ``tile``: the side of the tiles in output pixels (or their (height, width)), 0 or None for the
    whole image, ``"auto"`` for the tiling that computes the fewest pixels with windows that fit
    ``max_memory`` bytes (default :data:`DEFAULT_MAX_MEMORY`, at most half the free memory; see
    :func:`plan_tiles`): the whole image when it fits; each tile reads ``tile_context`` pixels
    around it (default: the model's receptive radius, at most MAX_CONTEXT). The bicubic input, the
    network and the colour conversion all run tile by tile, so beyond the input and the returned
    image the memory grows with the tile size only. ``on_pixels(n)`` hears of every finished
    tile's output pixels.
    """
    if np.dtype(dtype) not in (np.float32, np.uint8):
        raise TypeError(f"dtype must be numpy.float32 or numpy.uint8, got {dtype}")
    device = pick_device(device)
    settings = choose_precision(precision, device)
    network, scale, channels, _ = resolve_model(model, weights, scale, device)
    prepare_model(network)
    context = default_context(network) if tile_context is None else tile_context
    rgb = as_float_rgb(image)
    height, width = rgb.shape[0] * scale, rgb.shape[1] * scale
    if tile == "auto":
        in_channels = 3 if channels == "rgb" else 1
        tile = plan_tiles(height, width, context, window_pixels(network, in_channels, settings, device, max_memory))
    bicubic = _Bicubic(rgb, scale)
    del rgb
    output = np.empty((height, width, 3), dtype)

    def run_tile(top, bottom, left, right):
        window = bicubic.window(top, bottom, left, right)
        network_input = window if channels == "rgb" else rgb_to_ycbcr(window)[..., :1]
        return run_network(network, to_tensor(network_input), settings, device)

    with tqdm(
        total=height * width, unit="px", unit_scale=True, desc="upscale", leave=False, disable=not progress
    ) as bar:
        report = bar.update if on_pixels is None else on_pixels
        _run_tiled(height, width, tile, context, run_tile, partial(_write_rgb, output, bicubic), on_pixels=report)
    return output


def _write_rgb(output, bicubic, top, rows):
    """The network's rows from ``top`` on, as RGB (8-bit when ``output`` is), into ``output``; in
    blocks of rows, as the colour conversion makes several float copies of what it converts."""
    for start in range(0, rows.shape[1], EMIT_ROWS):
        block = rows[:, start : start + EMIT_ROWS]
        first, stop = top + start, top + start + block.shape[1]
        restored = _as_rgb(_array(block), partial(bicubic.window, first, stop, 0, output.shape[1]))
        output[first:stop] = np.round(restored * 255.0) if output.dtype == np.uint8 else restored


def _as_rgb(restored, bicubic_rows):
    """The network's rows as RGB in [0, 1]: a Y network's output takes its colour (CbCr) from the
    same rows of the bicubic image, which ``bicubic_rows()`` gives."""
    if restored.shape[-1] == 1:
        ycbcr = rgb_to_ycbcr(bicubic_rows())
        ycbcr[..., :1] = restored
        restored = ycbcr_to_rgb(ycbcr)
    return np.clip(restored, 0.0, 1.0)


def _array(tensor):
    return tensor.numpy().transpose(1, 2, 0)


def evaluate_images(
    model: torch.nn.Module,
    images: WholeImages,
    *,
    tile: int | None = None,
    context: int | None = None,
    device: str | torch.device = "cpu",
    border: int = 0,
    patch: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> list[dict[str, float | str]]:
    """Per-image RealSR-protocol rows {name, psnr, ssim, bicubic_psnr, bicubic_ssim} for a dataset
    of (lr at HR size, hr, name) tensors in the model's channels."""
    rows = []
    for lr, hr, name in tqdm(images, desc="evaluate", disable=not progress):
        output = run_model(model, lr, tile, context, device, precision).clamp(0.0, 1.0)
        target = _plane(hr)
        ours = metrics.evaluate(_plane(output), target, border=border, patch=patch)
        bicubic = metrics.evaluate(_plane(lr), target, border=border, patch=patch)
        rows.append({"name": name, **ours, "bicubic_psnr": bicubic["psnr"], "bicubic_ssim": bicubic["ssim"]})
    return rows


def _plane(tensor):
    """C×H×W → H×W (Y) or H×W×3 (RGB) numpy, as ``metrics.evaluate`` expects."""
    array = _array(tensor)
    return array[..., 0] if array.shape[-1] == 1 else array
