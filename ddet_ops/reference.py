"""The operator written in plain PyTorch: the oracle of the tests and the peer of the benchmarks.

Two formulations of the same contract (see :func:`ddet_ops.multi_dynconv`), chosen by
``multi_dynconv(..., formulation=)``:

* ``"unfold"`` (the default) gathers every neighbourhood with ``F.unfold``: what most people
  write, and the reason this library exists (it materialises C*s^2*H*W values per size).
* ``"shift_add"`` adds one shifted copy of ``x`` per tap: lean in memory, and what
  ``torch.compile`` turns into a fused loop.

Sums are computed in float32 (float64 when x or the kernels are float64) and rounded to x's dtype
once at the end, like the fast kernels, unless ``compute_dtype`` says otherwise (the benchmarks
pass the input's dtype: what a user would write).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._checks import KernelsArg, accumulation_dtype, check_normalize, normalize_args

__all__ = ["multi_dynconv", "dynconv", "normalized_kernels", "FORMULATIONS"]


def _per_size(kernel_list, sizes, groups):
    """Yield (size, kernel tensor of that size) pairs, slicing a packed tensor by channel."""
    if len(kernel_list) == len(sizes):
        yield from zip(sizes, kernel_list, strict=True)
        return
    start = 0
    for s in sizes:
        stop = start + groups * s * s
        yield s, kernel_list[0][:, start:stop]
        start = stop


def _unfold_sum(x, kernel_list, sizes, groups, dilation, compute):
    n, c, h, w = x.shape
    out = torch.zeros(x.shape, dtype=compute, device=x.device)
    if out.numel() == 0:
        return out
    xc = x.to(compute)
    for s, k in _per_size(kernel_list, sizes, groups):
        cols = F.unfold(xc, s, dilation=dilation, padding=(s // 2) * dilation)
        cols = cols.view(n, groups, c // groups, s * s, h, w)
        weights = k.to(compute).reshape(n, groups, 1, s * s, h, w)
        out += (cols * weights).sum(dim=3).view(n, c, h, w)
    return out


def _shift_add_sum(x, kernel_list, sizes, groups, dilation, compute):
    n, c, h, w = x.shape
    reach = (max(sizes) // 2) * dilation
    padded = F.pad(x.to(compute), (reach, reach, reach, reach)).view(
        n, groups, c // groups, h + 2 * reach, w + 2 * reach
    )
    out = torch.zeros((n, groups, c // groups, h, w), dtype=compute, device=x.device)
    for s, k in _per_size(kernel_list, sizes, groups):
        weights = k.to(compute).reshape(n, groups, s * s, 1, h, w)
        for i in range(s):
            top = reach + (i - s // 2) * dilation
            for j in range(s):
                left = reach + (j - s // 2) * dilation
                out = out + weights[:, :, i * s + j] * padded[..., top : top + h, left : left + w]
    return out.view(n, c, h, w)


FORMULATIONS = {"unfold": _unfold_sum, "shift_add": _shift_add_sum}


def normalized_kernels(
    kernel_list: list[torch.Tensor], sizes: Sequence[int], groups: int, normalize: str | None, dtype: torch.dtype
) -> list[torch.Tensor]:
    """The kernels as ``multi_dynconv(..., normalize=)`` applies them, one tensor per size, in
    ``dtype``: at each pixel and group a softmax over the taps of every size together
    ("softmax") or of each size alone ("softmax_per_size"); unchanged for None."""
    per_size = [k.to(dtype) for _, k in _per_size(kernel_list, sizes, groups)]
    if normalize is None:
        return per_size
    grouped = [k.unflatten(1, (groups, s * s)) for s, k in zip(sizes, per_size, strict=True)]
    if normalize == "softmax_per_size":
        return [torch.softmax(k, dim=2).flatten(1, 2) for k in grouped]
    joint = torch.softmax(torch.cat(grouped, dim=2), dim=2)
    return [k.flatten(1, 2) for k in torch.split(joint, [s * s for s in sizes], dim=2)]


def multi_dynconv(
    x: torch.Tensor,
    kernels: KernelsArg,
    sizes: Sequence[int] | None = None,
    *,
    groups: int = 1,
    dilation: int = 1,
    normalize: str | None = None,
    compute_dtype: torch.dtype | None = None,
    formulation: str = "unfold",
) -> torch.Tensor:
    """Reference of :func:`ddet_ops.multi_dynconv`, in one of the ``FORMULATIONS`` (see above);
    ``normalize`` as there (the softmax is ``torch.softmax``, before the filtering)."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {tuple(FORMULATIONS)}, got {formulation!r}")
    check_normalize(normalize)
    kernel_list, sizes = normalize_args(x, kernels, sizes, groups, dilation)
    compute = compute_dtype or accumulation_dtype(x.dtype, kernel_list[0].dtype)
    kernel_list = normalized_kernels(kernel_list, sizes, groups, normalize, compute)
    return FORMULATIONS[formulation](x, kernel_list, sizes, groups, dilation, compute).to(x.dtype)


def dynconv(x: torch.Tensor, kernel: torch.Tensor, *, groups: int = 1, dilation: int = 1) -> torch.Tensor:
    """Reference of :func:`ddet_ops.dynconv` (one kernel size)."""
    return multi_dynconv(x, [kernel], groups=groups, dilation=dilation)
