"""multi_dynconv(..., normalize=) on the CPU: the softmax over the taps fused into the op, against
torch.softmax followed by the plain-PyTorch reference."""

import pytest
import torch
from op_checks import ROUNDING_TOLERANCE, assert_compiled_gradients_match, relative_error

from ddet_ops import MultiDynConv, multi_dynconv, reference

MODES = ["softmax", "softmax_per_size"]
# (N, C, H, W, sizes, groups, dilation)
CASES = [
    (2, 3, 9, 13, (3, 5, 7), 1, 1),
    (1, 4, 6, 7, (5,), 2, 2),
    (2, 6, 11, 10, (3, 5), 3, 1),
    (1, 2, 2, 3, (9, 1), 2, 1),
    (1, 10, 7, 19, (3, 5, 7), 1, 1),
]


def make(case, dtype=torch.float64, kernel_dtype=None, scale=1.0, seed=0):
    n, c, h, w, sizes, groups, dilation = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=gen).to(dtype)
    kernels = [
        (scale * torch.randn(n, groups * s * s, h, w, dtype=torch.float64, generator=gen)).to(kernel_dtype or dtype)
        for s in sizes
    ]
    return x, kernels, dict(groups=groups, dilation=dilation)


def gradients(fn, x, kernels, grad_y, **kw):
    leaves = [x.detach().requires_grad_(True)] + [k.detach().requires_grad_(True) for k in kernels]
    y = fn(leaves[0], leaves[1:], **kw)
    y.backward(grad_y)
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-s{c[4]}-g{c[5]}-d{c[6]}")
def test_fused_softmax_matches_softmax_then_reference(case, mode):
    x, kernels, kw = make(case)
    grad_y = torch.randn_like(x)
    got = gradients(multi_dynconv, x, kernels, grad_y, normalize=mode, **kw)
    want = gradients(reference.multi_dynconv, x, kernels, grad_y, normalize=mode, **kw)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_packed_kernels_and_the_module(mode):
    x, kernels, kw = make(CASES[0])
    packed = torch.cat(kernels, dim=1)
    want = reference.multi_dynconv(x, kernels, normalize=mode)
    torch.testing.assert_close(multi_dynconv(x, packed, (3, 5, 7), normalize=mode), want)
    module = MultiDynConv((3, 5, 7), normalize=mode)
    torch.testing.assert_close(module(x, packed), want)
    assert f"normalize='{mode}'" in repr(module)


def test_each_filter_sums_to_one():
    """On a constant image, pixels whose windows stay inside see a filter summing to 1: y = x for
    "softmax", y = (number of sizes) * x for "softmax_per_size"."""
    x = torch.full((1, 2, 15, 15), 3.0, dtype=torch.float64)
    _, kernels, _ = make((1, 2, 15, 15, (3, 5, 7), 1, 1))
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    joint = multi_dynconv(x, kernels, normalize="softmax")[inner]
    per_size = multi_dynconv(x, kernels, normalize="softmax_per_size")[inner]
    torch.testing.assert_close(joint, torch.full_like(joint, 3.0))
    torch.testing.assert_close(per_size, torch.full_like(per_size, 9.0))


@pytest.mark.parametrize("mode", MODES)
def test_large_kernel_values_do_not_overflow(mode):
    x, kernels, kw = make(CASES[0], dtype=torch.float32, scale=300.0)
    y = multi_dynconv(x, kernels, normalize=mode, **kw)
    want = reference.multi_dynconv(x.double(), [k.double() for k in kernels], normalize=mode, **kw)
    assert torch.isfinite(y).all()
    # k - lse of weights near 1000 carries float32's absolute rounding of such numbers (~6e-5).
    assert relative_error(y, want) < 1e-4


@pytest.mark.parametrize(
    "x_dtype,kernel_dtype",
    [
        (torch.float32, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.float32),
    ],
    ids=str,
)
@pytest.mark.parametrize("mode", MODES)
def test_reduced_precision_against_float64(x_dtype, kernel_dtype, mode):
    """The exponentials are float32 polynomials in the vector paths: within rounding of float64
    arithmetic on the same rounded inputs, for y and both gradients."""
    case = (2, 3, 12, 40, (3, 5, 7), 1, 1)
    x, kernels, kw = make(case, dtype=x_dtype, kernel_dtype=kernel_dtype, scale=2.0)
    grad_y = torch.randn(x.shape, dtype=torch.float64).to(x_dtype)
    got = gradients(multi_dynconv, x, kernels, grad_y, normalize=mode, **kw)
    want = gradients(
        reference.multi_dynconv, x.double(), [k.double() for k in kernels], grad_y.double(), normalize=mode, **kw
    )
    dtypes = [x_dtype, x_dtype] + [kernel_dtype] * len(kernels)
    for g, w, dtype in zip(got, want, dtypes, strict=True):
        assert g.dtype == dtype
        assert relative_error(g, w) < max(ROUNDING_TOLERANCE[dtype], 2e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_and_gradgradcheck(mode):
    x, kernels, kw = make((1, 2, 4, 5, (1, 3), 2, 1))
    leaves = [x.requires_grad_(True)] + [k.requires_grad_(True) for k in kernels]

    def fn(x, *kernels):
        return multi_dynconv(x, list(kernels), normalize=mode, **kw)

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, leaves, fast_mode=True)


