"""``nn.Module`` face of the operator, for building it into networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import KernelsArg, check_groups_and_dilation, check_normalize, check_sizes
from .ops import multi_dynconv


class MultiDynConv(nn.Module):
    """Applies per-pixel kernels of several sizes to an image and sums the results.

    ``forward(x, kernels)`` takes x (N, C, H, W) and the packed kernels
    (N, groups*sum(s^2), H, W) — e.g. the output of a kernel-predicting head — or a list of
    one tensor per size; ``normalize`` as in :func:`multi_dynconv` (a softmax over the taps).
    The module has no parameters.
    """

    def __init__(
        self, sizes: Sequence[int] = (3, 5, 7), *, groups: int = 1, dilation: int = 1, normalize: str | None = None
    ):
        super().__init__()
        check_groups_and_dilation(groups, dilation)  # now, not at the first call: heads are sized from this module
        check_normalize(normalize)
        self.sizes = check_sizes(sizes)
        self.groups = groups
        self.dilation = dilation
        self.normalize = normalize

    @property
    def kernel_channels(self) -> int:
        """Channels a kernel-predicting head must produce for this module."""
        return self.groups * sum(s * s for s in self.sizes)

    def forward(self, x: torch.Tensor, kernels: KernelsArg) -> torch.Tensor:
        return multi_dynconv(
            x, kernels, self.sizes, groups=self.groups, dilation=self.dilation, normalize=self.normalize
        )

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, groups={self.groups}, dilation={self.dilation}, normalize={self.normalize!r}"
