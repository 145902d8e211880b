"""ddet_ops on the CPU against its plain-PyTorch reference, and the op's contract (docs/ops.md)."""

import itertools
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_checks import (
    DOUBLE_BACKWARD_CASES,
    FLOATING_DTYPES,
    KERNEL_LAYOUTS,
    assert_batch_strided_kernels_give_the_bits_of_contiguous_ones,
    assert_compiled_gradients_match,
    double_backward_id,
    gradgradcheck_case,
    mixed_dtype_case,
)

import ddet_ops
from ddet_ops import MultiDynConv, dynconv, multi_dynconv, reference

# (N, C, H, W, sizes, groups, dilation)
CASES = [
    (1, 1, 8, 8, (3,), 1, 1),
    (2, 3, 9, 13, (3, 5, 7), 1, 1),
    (3, 2, 5, 4, (1, 3), 2, 1),
    (1, 4, 6, 7, (5,), 2, 2),
    (2, 6, 11, 10, (3, 5, 7), 3, 3),
    (1, 3, 1, 1, (3, 5, 7), 1, 1),
    (1, 2, 2, 3, (9, 11), 2, 1),
    (2, 1, 3, 17, (7,), 1, 2),
    (1, 5, 12, 9, (1,), 5, 1),
    (1, 8, 20, 21, (3, 5), 8, 1),
    (2, 4, 19, 40, (3, 5, 7), 1, 1),
    # more channels in a group than one block (4) of the CPU kernels' channel loop
    (1, 10, 7, 19, (3, 5, 7), 1, 1),
    (1, 12, 5, 9, (3,), 2, 1),
]


def make_inputs(n, c, h, w, sizes, groups, dtype=torch.float64, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=dtype, generator=gen)
    kernels = [torch.randn(n, groups * s * s, h, w, dtype=dtype, generator=gen) for s in sizes]
    if requires_grad:
        x.requires_grad_(True)
        for k in kernels:
            k.requires_grad_(True)
    return x, kernels


def grads(fn, x, kernels, grad_y, **kw):
    x = x.detach().requires_grad_(True)
    if isinstance(kernels, torch.Tensor):
        kernels = kernels.detach().requires_grad_(True)
        leaves = [kernels]
    else:
        kernels = [k.detach().requires_grad_(True) for k in kernels]
        leaves = kernels
    y = fn(x, kernels, **kw)
    y.backward(grad_y)
    return y.detach(), x.grad, [k.grad for k in leaves]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-s{c[4]}-g{c[5]}-d{c[6]}")
@pytest.mark.parametrize("packed", [False, True], ids=["list", "packed"])
def test_forward_and_backward_match_reference(case, packed):
    n, c, h, w, sizes, groups, dilation = case
    x, kernels = make_inputs(n, c, h, w, sizes, groups)
    arg = torch.cat(kernels, dim=1) if packed else kernels
    kw = dict(sizes=sizes if packed else None, groups=groups, dilation=dilation)
    grad_y = torch.randn_like(x)
    y, gx, gk = grads(multi_dynconv, x, arg, grad_y, **kw)
    y_ref, gx_ref, gk_ref = grads(reference.multi_dynconv, x, arg, grad_y, **kw)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    assert len(gk) == len(gk_ref) == (1 if packed else len(sizes))
    for got, want in zip(gk, gk_ref, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-s{c[4]}-g{c[5]}-d{c[6]}")
def test_v1_device_code_path_matches_reference(case):
    """The v1 CUDA kernels' per-thread functions, run serially on the CPU."""
    n, c, h, w, sizes, groups, dilation = case
    x, kernels = make_inputs(n, c, h, w, sizes, groups)
    packed = torch.cat(kernels, dim=1)
    grad_y = torch.randn_like(x)
    y = torch.ops.ddet_ops_testing.pixelwise_v1_forward(x, [packed], list(sizes), groups, dilation)
    gx, (gk,) = torch.ops.ddet_ops_testing.pixelwise_v1_backward(
        grad_y, x, [packed], list(sizes), groups, dilation, True, True
    )
    y_ref, gx_ref, (gk_ref,) = grads(
        reference.multi_dynconv, x, packed, grad_y, sizes=sizes, groups=groups, dilation=dilation
    )
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gk, gk_ref)


# The v2 strip harness: rows that are and are not a multiple of every strip width (4 float and
# half, 2 double), strips inside the image and across its borders, channel blocks with tails,
# groups, sizes/dilations off the specialised paths, and rows of more than one band of 32 strips
# whose last band is padded. One group of 8 or more channels takes the channel tiles (forward and
# grad_x) where its rows are aligned: a last chunk of 2, 3 and 5 channels (float chunks are 6, double
# 4: 8 is two whole double chunks), tiles past the last row and column, two and three bands, two
# images; 8 channels in unaligned rows take the strips.
STRIP_CASES = [
    (1, 3, 11, 32, (1, 3, 5, 7), 1, 1),
    (1, 2, 5, 140, (3, 5), 1, 1),
    (2, 5, 10, 35, (3, 7, 1, 5), 1, 1),
    (1, 4, 9, 16, (3, 5), 4, 1),
    (1, 2, 7, 13, (3, 9), 2, 2),
    (1, 1, 1, 1, (3, 5, 7), 1, 1),
    (1, 9, 12, 24, (5, 3), 1, 1),
    (1, 8, 9, 136, (1, 3, 5, 7), 1, 1),
    (2, 11, 17, 20, (7, 3), 1, 1),
    (1, 8, 5, 13, (3, 5), 1, 1),
]
# Relative error (max abs error / max abs value) against float64 on the same rounded inputs.
STRIP_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _relative_error(got, want):
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _strip_inputs(case, dtype, kernel_dtype, scale=1.0):
    """x, the packed kernels (times scale) and grad_y of a harness case, rounded to their dtypes."""
    n, c, h, w, sizes, groups, _ = case
    x, kernels = make_inputs(n, c, h, w, sizes, groups)
    packed, grad_y = scale * torch.cat(kernels, dim=1), torch.randn_like(x)
    return x.to(dtype), packed.to(kernel_dtype), grad_y.to(dtype)


