"""ddet_ops on CUDA: every dtype against the float64 reference, agreement with the CPU kernels,
gradcheck and gradgradcheck, opcheck, torch.compile, determinism and 64-bit indexing. Run by
tools/gpu_check.sh on a machine with a GPU; skipped elsewhere (the CPU harness in test_ops.py
covers the indexing)."""

import pytest
import torch
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

from ddet_ops import multi_dynconv, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# Relative tolerance (max abs error / max abs value) against float64 for each dtype.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}

CASES = [
    # (N, C, H, W, sizes, groups, dilation)
    (2, 3, 37, 45, (3, 5, 7), 1, 1),
    (1, 8, 20, 33, (3, 5), 8, 2),
    (3, 6, 9, 7, (1, 9, 11), 3, 1),
    (1, 1, 1, 1, (3, 5, 7), 1, 1),
    (2, 5, 64, 70, (7,), 1, 3),
    (1, 64, 16, 16, (3, 5, 7), 1, 1),
    # The channel tiles: two bands, tiles past the last row and column, a chunk tail.
    (2, 12, 19, 140, (1, 3, 5, 7), 1, 1),
]


def inputs(case, dtype, device="cuda", seed=0):
    n, c, h, w, sizes, groups, _ = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    kernels = [torch.randn(n, groups * s * s, h, w, generator=gen, dtype=torch.float64) for s in sizes]
    grad_y = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    return x.to(device, dtype), [k.to(device, dtype) for k in kernels], grad_y.to(device, dtype)


def forward_backward(x, kernels, grad_y, groups, dilation):
    x = x.detach().requires_grad_(True)
    kernels = [k.detach().requires_grad_(True) for k in kernels]
    y = multi_dynconv(x, kernels, groups=groups, dilation=dilation)
    y.backward(grad_y)
    return [y.detach(), x.grad] + [k.grad for k in kernels]


def relative_error(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-g{c[5]}-d{c[6]}")
def test_every_dtype_against_float64_reference(case, dtype):
    groups, dilation = case[5], case[6]
    x, kernels, grad_y = inputs(case, dtype)
    got = forward_backward(x, kernels, grad_y, groups, dilation)
    # The reference sees the same rounded inputs, in float64 on the CPU.
    x64, k64, g64 = x.cpu().double(), [k.cpu().double() for k in kernels], grad_y.cpu().double()
    ref_x = x64.requires_grad_(True)
    ref_k = [k.requires_grad_(True) for k in k64]
    y_ref = reference.multi_dynconv(ref_x, ref_k, groups=groups, dilation=dilation)
    y_ref.backward(g64)
    want = [y_ref.detach(), ref_x.grad] + [k.grad for k in ref_k]
    for name, a, b in zip(["y", "grad_x"] + [f"grad_k{i}" for i in range(len(kernels))], got, want, strict=True):
        assert a.dtype == dtype and a.is_cuda
        assert relative_error(a.cpu(), b) < TOLERANCE[dtype], name


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: "x".join(map(str, c[:4])))
def test_cuda_agrees_with_cpu_kernels(case):
    groups, dilation = case[5], case[6]
    x, kernels, grad_y = inputs(case, torch.float32)
    gpu = forward_backward(x, kernels, grad_y, groups, dilation)
    cpu = forward_backward(x.cpu(), [k.cpu() for k in kernels], grad_y.cpu(), groups, dilation)
    for a, b in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    x, kernels, _ = inputs((1, 2, 6, 7, (1, 3), 2, 2), torch.float64)
    x.requires_grad_(True)
    for k in kernels:
        k.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, a, b: multi_dynconv(x, [a, b], groups=2, dilation=2), (x, *kernels))


@pytest.mark.parametrize("case", DOUBLE_BACKWARD_CASES, ids=double_backward_id)
def test_gradgradcheck_float64(case):
    gradgradcheck_case(case, "cuda")


def test_opcheck():
    x, kernels, grad_y = inputs((2, 4, 9, 10, (3, 5), 2, 1), torch.float32)
    x.requires_grad_(True)
    packed = torch.cat(kernels, 1).requires_grad_(True)
    torch.library.opcheck(torch.ops.ddet_ops.multi_dynconv.default, (x, [packed], [3, 5], 2, 1))
    torch.library.opcheck(
        torch.ops.ddet_ops.multi_dynconv.default, (x, [k.requires_grad_(True) for k in kernels], [3, 5], 2, 2)
    )
    torch.library.opcheck(
        torch.ops.ddet_ops.multi_dynconv_backward.default,
        (grad_y, x.detach(), [packed.detach()], [3, 5], 2, 1, True, True),
    )


