"""Public functions, fake kernels and autograd of the ``torch.ops.ddet_ops`` operators.

The operators themselves are declared and implemented in C++ (``csrc/``):

* ``ddet_ops::multi_dynconv(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation) -> Tensor``
* ``ddet_ops::multi_dynconv_backward(Tensor grad_y, Tensor x, Tensor[] kernels, int[] sizes,
  int groups, int dilation, bool need_x, bool need_kernels) -> (Tensor, Tensor[])``

``kernels`` holds either one packed tensor covering every size, or one tensor per size; the
kernel gradients come back in the same structure.
The backward op is differentiable too (its gradient is written with both ops), so gradients of
any order are available.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import KernelsArg, check_grad_y, check_op_args, normalize

__all__ = ["multi_dynconv", "dynconv"]


def multi_dynconv(
    x: torch.Tensor,
    kernels: KernelsArg,
    sizes: Sequence[int] | None = None,
    *,
    groups: int = 1,
    dilation: int = 1,
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
            ``sizes`` given. Taps are row-major, as in ``F.unfold``. Kernels are used raw (no
            normalisation).
        sizes: odd kernel sizes, in the order of the packed channels.
        groups: kernel groups; must divide C. 1 shares each pixel's kernel over all channels,
            C gives every channel its own kernel.
        dilation: spacing of the taps (>= 1), the same for every size.

    Returns:
        y, a new (N, C, H, W) tensor of x's dtype and device. Half types accumulate in float32.
        Differentiable in x and in every kernel tensor; the backward pass is deterministic.
        Differentiable to any order: the backward op's own gradient is written with the two ops
        (the backward is linear in grad_y and bilinear in x and the kernels), so
        ``torch.autograd.grad(..., create_graph=True)`` and gradient penalties work.
    """
    kernel_list, sizes = normalize(x, kernels, sizes, groups, dilation)
    return torch.ops.ddet_ops.multi_dynconv(x, kernel_list, sizes, groups, dilation)


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
    return (
        grad_x if need_x else None,
        list(grad_kernels) if need_kernels else [None] * len(kernels),
        None,
        None,
        None,
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