def _assert_strip_results(got, inputs, case, normalize=None):
    """The harness's y, grad_x and kernel gradient in their inputs' dtypes, each within the dtype's
    tolerance of the float64 reference on the same rounded inputs."""
    _, _, _, _, sizes, groups, dilation = case
    x, packed, grad_y = inputs
    want = grads(
        reference.multi_dynconv,
        x.double(),
        packed.double(),
        grad_y.double(),
        sizes=sizes,
        groups=groups,
        dilation=dilation,
        normalize=normalize,
    )
    for name, value, ref, out_dtype in zip(
        ("y", "grad_x", "grad_k"), got, (want[0], want[1], want[2][0]), (x.dtype, x.dtype, packed.dtype), strict=True
    ):
        assert value.dtype == out_dtype
        assert _relative_error(value, ref) < STRIP_TOLERANCE[out_dtype], (name, case, normalize)


def _strip_case(case, dtype, kernel_dtype=None):
    inputs = _strip_inputs(case, dtype, kernel_dtype or dtype)
    x, packed, grad_y = inputs
    args = ([packed], list(case[4]), case[5], case[6])
    y, forward_paths = torch.ops.ddet_ops_testing.strip_forward(x, *args)
    gx, (gk,), backward_paths = torch.ops.ddet_ops_testing.strip_backward(grad_y, x, *args, True, True)
    _assert_strip_results((y, gx, gk), inputs, case)
    return set(forward_paths) | set(backward_paths)


def _strip_paths(softmax):
    """The harness's path names of the raw passes, or of the softmax passes."""
    return {path for path in torch.ops.ddet_ops_testing.strip_paths() if path.startswith("softmax") == softmax}


@pytest.mark.parametrize("dtype", list(STRIP_TOLERANCE), ids=str)
def test_v2_strip_code_matches_reference_on_every_path(dtype):
    """The v2 CUDA kernels' per-thread functions, run serially on the CPU over every strip; the
    cases together must take every path the kernels have (each specialised size inside and on
    the border, vector and scalar weights, the generic path) for every dtype."""
    seen = set()
    for case in STRIP_CASES:
        seen |= _strip_case(case, dtype)
    everything = _strip_paths(softmax=False)
    assert everything - seen == set(), "paths the harness never ran"
    assert seen <= everything


def _softmax_strip_case(case, mode, dtype, kernel_dtype=None):
    """The v2 softmax passes on the harness against torch.softmax and the float64 reference; lse
    against the CPU op's."""
    inputs = _strip_inputs(case, dtype, kernel_dtype or dtype, scale=3.0)
    x, packed, grad_y = inputs
    args = ([packed], list(case[4]), case[5], case[6], mode == "softmax_per_size")
    y, lse, forward_paths = torch.ops.ddet_ops_testing.strip_softmax_forward(x, *args)
    gx, (gk,), backward_paths = torch.ops.ddet_ops_testing.strip_softmax_backward(
        grad_y, x, args[0], lse, *args[1:], True, True
    )
    _assert_strip_results((y, gx, gk), inputs, case, mode)
    _, cpu_lse = torch.ops.ddet_ops.multi_dynconv_softmax(x, *args)
    assert _relative_error(lse, cpu_lse.double()) < STRIP_TOLERANCE[lse.dtype], ("lse", case, mode)
    return set(forward_paths) | set(backward_paths)


@pytest.mark.parametrize("mode", ["softmax", "softmax_per_size"])
@pytest.mark.parametrize("dtype", list(STRIP_TOLERANCE), ids=str)
def test_v2_softmax_strips_match_reference_on_every_path(dtype, mode):
    """The CUDA softmax passes (online-softmax forward, grad_x from lse, the dot products, the
    kernel gradients) on the harness: every path of each, for every dtype and both modes."""
    seen = set()
    for case in STRIP_CASES:
        seen |= _softmax_strip_case(case, mode, dtype)
    assert _strip_paths(softmax=True) - seen == set(), "paths the harness never ran"
    assert seen <= _strip_paths(softmax=True)


@pytest.mark.parametrize(
    ("channels", "groups", "width", "tiles"),
    [(8, 1, 16, True), (7, 1, 16, False), (16, 2, 16, False), (8, 1, 15, False)],
    ids=["8ch", "7ch", "2groups", "unaligned"],
)
def test_v2_channel_tiles_only_for_one_group_of_many_channels(channels, groups, width, tiles):
    """Forward and grad_x take the channel tiles exactly when the call is one group of 8 or more
    channels with aligned rows; the kernel gradients never do."""
    x, kernels = make_inputs(1, channels, 5, width, (3, 5), groups)
    grad_y = torch.randn_like(x)
    args = (kernels, [3, 5], groups, 1)
    y, forward_paths = torch.ops.ddet_ops_testing.strip_forward(x, *args)
    gx, _, backward_paths = torch.ops.ddet_ops_testing.strip_backward(grad_y, x, *args, True, True)
    assert {path.startswith("forward_tile") for path in forward_paths} == {tiles}
    grad_x_paths = {path for path in backward_paths if path.startswith("grad_x")}
    assert {path.startswith("grad_x_tile") for path in grad_x_paths} == {tiles}
    want = grads(reference.multi_dynconv, x, kernels, grad_y, sizes=(3, 5), groups=groups)
    torch.testing.assert_close(y, want[0])
    torch.testing.assert_close(gx, want[1])


def test_v2_strips_of_a_misaligned_tensor_take_the_scalar_paths():
    """A contiguous view one element past an aligned address cannot be read as 16-byte vectors: the
    strips must notice and still match the reference."""
    n, c, h, w, sizes = 1, 3, 9, 16, (3, 5)
    x, kernels = make_inputs(n, c, h, w, sizes, 1)
    shifted = torch.empty(x.numel() + 1, dtype=x.dtype)[1:].view_as(x).copy_(x)
    y, forward_paths = torch.ops.ddet_ops_testing.strip_forward(shifted, kernels, list(sizes), 1, 1)
    _, aligned_paths = torch.ops.ddet_ops_testing.strip_forward(x, kernels, list(sizes), 1, 1)
    assert not any(path.endswith("vector") for path in forward_paths)
    assert any(path.endswith("vector") for path in aligned_paths)
    torch.testing.assert_close(y, reference.multi_dynconv(x, kernels, sizes=sizes))


