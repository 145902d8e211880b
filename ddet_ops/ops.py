"""Public functions, fake kernels and autograd of the ``torch.ops.ddet_ops`` operators.

The operators themselves are declared and implemented in C++ (``csrc/``):

* ``ddet_ops::multi_dynconv(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation) -> Tensor``
* ``ddet_ops::multi_dynconv_backward(Tensor grad_y, Tensor x, Tensor[] kernels, int[] sizes,
  int groups, int dilation, bool need_x, bool need_kernels) -> (Tensor, Tensor[])``
* ``ddet_ops::multi_dynconv_softmax(Tensor x, Tensor[] kernels, int[] sizes, int groups,
  int dilation, bool per_size) -> (Tensor y, Tensor lse)``: the kernels normalised by a softmax
  over the taps inside the op; lse (N, groups * sets, H, W), float32 (float64 for float64 x),
  holds each pixel's log-normaliser per group and set of taps (all sizes: 1 set; per size: one
  set per size), all the backward needs besides the inputs
* ``ddet_ops::multi_dynconv_softmax_backward(Tensor grad_y, Tensor x, Tensor[] kernels,
  Tensor lse, int[] sizes, int groups, int dilation, bool per_size, bool need_x,
  bool need_kernels) -> (Tensor, Tensor[])``

``kernels`` holds either one packed tensor covering every size, or one tensor per size; the
kernel gradients come back in the same structure.
The backward op is differentiable too (its gradient is written with both ops), so gradients of
any order are available.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import (
    KernelsArg,
    accumulation_dtype,
    check_grad_y,
    check_normalize,
    check_op_args,
    native_pair,
    normalize_args,
)
from .reference import normalized_kernels

__all__ = ["multi_dynconv", "dynconv"]


def multi_dynconv(
    x: torch.Tensor,
    kernels: KernelsArg,
    sizes: Sequence[int] | None = None,
    *,
    groups: int = 1,
    dilation: int = 1,
    normalize: str | None = None,
) -> torch.Tensor:
    r"""Per-pixel dynamic convolution with several kernel sizes at once, summed.

    .. math::
        y[n,c,h,w] = \sum_s \sum_{i,j<s} K_s[n, g(c)s^2 + is + j, h, w]\,
                     x[n, c, h + (i - \lfloor s/2 \rfloor)d, w + (j - \lfloor s/2 \rfloor)d]

    with zero padding, ``g(c) = c // (C // groups)`` and ``d = dilation``.

    Args:
        x: (N, C, H, W) floating-point input.
        kernels: one tensor per size, each (N, groups*s^2, H, W) (``sizes`` is inferred), or one
            packed tensor (N, groups*sum(s^2), H, W) = ``torch.cat(per_size, dim=1)`` with
            ``sizes`` given. Taps are row-major, as in ``F.unfold``. Kernels are used as given
            unless ``normalize`` says otherwise. Their floating dtype may differ from x's (all kernel tensors of one
            call share one): float32 with float16 or bfloat16, either way round, is read as it
            is (e.g. kernels predicted under ``torch.autocast`` applied to a float32 image);
            other pairs are cast first (both to float64 when one is float64, float16 / bfloat16
            kernels to float32 with the other half type).
        sizes: odd kernel sizes, in the order of the packed channels.
        groups: kernel groups; must divide C. 1 shares each pixel's kernel over all channels,
            C gives every channel its own kernel.
        dilation: spacing of the taps (>= 1), the same for every size.
        normalize: None (raw kernels), ``"softmax"`` or ``"softmax_per_size"``: the kernels
            pass through a softmax over the taps first, at each pixel and group,

            .. math::
                K'_t = \exp(K_t) / \sum_{u \in S(t)} \exp(K_u)

            with :math:`S(t)` every tap of every size of t's group (``"softmax"``: the summed
            filter sums to 1) or the taps of t's size only (``"softmax_per_size"``: each size's
            filter sums to 1). The softmax is fused into both passes on the CPU and CUDA
            (computed in float32, or float64, from the stored kernels; the backward keeps one
            per-pixel log-normaliser per group and set, never the probabilities).

    Returns:
        y, a new (N, C, H, W) tensor of x's dtype and device. Sums accumulate in float32
        (float64 when x or the kernels are float64). Gradients come back in each input's dtype.
        Under ``torch.autocast`` the op keeps x's and the kernels' dtypes (it has no autocast
        rule, so autocast passes it through): it never casts them up.
        Differentiable in x and in every kernel tensor; the backward pass is deterministic.
        Differentiable to any order: the backward op's own gradient is written with the two ops
        (the backward is linear in grad_y and bilinear in x and the kernels), so
        ``torch.autograd.grad(..., create_graph=True)`` and gradient penalties work; with a
        softmax, second and higher orders go through ``torch.softmax`` and the raw op.
    """
    check_normalize(normalize)
    kernel_list, sizes = normalize_args(x, kernels, sizes, groups, dilation)
    x_read, kernel_list = _readable(x, kernel_list)
    if normalize is None:
        y = torch.ops.ddet_ops.multi_dynconv(x_read, kernel_list, sizes, groups, dilation)
    else:
        y, _ = torch.ops.ddet_ops.multi_dynconv_softmax(
            x_read, kernel_list, sizes, groups, dilation, normalize == "softmax_per_size"
        )
    return y.to(x.dtype)


def _softmax_then_raw_op(x, kernels, sizes, groups, dilation, normalize):
    """The unfused path, differentiable to any order: the softmax by ``torch.softmax`` in the
    accumulation dtype, the probabilities back in the kernels' dtype, then the raw op."""
    dtype = accumulation_dtype(x.dtype, kernels[0].dtype)
    probabilities = normalized_kernels(list(kernels), sizes, groups, normalize, dtype)
    probabilities = [p.to(kernels[0].dtype) for p in probabilities]
    return torch.ops.ddet_ops.multi_dynconv(x, probabilities, sizes, groups, dilation)


