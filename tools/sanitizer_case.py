"""A small forward + backward of every dtype on CUDA, for compute-sanitizer (tools/gpu_check_full.sh)."""

import torch

from ddet_ops import multi_dynconv

for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for n, c, h, w, groups, dilation in [(2, 3, 17, 23, 1, 1), (1, 4, 5, 3, 4, 2), (1, 1, 1, 1, 1, 1)]:
        x = torch.randn(n, c, h, w, device="cuda", dtype=dtype, requires_grad=True)
        kernels = [
            torch.randn(n, groups * s * s, h, w, device="cuda", dtype=dtype, requires_grad=True) for s in (3, 5, 7)
        ]
        multi_dynconv(x, kernels, groups=groups, dilation=dilation).sum().backward()
torch.cuda.synchronize()
print("sanitizer case finished")