@pytest.mark.parametrize("need", [(True, False), (False, True)], ids=["grad_x", "grad_k"])
def test_v2_backward_halves_run_alone(need):
    x, kernels = make_inputs(1, 3, 9, 16, (3, 5), 1)
    grad_y = torch.randn_like(x)
    both = torch.ops.ddet_ops_testing.strip_backward(grad_y, x, kernels, [3, 5], 1, 1, True, True)
    gx, gk, _ = torch.ops.ddet_ops_testing.strip_backward(grad_y, x, kernels, [3, 5], 1, 1, *need)
    if need[0]:
        assert gk == [] and torch.equal(gx, both[0])
    else:
        assert gx.numel() == 0 and all(torch.equal(a, b) for a, b in zip(gk, both[1], strict=True))


def test_test_only_ops_are_not_in_the_production_namespace():
    names = torch._C._dispatch_get_all_op_names()
    production = {name for name in names if name.startswith("ddet_ops::")}
    assert {"ddet_ops::multi_dynconv", "ddet_ops::multi_dynconv_backward"} <= production
    assert not {name for name in production if "pixelwise" in name or "strip" in name}
    assert "ddet_ops_testing::strip_forward" in names


def test_shift_add_reference_agrees_with_unfold_reference():
    x, kernels = make_inputs(2, 4, 7, 9, (3, 5), 2)
    torch.testing.assert_close(
        reference.multi_dynconv(x, kernels, groups=2, dilation=2, formulation="shift_add"),
        reference.multi_dynconv(x, kernels, groups=2, dilation=2),
    )
    with pytest.raises(ValueError, match="formulation must be one of .'unfold', 'shift_add'., got 'im2col'"):
        reference.multi_dynconv(x, kernels, groups=2, formulation="im2col")


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck(packed):
    x, kernels = make_inputs(1, 2, 5, 6, (1, 3), 2, requires_grad=True)
    if packed:
        arg = torch.cat([k.detach() for k in kernels], dim=1).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x, k: multi_dynconv(x, k, (1, 3), groups=2, dilation=2), (x, arg))
    else:
        assert torch.autograd.gradcheck(lambda x, a, b: multi_dynconv(x, [a, b], groups=2), (x, *kernels))


@pytest.mark.parametrize("need", ["x", "kernels", "both"])
def test_requires_grad_on_some_inputs(need):
    x, kernels = make_inputs(2, 3, 6, 7, (3, 5), 1)
    x.requires_grad_(need in ("x", "both"))
    for k in kernels:
        k.requires_grad_(need in ("kernels", "both"))
    multi_dynconv(x, kernels).sum().backward()
    x_ref = x.detach().requires_grad_(x.requires_grad)
    k_ref = [k.detach().requires_grad_(k.requires_grad) for k in kernels]
    reference.multi_dynconv(x_ref, k_ref).sum().backward()
    assert (x.grad is None) == (need == "kernels")
    if x.grad is not None:
        torch.testing.assert_close(x.grad, x_ref.grad)
    for k, kr in zip(kernels, k_ref, strict=True):
        assert (k.grad is None) == (need == "x")
        if k.grad is not None:
            torch.testing.assert_close(k.grad, kr.grad)


def test_opcheck():
    x, kernels = make_inputs(2, 4, 6, 5, (3, 5), 2, dtype=torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.ddet_ops.multi_dynconv.default, (x, kernels, [3, 5], 2, 1))
    packed = torch.cat([k.detach() for k in kernels], dim=1).requires_grad_(True)
    torch.library.opcheck(torch.ops.ddet_ops.multi_dynconv.default, (x, [packed], [3, 5], 2, 2))
    grad_y = torch.randn_like(x)
    torch.library.opcheck(
        torch.ops.ddet_ops.multi_dynconv_backward.default,
        (grad_y, x.detach(), [packed.detach()], [3, 5], 2, 2, True, True),
    )


def test_torch_compile_fullgraph_forward_and_backward():
    x, kernels = make_inputs(2, 3, 8, 9, (3, 5, 7), 1, dtype=torch.float32)
    packed = torch.cat(kernels, dim=1)

    def loss(x, packed):
        return (multi_dynconv(x, packed, (3, 5, 7)) * x).sum()

    assert_compiled_gradients_match(loss, x, packed, backend="aot_eager")


def test_backward_is_bitwise_deterministic():
    x, kernels = make_inputs(2, 4, 33, 47, (3, 5, 7), 2, dtype=torch.float32)
    grad_y = torch.randn_like(x)
    first = grads(multi_dynconv, x, kernels, grad_y, groups=2)
    for _ in range(2):
        again = grads(multi_dynconv, x, kernels, grad_y, groups=2)
        assert torch.equal(again[1], first[1])
        assert all(torch.equal(a, b) for a, b in zip(again[2], first[2], strict=True))


def test_inputs_are_never_modified():
    x, kernels = make_inputs(1, 3, 10, 12, (3, 5, 7), 1, requires_grad=True)
    before = [t.detach().clone() for t in (x, *kernels)]
    grad_y = torch.randn_like(x)
    grad_before = grad_y.clone()
    y = multi_dynconv(x, kernels)
    y.backward(grad_y)
    assert all(torch.equal(t.detach(), b) for t, b in zip((x, *kernels), before, strict=True))
    assert torch.equal(grad_y, grad_before)
    assert y.data_ptr() not in {t.data_ptr() for t in (x, *kernels)}


def test_non_contiguous_and_channels_last_inputs():
    x, kernels = make_inputs(2, 4, 9, 11, (3, 5), 1)
    packed = torch.cat(kernels, dim=1)
    expected = reference.multi_dynconv(x, packed, (3, 5))
    x_cl = x.to(memory_format=torch.channels_last)
    packed_cl = packed.to(memory_format=torch.channels_last)
    torch.testing.assert_close(multi_dynconv(x_cl, packed_cl, (3, 5)), expected)
    # Views with strides in every dimension: transpose H/W twice, and slices of larger tensors.
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)
    big = torch.zeros(2, 2 * packed.shape[1], 9, 22, dtype=packed.dtype)
    big[:, ::2, :, ::2] = packed
    strided = big[:, ::2, :, ::2]
    assert not strided.is_contiguous()
    torch.testing.assert_close(multi_dynconv(x_t, strided, (3, 5)), expected)
    # The per-size list as views into one packed tensor (no copy needed).
    views = list(torch.split(packed, [9, 25], dim=1))
    torch.testing.assert_close(multi_dynconv(x, views), expected)


