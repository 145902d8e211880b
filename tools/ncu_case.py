"""The launches ncu profiles in tools/gpu_check.sh: on the headline case, float32 and bfloat16,
one forward, one grad_x-only and one kernel-gradient-only backward of the raw ops."""

import torch

import ddet_ops

for dtype in (torch.float32, torch.bfloat16):
    x = torch.randn(1, 3, 1024, 1024, device="cuda").to(dtype)
    kernels = (torch.randn(1, 83, 1024, 1024, device="cuda") / 10).to(dtype)
    args = ([kernels], [3, 5, 7], 1, 1)
    y = torch.ops.ddet_ops.multi_dynconv(x, *args)
    torch.ops.ddet_ops.multi_dynconv_backward(y, x, *args, True, False)
    torch.ops.ddet_ops.multi_dynconv_backward(y, x, *args, False, True)
torch.cuda.synchronize()
print(f"ncu case finished ({ddet_ops.cuda_kernels()} kernels)")
