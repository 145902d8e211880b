"""Argument normalisation and validation shared by the fast op, its fake kernel and the reference.

The C++ kernels check the same contract again (they are callable directly through
``torch.ops.ddet_ops``); this module gives Python users a ``ValueError`` that names the
bad argument before anything is dispatched, including under ``torch.compile`` tracing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

KernelsArg = torch.Tensor | Sequence[torch.Tensor]

# More kernel sizes than this in one call are refused, as by the C++ kernels.
MAX_SIZES = 16
# The largest odd size whose s*s taps index in 32 bits, as the C++ kernels require.
MAX_KERNEL_SIZE = 46339


def _check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(f"kernel sizes must be ints, got {size!r}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel sizes must be odd and >= 1, got {size}")
    if size > MAX_KERNEL_SIZE:
        raise ValueError(f"kernel size {size} is too large (at most {MAX_KERNEL_SIZE}, so that s*s taps are countable)")
    return size


def check_groups_and_dilation(groups: int, dilation: int) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")


def check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """A non-empty sequence of at most MAX_SIZES valid kernel sizes, as a tuple."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise ValueError(f"sizes must be a sequence of ints such as (3, 5, 7), got {sizes!r}")
    if not 1 <= len(sizes) <= MAX_SIZES:
        raise ValueError(f"give 1 to {MAX_SIZES} kernel sizes, got {len(sizes)}")
    return tuple(_check_size(size) for size in sizes)