@pytest.mark.parametrize(
    "x_dtype,kernel_dtype",
    [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.float16, torch.float16),
        (torch.float32, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("packed", [True, False])
def test_channels_last_inputs_give_the_bits_of_contiguous_ones(x_dtype, kernel_dtype, packed):
    """Channels-last CPU inputs take a transposing copy of their own (17×23 pixels: more than
    one block of pixels and a partial last one); the planes it makes must be the same bits."""
    x, kernels = make_inputs(2, 6, 17, 23, (3, 5), 2, dtype=x_dtype)
    kernels = [k.to(kernel_dtype) for k in kernels]
    if packed:
        kernels = [torch.cat(kernels, dim=1)]
    grad_y = torch.randn_like(x)
    kernel_argument = (lambda tensors: tensors[0]) if packed else list

    def run(memory_format):
        inputs = [t.to(memory_format=memory_format).requires_grad_() for t in (x, *kernels)]
        y = multi_dynconv(inputs[0], kernel_argument(inputs[1:]), (3, 5), groups=2)
        y.backward(grad_y.to(memory_format=memory_format))
        return [y.detach()] + [t.grad for t in inputs]

    for got, expected in zip(run(torch.channels_last), run(torch.contiguous_format), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("layout", KERNEL_LAYOUTS)
def test_kernels_with_other_batch_strides_give_the_bits_of_contiguous_ones(layout):
    """Kernels with contiguous planes whose images lie a whole number of planes apart (channel
    slices of one head's output, one image expanded over the batch) are read as they are; every
    size must still find its own planes in every image. Others are copied first."""
    x, kernels = make_inputs(3, 4, 9, 20, (3, 5), 1, dtype=torch.float32)
    assert_batch_strided_kernels_give_the_bits_of_contiguous_ones(x, kernels, layout)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_reduced_precision_against_float64(dtype, tol):
    # 40 columns: the CPU kernels' 16-column vector strips with every tap inside the row, and borders
    x, kernels = make_inputs(2, 3, 12, 40, (3, 5, 7), 1, dtype=torch.float32)
    x_l, k_l = x.to(dtype), [k.to(dtype) for k in kernels]
    y = multi_dynconv(x_l, k_l)
    assert y.dtype == dtype
    want = reference.multi_dynconv(x_l.double(), [k.double() for k in k_l])
    scale = want.abs().max()
    assert ((y.double() - want).abs().max() / scale).item() < tol
    grad_y = torch.randn_like(x).to(dtype)
    _, gx, gk = grads(multi_dynconv, x_l, k_l, grad_y)
    _, gx_ref, gk_ref = grads(reference.multi_dynconv, x_l.double(), [k.double() for k in k_l], grad_y.double())
    assert ((gx.double() - gx_ref).abs().max() / gx_ref.abs().max()).item() < tol
    for got, want in zip(gk, gk_ref, strict=True):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() < tol


@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5)])
def test_empty_tensors(shape):
    n, c, h, w = shape
    x = torch.randn(shape, requires_grad=True)
    packed = torch.randn(n, 34, h, w, requires_grad=True)
    y = multi_dynconv(x, packed, (3, 5))
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape and packed.grad.shape == packed.shape
    assert not packed.grad.any()


def test_empty_planes_with_broadcast_channels():
    """Kernels of empty planes expanded over their channels (every stride but the pixels' zero):
    the layout check must not divide by the empty plane's size."""
    x = torch.randn(2, 3, 0, 5)
    kernels = torch.randn(2, 1, 0, 5).expand(2, 9, 0, 5)
    assert torch.ops.ddet_ops.multi_dynconv(x, [kernels], [3], 1, 1).shape == x.shape


def test_dynconv_and_module():
    x, (k,) = make_inputs(2, 3, 7, 8, (5,), 3)
    torch.testing.assert_close(dynconv(x, k, groups=3), reference.dynconv(x, k, groups=3))
    x, kernels = make_inputs(1, 2, 6, 6, (3, 5, 7), 1)
    module = MultiDynConv((3, 5, 7))
    assert module.kernel_channels == 83 and "sizes=(3, 5, 7)" in repr(module)
    torch.testing.assert_close(module(x, torch.cat(kernels, 1)), reference.multi_dynconv(x, kernels))


def test_centre_tap_kernel_is_identity():
    x = torch.randn(2, 3, 9, 10)
    k = torch.zeros(2, 49, 9, 10)
    k[:, 24] = 1
    assert torch.equal(dynconv(x, k), x)


BAD_INPUTS = [
    # (description, x shape, kernels builder, kwargs, message fragment)
    ("x not 4-D", (3, 8, 8), lambda: [torch.zeros(1, 9, 8, 8)], {}, "4-D"),
    ("kernel not 4-D", (1, 3, 8, 8), lambda: [torch.zeros(9, 8, 8)], {}, "4-D"),
    ("kernel channels not a square", (1, 3, 8, 8), lambda: [torch.zeros(1, 10, 8, 8)], {}, "channels"),
    ("even size", (1, 3, 8, 8), lambda: [torch.zeros(1, 16, 8, 8)], {}, "odd"),
    ("even size given", (1, 3, 8, 8), lambda: torch.zeros(1, 16, 8, 8), {"sizes": (4,)}, "odd"),
    ("non-positive size", (1, 3, 8, 8), lambda: torch.zeros(1, 1, 8, 8), {"sizes": (-1,)}, "odd"),
    ("packed channels", (1, 3, 8, 8), lambda: torch.zeros(1, 33, 8, 8), {"sizes": (3, 5)}, "channels"),
    ("packed without sizes", (1, 3, 8, 8), lambda: torch.zeros(1, 34, 8, 8), {}, "sizes"),
    ("sizes disagree", (1, 3, 8, 8), lambda: [torch.zeros(1, 9, 8, 8)], {"sizes": (5,)}, "disagrees"),
    ("groups do not divide C", (1, 3, 8, 8), lambda: [torch.zeros(1, 18, 8, 8)], {"groups": 2}, "divide"),
    ("groups < 1", (1, 3, 8, 8), lambda: [torch.zeros(1, 9, 8, 8)], {"groups": 0}, "groups"),
    ("dilation < 1", (1, 3, 8, 8), lambda: [torch.zeros(1, 9, 8, 8)], {"dilation": 0}, "dilation"),
    ("batch differs", (2, 3, 8, 8), lambda: [torch.zeros(1, 9, 8, 8)], {}, "batch"),
    ("spatial differs", (1, 3, 8, 8), lambda: [torch.zeros(1, 9, 8, 7)], {}, "spatial"),
    ("integer kernels", (1, 3, 8, 8), lambda: [torch.zeros(1, 9, 8, 8, dtype=torch.int32)], {}, "floating point"),
    (
        "kernel dtypes differ",
        (1, 3, 8, 8),
        lambda: [torch.zeros(1, 9, 8, 8), torch.zeros(1, 25, 8, 8, dtype=torch.bfloat16)],
        {},
        r"kernels\[1\] has dtype torch.bfloat16, but kernels\[0\] has torch.float32",
    ),
    ("empty list", (1, 3, 8, 8), lambda: [], {}, "empty"),
]


