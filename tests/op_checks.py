"""The checks that the CPU and the CUDA op tests share: double backward, the gradients of a
compiled loss, kernels laid out with other batch strides (no test here)."""

import itertools

import torch

from ddet_ops import multi_dynconv, reference

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


FLOATING_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# Relative error (max abs error / max abs value) allowed for a result rounded to a dtype.
ROUNDING_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def mixed_dtype_case(x_dtype, kernel_dtype, device):
    """multi_dynconv with x and kernels of different dtypes on ``device``: y in x's dtype, each
    gradient in its input's dtype, all within rounding of float64 on the same rounded inputs."""
    gen = torch.Generator().manual_seed(0)
    # 40 columns: the CPU kernels' vector strips with every tap inside the row, and borders.
    x = torch.randn(2, 3, 12, 40, dtype=torch.float64, generator=gen).to(device, x_dtype)
    packed = torch.randn(2, 83, 12, 40, dtype=torch.float64, generator=gen).to(device, kernel_dtype)
    grad_y = torch.randn(2, 3, 12, 40, dtype=torch.float64, generator=gen).to(device, x_dtype)
    leaves = [x.clone().requires_grad_(True), packed.clone().requires_grad_(True)]
    y = multi_dynconv(leaves[0], leaves[1], (3, 5, 7))
    y.backward(grad_y)
    exact = [t.double().requires_grad_(True) for t in (x, packed)]
    want = reference.multi_dynconv(exact[0], exact[1], (3, 5, 7))
    want.backward(grad_y.double())
    assert y.dtype == x_dtype and leaves[0].grad.dtype == x_dtype and leaves[1].grad.dtype == kernel_dtype
    assert relative_error(y, want) < ROUNDING_TOLERANCE[x_dtype]
    assert relative_error(leaves[0].grad, exact[0].grad) < ROUNDING_TOLERANCE[x_dtype]
    assert relative_error(leaves[1].grad, exact[1].grad) < ROUNDING_TOLERANCE[kernel_dtype]


KERNEL_LAYOUTS = ["channel_slices", "expanded_batch", "odd_batch_stride"]


def kernels_with_batch_stride(kernels, layout):
    """The kernels (N, s*s, H, W each) as non-contiguous views with contiguous planes: channel
    slices of one larger head's output, the first image expanded over the batch, or images an odd
    number of elements apart (not a whole number of planes: the op must copy those)."""
    n, _, h, w = kernels[0].shape
    if layout == "channel_slices":
        pad = [torch.randn(n, c, h, w, dtype=kernels[0].dtype, device=kernels[0].device) for c in (2, 3)]
        head = torch.cat([pad[0], *kernels, pad[1]], dim=1)
        bounds = [2]
        for k in kernels:
            bounds.append(bounds[-1] + k.shape[1])
        return [head[:, a:b] for a, b in itertools.pairwise(bounds)]
    if layout == "expanded_batch":
        return [k[:1].expand_as(k) for k in kernels]
    views = []
    for k in kernels:
        flat = torch.zeros(n, k[0].numel() + 1, dtype=k.dtype, device=k.device)
        flat[:, : k[0].numel()] = k.reshape(n, -1)
        views.append(flat[:, : k[0].numel()].view_as(k))
    return views


def assert_batch_strided_kernels_give_the_bits_of_contiguous_ones(x, kernels, layout):
    """Forward and every gradient with the kernels as views of `layout` equal those with
    contiguous copies of the same views, bit for bit."""
    views = kernels_with_batch_stride(kernels, layout)
    assert not any(v.is_contiguous() for v in views)
    grad_y = torch.randn_like(x)

    def run(kernel_list):
        leaves = [x.detach().requires_grad_()] + [k.detach().requires_grad_() for k in kernel_list]
        y = multi_dynconv(leaves[0], leaves[1:], [int(k.shape[1] ** 0.5) for k in kernel_list])
        y.backward(grad_y)
        return [y.detach()] + [t.grad for t in leaves]

    for got, want in zip(run(views), run([v.contiguous() for v in views]), strict=True):
        assert torch.equal(got, want)