def test_torch_compile_fullgraph_inductor():
    x, kernels, grad_y = inputs((2, 3, 32, 40, (3, 5, 7), 1, 1), torch.float32)
    packed = torch.cat(kernels, 1)

    def loss(x, packed):
        return (multi_dynconv(x, packed, (3, 5, 7)).relu() * grad_y).sum()

    assert_compiled_gradients_match(loss, x, packed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_is_bitwise_deterministic(dtype):
    x, kernels, grad_y = inputs((2, 16, 96, 80, (3, 5, 7), 4, 1), dtype)
    first = forward_backward(x, kernels, grad_y, 4, 1)
    for _ in range(3):
        again = forward_backward(x, kernels, grad_y, 4, 1)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_channels_last_and_non_contiguous():
    x, kernels, grad_y = inputs((2, 4, 21, 19, (3, 5), 1, 1), torch.float32)
    packed = torch.cat(kernels, 1)
    want = multi_dynconv(x, packed, (3, 5))
    torch.testing.assert_close(
        multi_dynconv(x.to(memory_format=torch.channels_last), packed.to(memory_format=torch.channels_last), (3, 5)),
        want,
    )
    torch.testing.assert_close(multi_dynconv(x.transpose(2, 3).contiguous().transpose(2, 3), packed, (3, 5)), want)


@pytest.mark.parametrize("layout", KERNEL_LAYOUTS)
def test_kernels_with_other_batch_strides(layout):
    """The vector loads of image n > 0 stay aligned (68 columns: strips and channel tiles both)."""
    for channels in (3, 12):
        x, kernels, _ = inputs((3, channels, 10, 68, (3, 5), 1, 1), torch.float32)
        assert_batch_strided_kernels_give_the_bits_of_contiguous_ones(x, kernels, layout)


def test_runs_on_the_tensors_device_not_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x, kernels, _ = inputs((1, 2, 8, 8, (3,), 1, 1), torch.float32, device="cuda:1")
    with torch.cuda.device(0):
        y = multi_dynconv(x, kernels)
    assert y.device == x.device
    torch.testing.assert_close(y.cpu(), multi_dynconv(x.cpu(), [k.cpu() for k in kernels]))


def test_more_than_2_to_the_31_kernel_elements():
    """N*sum(s^2)*H*W > 2^31: 64-bit indexing. Checked against the reference on the corner crop,
    where the image's own bottom/right edge is inside the crop."""
    n, h, w = 1, 5100, 5100
    taps = 83
    assert n * taps * h * w > 2**31
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, 1, h, w, device="cuda", generator=gen)
    packed = torch.randn(n, taps, h, w, device="cuda", generator=gen)
    grad_y = torch.randn(n, 1, h, w, device="cuda", generator=gen)
    x.requires_grad_(True)
    packed.requires_grad_(True)
    y = multi_dynconv(x, packed, (3, 5, 7))
    y.backward(grad_y)
    crop = 40
    xc = x.detach()[..., -crop:, -crop:].cpu().double().requires_grad_(True)
    kc = packed.detach()[..., -crop:, -crop:].cpu().double().requires_grad_(True)
    yc = reference.multi_dynconv(xc, kc, (3, 5, 7))
    # Output pixels at least 3 (the largest reach) inside the crop's top/left cut see the same inputs.
    torch.testing.assert_close(
        y.detach()[..., -crop + 3 :, -crop + 3 :].cpu().double(), yc[..., 3:, 3:], rtol=1e-4, atol=1e-4
    )
    # Kernel gradients there need grad_y at the pixel and x within reach: also inside the crop.
    yc.backward(grad_y[..., -crop:, -crop:].cpu().double())
    torch.testing.assert_close(
        packed.grad[..., -crop + 3 :, -crop + 3 :].cpu().double(), kc.grad[..., 3:, 3:], rtol=1e-4, atol=1e-4
    )
    # grad_x at a pixel gathers from neighbours within reach, whose grad_y lies within the crop.
    torch.testing.assert_close(
        x.grad[..., -crop + 6 :, -crop + 6 :].cpu().double(), xc.grad[..., 6:, 6:], rtol=1e-4, atol=1e-4
    )