@pytest.mark.parametrize("desc,x_shape,build,kw,fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(desc, x_shape, build, kw, fragment):
    x = torch.zeros(x_shape)
    for fn in (multi_dynconv, reference.multi_dynconv):
        with pytest.raises((ValueError, RuntimeError), match=fragment):
            fn(x, build(), **kw)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_integer_and_complex_dtypes_are_refused(dtype):
    x = torch.zeros(1, 1, 4, 4, dtype=dtype)
    with pytest.raises((ValueError, RuntimeError), match="floating"):
        multi_dynconv(x, [torch.zeros(1, 9, 4, 4, dtype=dtype)])


def test_device_mismatch_is_refused():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises((ValueError, RuntimeError), match="meta"):
        multi_dynconv(x, [torch.zeros(1, 9, 4, 4, device="meta")])


BAD_DIRECT_CALLS = [
    ((torch.zeros(3, 4, 4), [torch.zeros(1, 9, 4, 4)], [3], 1, 1), "4-D"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 16, 4, 4)], [4], 1, 1), "odd"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 10, 4, 4)], [3], 1, 1), "channels"),
    ((torch.zeros(1, 3, 4, 4), [torch.zeros(1, 9, 4, 4)], [3], 2, 1), "divide"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 9, 4, 4)], [3], 1, 0), "dilation"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(2, 9, 4, 4)], [3], 1, 1), "batch and spatial"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 9, 4, 4).double()], [3], 1, 1), "dtype"),
    ((torch.zeros(1, 1, 4, 4, dtype=torch.int32), [torch.zeros(1, 9, 4, 4, dtype=torch.int32)], [3], 1, 1), "float"),
    ((torch.zeros(1, 1, 4, 4), [], [3], 1, 1), "empty"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 9, 4, 4)], [], 1, 1), "at least one"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 9, 4, 4)], [-3], 1, 1), "odd"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 9, 4, 4)], [3], -1, 1), "groups"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 9, 4, 4)] * 2, [3, 3, 3], 1, 1), "one tensor per size"),
    ((torch.zeros(1, 1, 4, 4), [torch.zeros(1, 17, 4, 4)], [1] * 17, 1, 1), "at most 16"),
    # (2^63 - 1)^2 wraps to 1 in 64 bits: 1 + 9 channels would pass a wrapped count.
    ((torch.zeros(1, 1, 8, 8), [torch.zeros(1, 10, 8, 8)], [3, 2**63 - 1], 1, 3), "too large"),
    ((torch.zeros(1, 1, 8, 8), [torch.zeros(1, 9, 8, 8), torch.zeros(1, 1, 8, 8)], [3, 2**63 - 1], 1, 1), "too large"),
    ((torch.zeros(1, 1, 8, 8), [torch.zeros(1, 9, 8, 8)], [2**32 + 3], 1, 1), "too large"),
]


@pytest.mark.parametrize("args,fragment", BAD_DIRECT_CALLS)
def test_direct_op_calls_check_their_arguments(args, fragment):
    """The C++ op guards itself too: torch.ops.ddet_ops is reachable without the Python face."""
    with pytest.raises(RuntimeError, match=fragment):
        torch.ops.ddet_ops.multi_dynconv(*args)


@pytest.mark.parametrize("args,fragment", BAD_DIRECT_CALLS)
def test_direct_backward_calls_check_what_the_forward_checks(args, fragment):
    x = args[0]
    with pytest.raises(RuntimeError, match=fragment):
        torch.ops.ddet_ops.multi_dynconv_backward(torch.zeros_like(x), *args, True, True)


def test_a_size_whose_square_wraps_is_refused_in_every_dtype_without_a_crash():
    # In a subprocess: before the size bound, half types at dilation 3 read far out of bounds.
    code = (
        "import torch, ddet_ops\n"
        "for dtype in (torch.bfloat16, torch.float16, torch.float32):\n"
        "    x, k = torch.zeros(1, 1, 8, 8, dtype=dtype), torch.zeros(1, 10, 8, 8, dtype=dtype)\n"
        "    for call in (lambda: torch.ops.ddet_ops.multi_dynconv(x, [k], [3, 2**63 - 1], 1, 3),\n"
        "                 lambda: torch.ops.ddet_ops.multi_dynconv_backward("
        "x, x, [k], [3, 2**63 - 1], 1, 3, True, True)):\n"
        "        try:\n"
        "            call()\n"
        "            print('accepted')\n"
        "        except RuntimeError as error:\n"
        "            print('refused' if 'too large' in str(error) else error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused"] * 6


META_BACKWARD_CALLS = [
    # (grad_y, x, kernels, sizes, groups, dilation, fragment): one of them on the meta device.
    (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), [torch.zeros(1, 9, 8, 8, device="meta")], [3], 1, 1, "meta"),
    (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), [torch.zeros(1, 9, 8, 8, device="meta")], [2], -1, 0, "groups"),
    (torch.zeros(1, 1, 8, 8, device="meta"), torch.zeros(1, 1, 8, 8), [torch.zeros(1, 9, 8, 8)], [3], 1, 1, "meta"),
    (
        torch.zeros(1, 1, 8, 7, device="meta"),
        torch.zeros(1, 1, 8, 8, device="meta"),
        [torch.zeros(1, 9, 8, 8, device="meta")],
        [3],
        1,
        1,
        "grad_y has shape",
    ),
    (
        torch.zeros(1, 1, 8, 8, device="meta"),
        torch.zeros(1, 1, 8, 8, device="meta"),
        [torch.zeros(1, 25, 8, 8, device="meta")],
        [3],
        1,
        1,
        "channels",
    ),
    (torch.zeros(1, 1, 8, 8, device="meta"), torch.zeros(1, 1, 8, 8, device="meta"), [], [3], 1, 1, "empty"),
]


