"""The checks that the CPU and the CUDA op tests share: double backward, and the gradients of a
compiled loss (no test here)."""

import torch

from ddet_ops import multi_dynconv

# (N, C, H, W, sizes, groups, dilation, packed): small enough for gradgradcheck's numerical
# Jacobians, and together every size 1 to 7, groups > 1, dilation 2, a batch and both layouts.
DOUBLE_BACKWARD_CASES = [
    (1, 1, 3, 4, (3,), 1, 1, False),
    (2, 4, 3, 3, (1, 3), 2, 2, True),
    (1, 2, 2, 3, (3, 5, 7), 1, 1, True),
    (1, 2, 3, 3, (5,), 2, 2, False),
]


def double_backward_id(case):
    n, c, h, w, sizes, groups, dilation, packed = case
    return f"{n}x{c}x{h}x{w}-s{sizes}-g{groups}-d{dilation}-{'packed' if packed else 'list'}"


def gradgradcheck_case(case, device, constant=()):
    """gradgradcheck of multi_dynconv in float64 on ``device``; the inputs named in ``constant``
    ("x", "kernels") do not require grad, so the backward computes only the others."""
    n, c, h, w, sizes, groups, dilation, packed = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=gen).to(device)
    kernels = [torch.randn(n, groups * s * s, h, w, dtype=torch.float64, generator=gen).to(device) for s in sizes]
    kernels = [torch.cat(kernels, dim=1)] if packed else kernels
    variables = ([] if "x" in constant else [x]) + ([] if "kernels" in constant else kernels)
    for t in variables:
        t.requires_grad_(True)

    def fn(*values):
        supplied = iter(values)
        x_in = x if "x" in constant else next(supplied)
        kernels_in = kernels if "kernels" in constant else list(supplied)
        return multi_dynconv(x_in, kernels_in[0] if packed else kernels_in, sizes, groups=groups, dilation=dilation)

    # Fast mode compares random projections of the Jacobians instead of every entry: far cheaper.
    assert torch.autograd.gradgradcheck(fn, variables, fast_mode=True)


def assert_compiled_gradients_match(loss, x, packed, **compile_options):
    """``torch.compile(loss, fullgraph=True, **compile_options)`` gives the gradients of x and of
    the packed kernels that the eager ``loss`` gives."""
    compiled = torch.compile(loss, fullgraph=True, **compile_options)
    xe, pe = x.clone().requires_grad_(True), packed.clone().requires_grad_(True)
    xc, pc = x.clone().requires_grad_(True), packed.clone().requires_grad_(True)
    loss(xe, pe).backward()
    compiled(xc, pc).backward()
    torch.testing.assert_close(xc.grad, xe.grad)
    torch.testing.assert_close(pc.grad, pe.grad)