def test_kernel_versions_agree(tmp_path):
    """v1 (DDET_OPS_CUDA_KERNELS=v1, in a subprocess: the variable is read once) against this
    process's kernels, every dtype, on cases that take the specialised and generic paths."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, torch, ddet_ops\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_ops_cuda import CASES, inputs, forward_backward, TOLERANCE\n"
        "out = {}\n"
        "for dtype in TOLERANCE:\n"
        "    for i, case in enumerate(CASES):\n"
        "        x, kernels, grad_y = inputs(case, dtype)\n"
        "        out[(str(dtype), i)] = [t.cpu() for t in forward_backward(x, kernels, grad_y, case[5], case[6])]\n"
        "torch.save(out, sys.argv[1])\n"
        "print(ddet_ops.cuda_kernels())\n"
    )
    path = tmp_path / "v1.pt"
    env = dict(os.environ, DDET_OPS_CUDA_KERNELS="v1")
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), os.path.dirname(__file__)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.split() == ["v1"], done.stderr
    v1 = torch.load(path)
    for dtype, tolerance in TOLERANCE.items():
        for i, case in enumerate(CASES):
            x, kernels, grad_y = inputs(case, dtype)
            ours = forward_backward(x, kernels, grad_y, case[5], case[6])
            for a, b in zip(ours, v1[(str(dtype), i)], strict=True):
                assert relative_error(a.cpu(), b) < 2 * tolerance


@pytest.mark.parametrize("kernel_dtype", FLOATING_DTYPES, ids=str)
@pytest.mark.parametrize("x_dtype", FLOATING_DTYPES, ids=str)
def test_every_pair_of_dtypes_against_float64(x_dtype, kernel_dtype):
    mixed_dtype_case(x_dtype, kernel_dtype, "cuda")


def softmax_forward_backward(x, kernels, grad_y, case, normalize):
    x = x.detach().requires_grad_(True)
    kernels = [k.detach().requires_grad_(True) for k in kernels]
    y = multi_dynconv(x, kernels, groups=case[5], dilation=case[6], normalize=normalize)
    y.backward(grad_y)
    return [y.detach(), x.grad] + [k.grad for k in kernels]


@pytest.mark.parametrize("normalize", ["softmax", "softmax_per_size"])
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_fused_softmax_every_dtype_against_float64(dtype, normalize):
    """The fused CUDA softmax, forward and both gradients, on every case against torch.softmax and
    the float64 reference on the same rounded inputs."""
    for case in CASES:
        x, kernels, grad_y = inputs(case, dtype)
        kernels = [3 * k for k in kernels]
        got = softmax_forward_backward(x, kernels, grad_y, case, normalize)
        cpu = [t.cpu().double() for t in (x, *kernels, grad_y)]
        want = reference_grads(cpu[0], cpu[1:-1], cpu[-1], case, normalize)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == dtype and relative_error(a.cpu(), b) < TOLERANCE[dtype], case


def reference_grads(x, kernels, grad_y, case, normalize):
    x = x.requires_grad_(True)
    kernels = [k.requires_grad_(True) for k in kernels]
    y = reference.multi_dynconv(x, kernels, groups=case[5], dilation=case[6], normalize=normalize)
    y.backward(grad_y)
    return [y.detach(), x.grad] + [k.grad for k in kernels]


@pytest.mark.parametrize("per_size", [False, True], ids=["softmax", "per_size"])
def test_softmax_ops_agree_with_the_cpu_and_pass_opcheck(per_size):
    """The raw softmax ops: y and lse as the CPU kernels give them, float32 x with bfloat16 kernels
    too, and opcheck (schema, fake kernel, autograd registration) on CUDA tensors."""
    for kernel_dtype in (torch.float32, torch.bfloat16):
        x, kernels, grad_y = inputs(CASES[0], torch.float32)
        kernels = [k.to(kernel_dtype) for k in kernels]
        args = (x, kernels, [3, 5, 7], 1, 1, per_size)
        y, lse = torch.ops.ddet_ops.multi_dynconv_softmax(*args)
        y_cpu, lse_cpu = torch.ops.ddet_ops.multi_dynconv_softmax(x.cpu(), [k.cpu() for k in kernels], *args[2:])
        assert relative_error(y.cpu(), y_cpu) < 1e-5 and relative_error(lse.cpu(), lse_cpu) < 1e-6
        grads = torch.ops.ddet_ops.multi_dynconv_softmax_backward(
            grad_y, x, kernels, lse, [3, 5, 7], 1, 1, per_size, True, True
        )
        grads_cpu = torch.ops.ddet_ops.multi_dynconv_softmax_backward(
            grad_y.cpu(), x.cpu(), [k.cpu() for k in kernels], lse_cpu, [3, 5, 7], 1, 1, per_size, True, True
        )
        assert relative_error(grads[0].cpu(), grads_cpu[0]) < 1e-5
        tolerance = 1e-5 if kernel_dtype == torch.float32 else 1e-2
        for a, b in zip(grads[1], grads_cpu[1], strict=True):
            assert a.dtype == kernel_dtype and relative_error(a.cpu(), b) < tolerance
    torch.library.opcheck(torch.ops.ddet_ops.multi_dynconv_softmax.default, args)
    torch.library.opcheck(
        torch.ops.ddet_ops.multi_dynconv_softmax_backward.default,
        (grad_y, x, kernels, lse, [3, 5, 7], 1, 1, per_size, True, True),
    )