@pytest.mark.parametrize("grad_y,x,kernels,sizes,groups,dilation,fragment", META_BACKWARD_CALLS)
def test_backward_on_meta_tensors_checks_its_arguments(grad_y, x, kernels, sizes, groups, dilation, fragment):
    with pytest.raises((ValueError, RuntimeError), match=fragment):
        torch.ops.ddet_ops.multi_dynconv_backward(grad_y, x, kernels, sizes, groups, dilation, True, True)


def test_forward_on_meta_tensors_with_no_kernels_names_the_problem():
    with pytest.raises(ValueError, match="empty"):
        torch.ops.ddet_ops.multi_dynconv(torch.zeros(1, 1, 8, 8, device="meta"), [], [3], 1, 1)


@pytest.mark.parametrize(
    "grad_y,fragment",
    [
        (torch.zeros(1, 1, 8, 7), "grad_y has shape"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.float64), "grad_y has dtype"),
    ],
)
def test_backward_names_what_is_wrong_with_grad_y(grad_y, fragment):
    with pytest.raises(RuntimeError, match=fragment):
        torch.ops.ddet_ops.multi_dynconv_backward(
            grad_y, torch.zeros(1, 1, 8, 8), [torch.zeros(1, 9, 8, 8)], [3], 1, 1, True, True
        )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2),
    channels_per_group=st.integers(1, 3),
    groups=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    sizes=st.lists(st.sampled_from([1, 3, 5, 7]), min_size=1, max_size=3, unique=True),
    dilation=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(n, channels_per_group, groups, h, w, sizes, dilation, seed):
    x, kernels = make_inputs(n, channels_per_group * groups, h, w, sizes, groups, seed=seed)
    grad_y = torch.randn_like(x)
    got = grads(multi_dynconv, x, kernels, grad_y, groups=groups, dilation=dilation)
    want = grads(reference.multi_dynconv, x, kernels, grad_y, groups=groups, dilation=dilation)
    for a, b in zip(itertools.chain(got[:2], got[2]), itertools.chain(want[:2], want[2]), strict=True):
        torch.testing.assert_close(a, b)


def test_public_api():
    assert set(ddet_ops.__all__) >= {"multi_dynconv", "dynconv", "MultiDynConv", "reference"}
    assert isinstance(ddet_ops.cuda_compiled(), bool)