def normalize_args(
    x: torch.Tensor,
    kernels: KernelsArg,
    sizes: Sequence[int] | None,
    groups: int,
    dilation: int,
) -> tuple[list[torch.Tensor], list[int]]:
    """Validate the public arguments; return the kernel tensors (one packed tensor, or one per
    size) and the list of sizes.  A packed tensor is passed on as it is, never split or copied."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got dtype {x.dtype}")
    check_groups_and_dilation(groups, dilation)
    n, c, h, w = x.shape
    if c % groups != 0:
        raise ValueError(f"groups={groups} does not divide the {c} channels of x")

    if isinstance(kernels, torch.Tensor):
        if sizes is None:
            raise ValueError(
                "sizes is required when kernels is one packed tensor "
                "(e.g. sizes=(3, 5, 7) for torch.cat of the 3x3, 5x5 and 7x7 kernels)"
            )
        sizes = [_check_size(s) for s in sizes]
        if not sizes:
            raise ValueError("sizes must name at least one kernel size")
        kernel_list = [kernels]
        expected_channels = groups * sum(s * s for s in sizes)
        what = f"groups*sum(s^2) = {groups}*{sum(s * s for s in sizes)} for sizes {sizes}"
        _check_kernel(x, kernels, "kernels", expected_channels, what)
    else:
        kernel_list = list(kernels)
        if not kernel_list:
            raise ValueError("kernels is an empty list: give at least one kernel tensor")
        for i, k in enumerate(kernel_list):
            if not isinstance(k, torch.Tensor) or k.dim() != 4:
                shape = tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__
                raise ValueError(f"kernels[{i}] must be a 4-D tensor (N, groups*s^2, H, W), got {shape}")
        if sizes is None:
            sizes = [_infer_size(k, groups, f"kernels[{i}]") for i, k in enumerate(kernel_list)]
        else:
            sizes = [_check_size(s) for s in sizes]
            if len(sizes) != len(kernel_list):
                raise ValueError(f"sizes={sizes} disagrees with the kernel list, which has {len(kernel_list)} tensors")
            for i, (k, s) in enumerate(zip(kernel_list, sizes, strict=True)):
                if k.shape[1] != groups * s * s:
                    raise ValueError(
                        f"sizes={sizes} disagrees with the kernel list: kernels[{i}] has {k.shape[1]} channels, "
                        f"not groups*s^2 = {groups}*{s * s}"
                    )
        for i, (k, s) in enumerate(zip(kernel_list, sizes, strict=True)):
            _check_kernel(x, k, f"kernels[{i}]", groups * s * s, f"groups*s^2 = {groups}*{s * s}")
            if k.dtype != kernel_list[0].dtype:
                raise ValueError(f"kernels[{i}] has dtype {k.dtype}, but kernels[0] has {kernel_list[0].dtype}")
    if len(sizes) > MAX_SIZES:
        raise ValueError(f"at most {MAX_SIZES} kernel sizes per call, got {len(sizes)}")
    return kernel_list, sizes


def check_op_args(
    x: torch.Tensor, kernels: Sequence[torch.Tensor], sizes: Sequence[int], groups: int, dilation: int
) -> None:
    """The checks of the raw ``torch.ops.ddet_ops`` arguments (a list of kernel tensors, one per
    size or one packed), as the C++ kernels make them; the fake kernels run them so that a call
    dispatched to them (meta tensors, tracing) is refused exactly when the real one would be."""
    kernels = list(kernels)
    if not kernels:
        raise ValueError("kernels is an empty list: give at least one kernel tensor")
    if len(kernels) != len(sizes) and len(kernels) != 1:
        raise ValueError(
            f"got {len(kernels)} kernel tensors for {len(sizes)} sizes: pass one tensor per size, or one packed tensor"
        )
    packed = len(kernels) != len(sizes)
    normalize_args(x, kernels[0] if packed else kernels, sizes, groups, dilation)
    if not native_pair(x.dtype, kernels[0].dtype):
        raise ValueError(
            f"the op does not read kernels of dtype {kernels[0].dtype} with x of dtype {x.dtype} (same dtype, or "
            "float32 with float16 or bfloat16; ddet_ops.multi_dynconv casts other pairs)"
        )


_HALF_TYPES = (torch.float16, torch.bfloat16)

# What ``normalize=`` may be: raw kernels, one softmax over all taps of all sizes, one per size.
NORMALIZATIONS = (None, "softmax", "softmax_per_size")


def check_normalize(normalize: str | None) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def native_pair(x_dtype: torch.dtype, kernel_dtype: torch.dtype) -> bool:
    """Whether the op's kernels read kernels of ``kernel_dtype`` with x of ``x_dtype`` as they are:
    the same dtype, or float32 with a half type (either way round)."""
    return (
        x_dtype == kernel_dtype
        or (x_dtype == torch.float32 and kernel_dtype in _HALF_TYPES)
        or (x_dtype in _HALF_TYPES and kernel_dtype == torch.float32)
    )


def accumulation_dtype(x_dtype: torch.dtype, kernel_dtype: torch.dtype) -> torch.dtype:
    """The dtype the op sums in: float64 when either operand is float64, float32 otherwise."""
    return torch.float64 if torch.float64 in (x_dtype, kernel_dtype) else torch.float32


def check_grad_y(grad_y: torch.Tensor, x: torch.Tensor) -> None:
    """grad_y of the backward op must be shaped, typed and placed as x."""
    if not isinstance(grad_y, torch.Tensor):
        raise ValueError(f"grad_y must be a tensor, got {type(grad_y).__name__}")
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y has shape {tuple(grad_y.shape)}, but x has {tuple(x.shape)}")
    if grad_y.dtype != x.dtype:
        raise ValueError(f"grad_y has dtype {grad_y.dtype}, but x has dtype {x.dtype}")
    if grad_y.device != x.device:
        raise ValueError(f"grad_y is on {grad_y.device}, but x is on {x.device}")


def _infer_size(k: torch.Tensor, groups: int, name: str) -> int:
    channels = int(k.shape[1])
    taps = channels // groups
    size = round(taps**0.5)
    if channels % groups != 0 or size * size != taps or size % 2 == 0:
        raise ValueError(f"{name} has {channels} channels, which is not groups*s^2 (groups={groups}) for an odd size s")
    return size


def _check_kernel(x: torch.Tensor, k: torch.Tensor, name: str, channels: int, what: str) -> None:
    if not isinstance(k, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(k).__name__}")
    if k.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, channels, H, W), got shape {tuple(k.shape)}")
    if k.shape[1] != channels:
        raise ValueError(f"{name} has {k.shape[1]} channels, expected {what}")
    if k.shape[0] != x.shape[0] or k.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"{name} has batch/spatial size {(k.shape[0], *k.shape[2:])}, but x has {(x.shape[0], *x.shape[2:])}"
        )
    if not k.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {k.dtype}")
    if k.device != x.device:
        raise ValueError(f"{name} is on {k.device}, but x is on {x.device}")