def _readable(x: torch.Tensor, kernel_list: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x and the kernels in dtypes the op reads together, casting only the pairs it does not read
    as they are (see :func:`multi_dynconv`); the casts are differentiable, so gradients come back
    in the inputs' own dtypes."""
    kernel_dtype = kernel_list[0].dtype
    if native_pair(x.dtype, kernel_dtype):
        return x, kernel_list
    if accumulation_dtype(x.dtype, kernel_dtype) == torch.float64:
        return x.double(), [k.double() for k in kernel_list]
    return x, [k.float() for k in kernel_list]


def dynconv(x: torch.Tensor, kernel: torch.Tensor, *, groups: int = 1, dilation: int = 1) -> torch.Tensor:
    """:func:`multi_dynconv` with a single kernel tensor (N, groups*s^2, H, W); s is inferred."""
    return multi_dynconv(x, [kernel], groups=groups, dilation=dilation)


@torch.library.register_fake("ddet_ops::multi_dynconv")
def _multi_dynconv_fake(x, kernels, sizes, groups, dilation):
    check_op_args(x, kernels, sizes, groups, dilation)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("ddet_ops::multi_dynconv_backward")
def _multi_dynconv_backward_fake(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels):
    check_op_args(x, kernels, sizes, groups, dilation)
    check_grad_y(grad_y, x)
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty((0,))
    grad_kernels: list[torch.Tensor] = (
        [torch.empty_like(k, memory_format=torch.contiguous_format) for k in kernels] if need_kernels else []
    )
    return grad_x, grad_kernels


def _setup_context(ctx, inputs, output):
    x, kernels, sizes, groups, dilation = inputs
    ctx.save_for_backward(x, *kernels)
    ctx.sizes, ctx.groups, ctx.dilation = sizes, groups, dilation


def _backward(ctx, grad_y):
    x, *kernels = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    # For a Tensor[] input autograd reports one flag per tensor; the op computes all or none.
    need_kernels = any(ctx.needs_input_grad[1])
    grad_x, grad_kernels = torch.ops.ddet_ops.multi_dynconv_backward(
        grad_y, x, kernels, ctx.sizes, ctx.groups, ctx.dilation, need_x, need_kernels
    )
    return _input_gradients(grad_x, grad_kernels, need_x, need_kernels, len(kernels), non_tensor_args=3)


def _input_gradients(grad_x, grad_kernels, need_x, need_kernels, kernel_count, non_tensor_args):
    """What a forward op's autograd formula returns: x's gradient, the kernels' (one per tensor)
    and None for each argument after them."""
    return (
        grad_x if need_x else None,
        list(grad_kernels) if need_kernels else [None] * kernel_count,
        *[None] * non_tensor_args,
    )


torch.library.register_autograd("ddet_ops::multi_dynconv", _backward, setup_context=_setup_context)


def _setup_backward_context(ctx, inputs, output):
    grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels = inputs
    ctx.save_for_backward(grad_y, x, *kernels)
    ctx.sizes, ctx.groups, ctx.dilation = sizes, groups, dilation
    ctx.computed_x, ctx.computed_kernels = need_x, need_kernels
    # Gradients of unused outputs then arrive as None instead of zeros, and their terms are skipped.
    ctx.set_materialize_grads(False)


def _dense(grad_kernels, kernels) -> list[torch.Tensor] | None:
    """Per-tensor kernel cotangents with the missing ones as zeros; None when all are missing."""
    if all(g is None for g in grad_kernels):
        return None
    return [torch.zeros_like(k) if g is None else g for g, k in zip(grad_kernels, kernels, strict=True)]


def _double_backward(ctx, grad_grad_x, grad_grad_kernels):
    r"""The backward op's own backward, in the two ops.

    With the forward :math:`F(x, K)`, the backward returns :math:`G_x(g, K)` and :math:`G_K(g, x)`,
    the adjoints of :math:`F` in each argument: :math:`\langle F(x, K), g\rangle =
    \langle x, G_x(g, K)\rangle = \langle K, G_K(g, x)\rangle`. Each is linear in :math:`g`,
    and :math:`G_x` does not depend on :math:`x` nor :math:`G_K` on :math:`K`. For cotangents
    :math:`(u, V)` of its outputs the gradients are therefore

    * :math:`g`: :math:`F(u, K) + F(x, V)`;
    * :math:`x`: :math:`G_x(g, V)`;  :math:`K`: :math:`G_K(g, u)` -- one call of the backward op
      with ``x = u`` and ``kernels = V``.

    The formula uses the registered ops, so higher orders follow by recursion.
    """
    grad_y, x, *kernels = ctx.saved_tensors
    op_args = (ctx.sizes, ctx.groups, ctx.dilation)
    grad_grad_x = grad_grad_x if ctx.computed_x else None
    grad_grad_kernels = _dense(grad_grad_kernels, kernels) if ctx.computed_kernels else None
    need_grad_y, need_x, need_kernels = ctx.needs_input_grad[0], ctx.needs_input_grad[1], any(ctx.needs_input_grad[2])

    grad_grad_y = None
    if need_grad_y and grad_grad_x is not None:
        grad_grad_y = torch.ops.ddet_ops.multi_dynconv(grad_grad_x, kernels, *op_args)
    if need_grad_y and grad_grad_kernels is not None:
        through_kernels = torch.ops.ddet_ops.multi_dynconv(x, grad_grad_kernels, *op_args)
        grad_grad_y = through_kernels if grad_grad_y is None else grad_grad_y + through_kernels

    want_x = need_x and grad_grad_kernels is not None
    want_kernels = need_kernels and grad_grad_x is not None
    grad_x, grad_kernels = None, [None] * len(kernels)
    if want_x or want_kernels:
        # The x argument is read only for the kernel gradient and the kernels only for grad_x.
        grad_x, grad_kernels = torch.ops.ddet_ops.multi_dynconv_backward(
            grad_y,
            grad_grad_x if want_kernels else x,
            grad_grad_kernels if want_x else kernels,
            *op_args,
            want_x,
            want_kernels,
        )
    return (
        grad_grad_y,
        grad_x if want_x else None,
        list(grad_kernels) if want_kernels else [None] * len(kernels),
        None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "ddet_ops::multi_dynconv_backward", _double_backward, setup_context=_setup_backward_context
)


def _lse_shape(x, sizes, groups, per_size):
    return (x.shape[0], groups * (len(sizes) if per_size else 1), x.shape[2], x.shape[3])


def _lse_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("ddet_ops::multi_dynconv_softmax")
def _multi_dynconv_softmax_fake(x, kernels, sizes, groups, dilation, per_size):
    check_op_args(x, kernels, sizes, groups, dilation)
    lse = x.new_empty(_lse_shape(x, sizes, groups, per_size), dtype=_lse_dtype(x))
    return torch.empty_like(x, memory_format=torch.contiguous_format), lse


@torch.library.register_fake("ddet_ops::multi_dynconv_softmax_backward")
def _multi_dynconv_softmax_backward_fake(
    grad_y, x, kernels, lse, sizes, groups, dilation, per_size, need_x, need_kernels
):
    check_op_args(x, kernels, sizes, groups, dilation)
    check_grad_y(grad_y, x)
    expected = _lse_shape(x, sizes, groups, per_size)
    if tuple(lse.shape) != expected or lse.dtype != _lse_dtype(x):
        raise ValueError(
            f"lse has shape {tuple(lse.shape)} and dtype {lse.dtype}, expected {expected} and {_lse_dtype(x)}"
        )
    return _multi_dynconv_backward_fake(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels)


def _setup_softmax_context(ctx, inputs, output):
    x, kernels, sizes, groups, dilation, per_size = inputs
    _, lse = output
    ctx.save_for_backward(x, lse, *kernels)
    ctx.sizes, ctx.groups, ctx.dilation, ctx.per_size = sizes, groups, dilation, per_size
    ctx.mark_non_differentiable(lse)


def _softmax_backward(ctx, grad_y, _grad_lse):
    x, lse, *kernels = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_kernels = any(ctx.needs_input_grad[1])
    op_args = (ctx.sizes, ctx.groups, ctx.dilation)
    if torch.is_grad_enabled():
        # create_graph: the fused backward has no gradient of its own, so the softmax and the raw
        # op (differentiable to any order) recompute the forward, and autograd differentiates it.
        grad_x, grad_kernels = _composite_softmax_grads(grad_y, x, kernels, ctx, need_x, need_kernels)
    else:
        grad_x, grad_kernels = torch.ops.ddet_ops.multi_dynconv_softmax_backward(
            grad_y, x, kernels, lse, *op_args, ctx.per_size, need_x, need_kernels
        )
    return _input_gradients(grad_x, grad_kernels, need_x, need_kernels, len(kernels), non_tensor_args=4)


def _composite_softmax_grads(grad_y, x, kernels, ctx, need_x, need_kernels):
    normalize = "softmax_per_size" if ctx.per_size else "softmax"
    y = _softmax_then_raw_op(x, kernels, ctx.sizes, ctx.groups, ctx.dilation, normalize)
    inputs = ([x] if need_x else []) + (list(kernels) if need_kernels else [])
    grads = torch.autograd.grad(y, inputs, grad_y, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]
    grad_x = grads[0] if need_x else None
    return grad_x, grads[int(need_x) :] if need_kernels else []


torch.library.register_autograd(
    "ddet_ops::multi_dynconv_softmax", _softmax_backward, setup_context=_setup_softmax_context
)


def _refuse_differentiating_the_fused_softmax_backward(ctx, *grads):
    raise RuntimeError(
        "ddet_ops: the fused softmax backward op has no gradient of its own; differentiate "
        "ddet_ops.multi_dynconv(..., normalize=...) with create_graph=True instead (it then takes a "
        "differentiable path)"
    )


def _setup_nothing(ctx, inputs, output):
    pass


torch.library.register_autograd(
    "ddet_ops::multi_dynconv_softmax_backward",
    _refuse_differentiating_the_fused_softmax_backward,
    setup_context=_setup_nothing,
)