def test_large_outputs_reuse_freed_blocks_and_stay_correct():
    # Kernel gradients of 2.4, 6.5 and 12.8 MB: the larger two come from the block cache, and the
    # second call writes into blocks still holding the first call's values.
    ddet_ops.empty_cpu_cache()
    for seed in (0, 1):
        x, kernels = make_inputs(1, 1, 256, 256, (3, 5, 7), 1, seed=seed, dtype=torch.float32)
        grad_y = torch.randn_like(x)
        got = grads(multi_dynconv, x, kernels, grad_y)
        want = grads(reference.multi_dynconv, x, kernels, grad_y)
        for a, b in zip(itertools.chain(got[:2], got[2]), itertools.chain(want[:2], want[2]), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        del got, x, kernels, grad_y, a, b
        assert ddet_ops.cpu_cache_bytes() >= (6 + 12) * 2**20
    ddet_ops.empty_cpu_cache()
    assert ddet_ops.cpu_cache_bytes() == 0


def test_cpu_cache_counts_its_peak_in_use():
    # The profiler does not see cached blocks, so the cache keeps the peak that benchmarks add.
    x, kernels = make_inputs(1, 1, 256, 256, (7,), 1, seed=0, dtype=torch.float32)
    ddet_ops.reset_cpu_cache_peak()
    base = ddet_ops.cpu_cache_peak_bytes()
    y = multi_dynconv(x, kernels)  # 256 KB: below the cache's minimum, from torch's allocator
    assert ddet_ops.cpu_cache_peak_bytes() == base
    grad_kernel = torch.ops.ddet_ops.multi_dynconv_backward(y, x, kernels, [7], 1, 1, False, True)[1][0]
    assert ddet_ops.cpu_cache_peak_bytes() - base == 14 * 2**20  # 12.8 MB in whole 2 MiB pages
    del grad_kernel
    assert ddet_ops.cpu_cache_peak_bytes() - base == 14 * 2**20
    ddet_ops.reset_cpu_cache_peak()
    assert ddet_ops.cpu_cache_peak_bytes() == base


def _cache_probe(env_value):
    code = (
        "import torch, ddet_ops\n"
        "k = torch.randn(1, 49, 256, 256)\n"
        "y = ddet_ops.multi_dynconv(torch.randn(1, 1, 256, 256), [k])\n"
        "g = torch.ops.ddet_ops.multi_dynconv_backward(y, y, [k], [7], 1, 1, False, True)\n"
        "del g\n"
        "print(ddet_ops.cpu_cache_bytes())\n"
    )
    env = dict(os.environ, DDET_OPS_CPU_CACHE_MB=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_cpu_cache_size_comes_from_the_environment():
    assert _cache_probe("0").stdout.split() == ["0"]
    assert int(_cache_probe("64").stdout) >= 12 * 2**20
    bad = _cache_probe("lots")
    assert bad.returncode != 0 and "DDET_OPS_CPU_CACHE_MB" in bad.stderr


@pytest.mark.parametrize("value", [str(2**44), "99999999999999999999"])
def test_cpu_cache_sizes_past_the_address_space_are_refused(value):
    # 2^44 MB is 2^64 bytes, which wrapped to a cache of 0 (off); the other saturated strtoll.
    bad = _cache_probe(value)
    assert bad.returncode != 0 and "DDET_OPS_CPU_CACHE_MB" in bad.stderr


SPECIAL_VALUES = [float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 65504.0, 1e-7, -1e-7, 6e-5, 1.0]


@pytest.mark.parametrize("flush_denormal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_convert_exactly_in_the_vector_paths(dtype, flush_denormal, one_thread):
    # Rows wide enough for the vector strips. With 1x1 kernels of ones the forward pass is the
    # identity (exercises widening); the kernel gradient is the product grad_y * x, exact in float,
    # so its only rounding is the float -> half conversion (narrowing), which must match torch's.
    # Flush-to-zero modes (per thread, so the op runs on this thread only) must not zero float16
    # subnormals while they are widened.
    gen = torch.Generator().manual_seed(0)
    shape = (1, 1, 8, 1024)
    x = (torch.randn(shape, generator=gen) * torch.exp2(torch.randint(-30, 20, shape, generator=gen).float())).to(dtype)
    grad_y = (torch.randn(shape, generator=gen) * torch.exp2(torch.randint(-20, 10, shape, generator=gen).float())).to(
        dtype
    )
    x[0, 0, 0, : len(SPECIAL_VALUES)] = torch.tensor(SPECIAL_VALUES).to(dtype)
    grad_y[0, 0, 0, : len(SPECIAL_VALUES)] = 1
    ones = torch.ones(shape, dtype=dtype)
    want = (grad_y.float() * x.float()).to(dtype)
    if flush_denormal and not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    try:
        y = multi_dynconv(x, [ones], sizes=(1,))
        _, (grad_kernel,) = torch.ops.ddet_ops.multi_dynconv_backward(grad_y, x, [ones], [1], 1, 1, False, True)
    finally:
        torch.set_flush_denormal(False)
    torch.testing.assert_close(y, x, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad_kernel, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dilation_beyond_the_image_leaves_only_the_centre_tap(dtype):
    x, kernels = make_inputs(1, 2, 40, 40, (3, 5), 1, dtype=dtype)
    grad_y = torch.randn_like(x)
    got = grads(multi_dynconv, x, kernels, grad_y, dilation=2**62)
    want = grads(reference.multi_dynconv, x.double(), [k.double() for k in kernels], grad_y.double(), dilation=40)
    tol = {} if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    for a, b in zip(itertools.chain(got[:2], got[2]), itertools.chain(want[:2], want[2]), strict=True):
        torch.testing.assert_close(a.double(), b, **tol)


def _kernel_version_probe(value):
    env = dict(os.environ, DDET_OPS_CUDA_KERNELS=value)
    return subprocess.run(
        [sys.executable, "-c", "import ddet_ops; print(ddet_ops.cuda_kernels())"],
        env=env,
        capture_output=True,
        text=True,
    )


def test_cuda_kernel_version_comes_from_the_environment():
    assert _kernel_version_probe("").stdout.split() == ["v2"]
    assert _kernel_version_probe("v1").stdout.split() == ["v1"]
    bad = _kernel_version_probe("v3")
    assert bad.returncode != 0 and "DDET_OPS_CUDA_KERNELS" in bad.stderr


@pytest.mark.parametrize("case", DOUBLE_BACKWARD_CASES, ids=double_backward_id)
def test_gradgradcheck(case):
    gradgradcheck_case(case, "cpu")


@pytest.mark.parametrize("constant", ["x", "kernels"])
def test_gradgradcheck_with_one_input_constant(constant):
    gradgradcheck_case(DOUBLE_BACKWARD_CASES[1], "cpu", constant=(constant,))


def derivatives_along(fn, x, kernels, direction, orders=3, **kw):
    """Gradients of order 1 to ``orders`` of sum(y^3) in (x, kernels), each next one taken of the
    previous one's inner product with ``direction`` (Hessian- and third-order-vector products)."""
    leaves = [t.detach().requires_grad_(True) for t in [x, *kernels]]
    scalar = (fn(leaves[0], leaves[1:], **kw) ** 3).sum()
    found = []
    for _ in range(orders):
        grads_here = torch.autograd.grad(scalar, leaves, create_graph=True)
        found.append(grads_here)
        scalar = sum((g * d).sum() for g, d in zip(grads_here, direction, strict=True))
    return found


@pytest.mark.parametrize("case", [(2, 4, 7, 6, (3, 5, 7), 2, 2), (1, 3, 5, 9, (1, 5), 1, 1)])
def test_higher_order_derivatives_match_the_unfold_reference(case):
    """Second and third order against plain-PyTorch autograd: second-order gradients used to come
    back as silent zeros, so none may be zero where the reference's are not."""
    n, c, h, w, sizes, groups, dilation = case
    x, kernels = make_inputs(n, c, h, w, sizes, groups)
    direction = [torch.randn_like(t) for t in [x, *kernels]]
    kw = dict(groups=groups, dilation=dilation)
    got = derivatives_along(multi_dynconv, x, kernels, direction, **kw)
    want = derivatives_along(reference.multi_dynconv, x, kernels, direction, **kw)
    for order, (got_grads, want_grads) in enumerate(zip(got, want, strict=True), start=1):
        for a, b in zip(got_grads, want_grads, strict=True):
            assert b.abs().max() > 0, order
            torch.testing.assert_close(a, b, msg=f"order {order}")


def test_gradient_penalty_through_some_kernel_gradients():
    """Only one kernel tensor's gradient enters the penalty, and x needs no gradient: the other
    kernel cotangents are absent and the backward computed no grad_x."""
    x, kernels = make_inputs(2, 2, 6, 5, (3, 5), 1)

    def penalty_grads(fn):
        leaves = [k.detach().requires_grad_(True) for k in kernels]
        grad_kernels = torch.autograd.grad((fn(x, leaves) ** 2).sum(), leaves, create_graph=True)
        return torch.autograd.grad((grad_kernels[1] ** 2).sum(), leaves)

    for got, want in zip(penalty_grads(multi_dynconv), penalty_grads(reference.multi_dynconv), strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want)


def test_opcheck_of_the_backward_op_with_gradients():
    x, kernels = make_inputs(1, 4, 5, 6, (3, 5), 2, dtype=torch.float32, requires_grad=True)
    grad_y = torch.randn_like(x).requires_grad_(True)
    for need in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(
            torch.ops.ddet_ops.multi_dynconv_backward.default, (grad_y, x, kernels, [3, 5], 2, 2, *need)
        )


def test_torch_compile_fullgraph_gradient_penalty():
    x, kernels = make_inputs(1, 2, 6, 7, (3, 5), 1)
    packed = torch.cat(kernels, dim=1)

    def penalty(fn, x, packed):
        y = fn(x, packed, (3, 5))
        grad_x, grad_packed = torch.autograd.grad((y**2).sum(), (x, packed), create_graph=True)
        return (grad_x**2).sum() + (grad_packed**2).sum()

    leaves = (x.requires_grad_(True), packed.requires_grad_(True))
    # Dynamo traces autograd.grad only when asked to.
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(
            lambda x, packed: penalty(multi_dynconv, x, packed), fullgraph=True, backend="aot_eager"
        )
        got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(penalty(reference.multi_dynconv, *leaves), leaves)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel_dtype", FLOATING_DTYPES, ids=str)
@pytest.mark.parametrize("x_dtype", FLOATING_DTYPES, ids=str)
def test_every_pair_of_dtypes_against_float64(x_dtype, kernel_dtype):
    mixed_dtype_case(x_dtype, kernel_dtype, "cpu")


NATIVE_MIXED_PAIRS = [
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
]


@pytest.mark.parametrize("x_dtype,kernel_dtype", NATIVE_MIXED_PAIRS, ids=str)
def test_mixed_pairs_are_read_as_they_are(x_dtype, kernel_dtype):
    """The op itself takes the pair (no cast in Python): its result equals float64 arithmetic on the
    same values rounded once to x's dtype, which a cast of the kernels to x's dtype would not give."""
    x, kernels = make_inputs(1, 3, 9, 37, (3, 5, 7), 1)
    packed = torch.cat(kernels, dim=1)
    x_in, k_in = x.to(x_dtype), packed.to(kernel_dtype)
    y = torch.ops.ddet_ops.multi_dynconv(x_in, [k_in], [3, 5, 7], 1, 1)
    want = reference.multi_dynconv(x_in.double(), k_in.double(), (3, 5, 7))
    assert y.dtype == x_dtype
    assert _relative_error(y, want) < STRIP_TOLERANCE[x_dtype]
    grad_y = torch.randn_like(x).to(x_dtype)
    gx, (gk,) = torch.ops.ddet_ops.multi_dynconv_backward(grad_y, x_in, [k_in], [3, 5, 7], 1, 1, True, True)
    assert (gx.dtype, gk.dtype) == (x_dtype, kernel_dtype)
    _, gx_ref, (gk_ref,) = grads(
        reference.multi_dynconv, x_in.double(), k_in.double(), grad_y.double(), sizes=(3, 5, 7)
    )
    assert _relative_error(gx, gx_ref) < STRIP_TOLERANCE[x_dtype]
    assert _relative_error(gk, gk_ref) < STRIP_TOLERANCE[kernel_dtype]


@pytest.mark.parametrize("x_dtype,kernel_dtype", NATIVE_MIXED_PAIRS, ids=str)
def test_cuda_per_thread_code_reads_mixed_pairs(x_dtype, kernel_dtype):
    """The v2 strips (every path) and the v1 pixels, serially on the CPU, with mixed dtypes."""
    seen = set()
    for case in STRIP_CASES:
        seen |= _strip_case(case, x_dtype, kernel_dtype)
    assert _strip_paths(softmax=False) - seen == set(), "paths the harness never ran"
    for index, case in enumerate(STRIP_CASES):
        seen |= _softmax_strip_case(case, ["softmax", "softmax_per_size"][index % 2], x_dtype, kernel_dtype)
    assert _strip_paths(softmax=True) - seen == set(), "softmax paths the harness never ran"
    x, kernels = make_inputs(2, 5, 6, 9, (3, 5), 1)
    x_in, k_in = x.to(x_dtype), [k.to(kernel_dtype) for k in kernels]
    want = reference.multi_dynconv(x_in.double(), [k.double() for k in k_in])
    y = torch.ops.ddet_ops_testing.pixelwise_v1_forward(x_in, k_in, [3, 5], 1, 1)
    assert y.dtype == x_dtype and _relative_error(y, want) < STRIP_TOLERANCE[x_dtype]
    _, gk = torch.ops.ddet_ops_testing.pixelwise_v1_backward(
        torch.ones_like(x_in), x_in, k_in, [3, 5], 1, 1, True, True
    )
    assert all(g.dtype == kernel_dtype for g in gk)


def test_opcheck_and_compile_with_mixed_dtypes():
    x, kernels = make_inputs(2, 4, 6, 5, (3, 5), 2, dtype=torch.float32)
    packed = torch.cat(kernels, dim=1).bfloat16()
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.ddet_ops.multi_dynconv.default, (x, [packed.requires_grad_(True)], [3, 5], 2, 1))
    torch.library.opcheck(
        torch.ops.ddet_ops.multi_dynconv_backward.default,
        (torch.randn_like(x), x.detach(), [packed.detach()], [3, 5], 2, 1, True, True),
    )

    def loss(x, packed):
        return (multi_dynconv(x, packed, (3, 5), groups=2) * x).sum()

    assert_compiled_gradients_match(loss, x.detach(), packed.detach(), backend="aot_eager")


def test_the_raw_op_refuses_pairs_it_does_not_read():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16)
    half = torch.zeros(1, 9, 4, 4, dtype=torch.float16)
    for op in (torch.ops.ddet_ops.multi_dynconv, torch.ops.ddet_ops.multi_dynconv.default):
        with pytest.raises(
            (ValueError, RuntimeError), match="does not read kernels of dtype|which the op does not read"
        ):
            op(x, [half], [3], 1, 1)
    with pytest.raises(ValueError, match="ddet_ops.multi_dynconv casts other pairs"):
        torch.ops.ddet_ops.multi_dynconv(x.to("meta"), [half.to("meta")], [3], 1, 1)
    assert multi_dynconv(x, [half]).dtype == torch.bfloat16  # the public function casts the kernels


def test_autocast_keeps_both_dtypes():
    """Under CPU autocast a conv head predicts bfloat16 kernels; the op reads them with the float32
    image as they are (no cast up, no cast down) and returns float32."""
    x = torch.randn(1, 3, 10, 12)
    head = torch.nn.Conv2d(3, 83, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernels = head(x)
        y = multi_dynconv(x, kernels, (3, 5, 7))
    assert kernels.dtype == torch.bfloat16 and y.dtype == torch.float32
    torch.testing.assert_close(y, torch.ops.ddet_ops.multi_dynconv(x, [kernels], [3, 5, 7], 1, 1), rtol=0, atol=0)
    y.sum().backward()
    assert head.weight.grad.dtype == torch.float32
