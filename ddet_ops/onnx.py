"""ONNX export of ``ddet_ops::multi_dynconv`` (and its fused softmax) as standard ONNX operators.

ONNX has no per-pixel dynamic convolution, so the exporter needs to be told how to write the op
with the operators every runtime has. :data:`TRANSLATION_TABLE` does that for the dynamo-based
exporter (``torch.onnx.export(..., dynamo=True)``); pass it with any model that calls
:func:`ddet_ops.multi_dynconv` or :func:`ddet_ops.dynconv`::

    import ddet_ops.onnx

    torch.onnx.export(model, (x,), "model.onnx", dynamo=True,
                      custom_translation_table=ddet_ops.onnx.TRANSLATION_TABLE,
                      dynamic_shapes=({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC},))

(merge it into your own table if you have one). The decomposition covers every kernel size, group
count and dilation the op accepts:

1. one ``Conv`` with a constant one-hot filter bank gathers, for every channel plane of ``x``, the
   T = Σ s² neighbours the kernels weigh (zero padding and dilation are the Conv's own), giving
   (N·C, T, H, W);
2. the kernels are laid out as (N, groups, 1, T, H, W) in the same tap order;
3. ``Mul`` and ``ReduceSum`` over the taps give y.

``normalize=`` (``ddet_ops::multi_dynconv_softmax``) puts a ``Softmax`` over the taps of each set
between steps 2 and 3.

Half-precision inputs are computed in float32 and rounded once, as the fast kernels do. Needs the
``onnxscript`` package (``pip install ddet[export]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset18 as op

__all__ = ["TRANSLATION_TABLE", "multi_dynconv_onnx", "multi_dynconv_softmax_onnx", "one_hot_taps"]

_HALF_TYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def one_hot_taps(sizes: Sequence[int]) -> np.ndarray:
    """The (T, 1, M, M) float32 filter bank, M = max(sizes), whose output channel t is tap t of the
    packed kernels: size-major, row-major within a size, each size centred in the M×M window."""
    window = max(sizes)
    bank = np.zeros((sum(s * s for s in sizes), 1, window, window), dtype=np.float32)
    tap = 0
    for size in sizes:
        offset = window // 2 - size // 2
        for i in range(size):
            for j in range(size):
                bank[tap, 0, offset + i, offset + j] = 1.0
                tap += 1
    return bank


def _ints(*values: int):
    return op.Constant(value_ints=list(values))


def _kernel_pieces(kernels: list, sizes: Sequence[int], groups: int) -> list:
    """The kernel tensors, one per size where the layout needs it: a packed tensor holds, per size,
    groups·s² channels, so with several groups its sizes must be separated before the taps of a
    group can sit side by side."""
    if len(kernels) == len(sizes) or groups == 1 or len(sizes) == 1:
        return list(kernels)
    pieces, start = [], 0
    for size in sizes:
        stop = start + groups * size * size
        pieces.append(op.Slice(kernels[0], [start], [stop], [1]))
        start = stop
    return pieces


def _patches_and_weights(x, kernels, sizes, groups, dilation):
    """x's gathered neighbours (N, groups, C/groups, T, H, W) and the kernels laid out as
    (N, groups, 1, T, H, W), in float32 for half-type inputs."""
    if x.dtype in _HALF_TYPES:
        x = op.Cast(x, to=ir.DataType.FLOAT)
        kernels = [op.Cast(k, to=ir.DataType.FLOAT) for k in kernels]
    batch = op.Shape(x, start=0, end=1)
    spatial = op.Shape(x, start=2, end=4)
    taps = sum(s * s for s in sizes)
    reach = (max(sizes) // 2) * dilation

    planes = op.Reshape(x, op.Concat(_ints(-1, 1), spatial, axis=0))
    bank = op.Constant(value=ir.tensor(one_hot_taps(sizes)))
    patches = op.Conv(planes, bank, pads=[reach] * 4, dilations=[dilation, dilation])
    channels_per_group = op.Div(op.Shape(x, start=1, end=2), [groups])
    patches = op.Reshape(patches, op.Concat(batch, _ints(groups), channels_per_group, _ints(taps), spatial, axis=0))

    tap_layout = op.Concat(batch, _ints(groups, 1, -1), spatial, axis=0)
    pieces = [op.Reshape(k, tap_layout) for k in _kernel_pieces(kernels, sizes, groups)]
    weights = pieces[0] if len(pieces) == 1 else op.Concat(*pieces, axis=3)
    return patches, weights


def _filtered(x, patches, weights):
    """y in x's shape and dtype: the weighted neighbours summed over the taps."""
    y = op.Reshape(op.ReduceSum(op.Mul(patches, weights), [3], keepdims=0), op.Shape(x))
    return op.Cast(y, to=x.dtype) if x.dtype in _HALF_TYPES else y


def multi_dynconv_onnx(x, kernels, sizes, groups, dilation):
    """ONNX graph of ``ddet_ops::multi_dynconv(x, kernels, sizes, groups, dilation)`` (the
    translation function the exporter calls with ONNX values for x and kernels)."""
    patches, weights = _patches_and_weights(x, kernels, sizes, groups, dilation)
    return _filtered(x, patches, weights)


def multi_dynconv_softmax_onnx(x, kernels, sizes, groups, dilation, per_size):
    """ONNX graph of ``ddet_ops::multi_dynconv_softmax``: a ``Softmax`` over the taps of each set
    (all sizes, or each size), then the same filtering; lse (N, groups * sets, H, W) by
    ``ReduceLogSumExp``."""
    patches, weights = _patches_and_weights(x, kernels, sizes, groups, dilation)
    taps = [s * s for s in sizes] if per_size else [sum(s * s for s in sizes)]
    bounds = [sum(taps[:i]) for i in range(len(taps) + 1)]
    parts = [op.Slice(weights, [start], [stop], [3]) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    probabilities = [op.Softmax(part, axis=3) for part in parts]
    weights = probabilities[0] if len(parts) == 1 else op.Concat(*probabilities, axis=3)
    lse = [op.ReduceLogSumExp(part, [3], keepdims=1) for part in parts]
    lse = lse[0] if len(parts) == 1 else op.Concat(*lse, axis=3)
    lse_shape = op.Concat(op.Shape(x, start=0, end=1), _ints(-1), op.Shape(x, start=2, end=4), axis=0)
    return _filtered(x, patches, weights), op.Reshape(lse, lse_shape)


TRANSLATION_TABLE = {
    torch.ops.ddet_ops.multi_dynconv.default: multi_dynconv_onnx,
    torch.ops.ddet_ops.multi_dynconv_softmax.default: multi_dynconv_softmax_onnx,
}