@pytest.mark.parametrize("per_size", [False, True])
def test_opcheck(per_size):
    x, kernels, kw = make((2, 4, 6, 5, (3, 5), 2, 1), dtype=torch.float32)
    x.requires_grad_(True)
    kernels = [k.requires_grad_(True) for k in kernels]
    args = (x, kernels, [3, 5], 2, 1, per_size)
    torch.library.opcheck(torch.ops.ddet_ops.multi_dynconv_softmax.default, args)
    _, lse = torch.ops.ddet_ops.multi_dynconv_softmax(*args)
    assert lse.shape == (2, 2 * (2 if per_size else 1), 6, 5) and lse.dtype == torch.float32
    torch.library.opcheck(
        torch.ops.ddet_ops.multi_dynconv_softmax_backward.default,
        (torch.randn_like(x), x.detach(), [k.detach() for k in kernels], lse, [3, 5], 2, 1, per_size, True, True),
    )


def test_torch_compile_fullgraph():
    x, kernels, _ = make((2, 3, 8, 9, (3, 5, 7), 1, 1), dtype=torch.float32)
    packed = torch.cat(kernels, dim=1)

    def loss(x, packed):
        return (multi_dynconv(x, packed, (3, 5, 7), normalize="softmax") * x).sum()

    assert_compiled_gradients_match(loss, x, packed, backend="aot_eager")


def test_bad_arguments_are_named():
    x, kernels, _ = make((1, 1, 4, 4, (3,), 1, 1), dtype=torch.float32)
    for fn in (multi_dynconv, reference.multi_dynconv):
        with pytest.raises(
            ValueError, match="normalize must be one of .None, 'softmax', 'softmax_per_size'., got 'l1'"
        ):
            fn(x, kernels, normalize="l1")
    with pytest.raises(ValueError, match="normalize must be one of"):
        MultiDynConv((3,), normalize="sigmoid")
    y, lse = torch.ops.ddet_ops.multi_dynconv_softmax(x, kernels, [3], 1, 1, False)
    for bad, fragment in [(lse[:, :, :2], "lse has shape"), (lse.double(), "lse has dtype")]:
        with pytest.raises((ValueError, RuntimeError), match=fragment):
            torch.ops.ddet_ops.multi_dynconv_softmax_backward(y, x, kernels, bad, [3], 1, 1, False, True, True)


def test_differentiating_the_fused_backward_op_is_refused():
    x, kernels, _ = make((1, 1, 4, 4, (3,), 1, 1))
    _, lse = torch.ops.ddet_ops.multi_dynconv_softmax(x, kernels, [3], 1, 1, False)
    grad_y = torch.randn_like(x).requires_grad_(True)
    grad_x, _ = torch.ops.ddet_ops.multi_dynconv_softmax_backward(grad_y, x, kernels, lse, [3], 1, 1, False, True, True)
    with pytest.raises(RuntimeError, match="no gradient of its own"):
        grad_x.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
def test_taps_masked_with_minus_infinity_get_no_weight(mode, dtype):
    """Taps at -inf (masked) weigh exactly 0, also when every tap of the first kernel rows is
    masked: the one-pass forward starts from a maximum of -inf there. 37 columns: the vector paths."""
    x, kernels, kw = make((2, 3, 9, 37, (3, 5, 7), 1, 1), dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    for k, s in zip(kernels, (3, 5, 7), strict=True):
        masked = torch.rand(k.shape, generator=gen) < 0.3
        masked[:, :s] = True  # the first kernel row of every size
        masked[:, s * s // 2] = False  # the centre tap stays, so no softmax is over masked taps only
        k.masked_fill_(masked, float("-inf"))
    grad_y = torch.randn_like(x)
    got = gradients(multi_dynconv, x, kernels, grad_y, normalize=mode, **kw)
    want = gradients(reference.multi_dynconv, x, kernels, grad_y, normalize=mode, **kw)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        assert relative_error(g, w) < ROUNDING_TOLERANCE[dtype]
