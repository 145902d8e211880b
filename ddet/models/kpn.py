"""KPN: the kernel prediction network of RealSR (Cai et al., ICCV 2019), and the trunk G_Sat that
DDet and LP-KPN share with it.

Layout (the released ``KPN(K=*).prototxt`` of csjcai/RealSR)::

    x ─ pixel-unshuffle ×4 ─ conv 3×3 → 64 ─┬─ 16 × [conv–ReLU–conv + skip] ─ conv ─(+)─  trunk
                                            └─────────────── long skip ─────────────┘
      ─ pixel-shuffle ×4 (64 → 4 channels) ─ conv → 64, ReLU ─ conv → 64, ReLU           decoder
      ─ conv → K² (raw per-pixel kernels)                                                 head
    y = dynconv(x, kernels)                                                              (ddet_ops)

Parameter sizes (float32 MB, C = 1) against the paper's Table III: K = 5: 5.13 (5.1), K = 7: 5.18
(5.2), K = 13: 5.46 (5.5), K = 19: 5.90 (5.9).

With ``in_channels=3`` the unshuffled trunk input has 48 channels and each pixel's kernel is shared
by the three colour channels (``groups=1``).

Initialisation: the head's last conv has zero weights and a bias that is 1 at the centre tap, so
a fresh KPN returns its input exactly; see :func:`ddet.models.layers.centre_tap_init`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import ddet_ops

from ._registry import Entry
from .layers import NetConfig, ResidualBlock, ResidualGroup, SameSizeNet, centre_tap_init, check_ints, conv3x3

__all__ = ["Trunk", "feature_decoder", "KernelHeadSpec", "KernelHead", "TrunkConfig", "KPNConfig", "KPN"]

TRUNK_SCALE = 4


class Trunk(nn.Module):
    """G_Sat's encoder: pixel-unshuffle ×4, conv, ``blocks`` residual blocks and a conv under a
    long skip. (N, C, H, W) -> (N, width, H/4, W/4); H and W must divide by 4."""

    def __init__(self, in_channels: int, width: int, blocks: int):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(TRUNK_SCALE)
        self.head = conv3x3(in_channels * TRUNK_SCALE**2, width)
        self.body = ResidualGroup((ResidualBlock(width) for _ in range(blocks)), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.head(self.unshuffle(x)))


def feature_decoder(width: int, scale: int, hidden: int, out_channels: int) -> nn.Sequential:
    """Trunk features -> features at ``scale`` times the trunk's resolution: pixel-shuffle, then
    conv–ReLU–conv–ReLU (3×3)."""
    return nn.Sequential(
        nn.PixelShuffle(scale),
        conv3x3(width // scale**2, hidden),
        nn.ReLU(inplace=True),
        conv3x3(hidden, out_channels),
        nn.ReLU(inplace=True),
    )


@dataclass(frozen=True)
class KernelHeadSpec:
    """One kernel-predicting head: raw per-pixel kernels of ``sizes``, packed size-major.

    ``hidden`` None: one 3×3 conv; otherwise conv → hidden, ReLU, conv (the released DDet's 7×7
    and 5×5 heads).
    """

    sizes: tuple[int, ...]
    hidden: int | None = None

    def __post_init__(self):
        if not self.sizes or any(not isinstance(s, int) or s < 1 or s % 2 == 0 for s in self.sizes):
            raise ValueError(f"kernel head sizes must be odd ints >= 1, got {self.sizes!r}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"kernel head hidden width must be >= 1 or None, got {self.hidden!r}")

    @property
    def channels(self) -> int:
        return sum(s * s for s in self.sizes)

    @property
    def radius(self) -> int:
        """Pixels of features each kernel reads around it: one per 3×3 conv."""
        return 1 if self.hidden is None else 2


class KernelHead(nn.Sequential):
    """Features (N, F, H, W) -> packed kernels (N, sum(s²), H, W); starts as ``centre_weight``
    times the centre tap of each size (see :func:`~ddet.models.layers.centre_tap_init`)."""

    def __init__(self, in_channels: int, spec: KernelHeadSpec, centre_weight: float):
        if spec.hidden is None:
            layers = [conv3x3(in_channels, spec.channels)]
        else:
            layers = [conv3x3(in_channels, spec.hidden), nn.ReLU(inplace=True), conv3x3(spec.hidden, spec.channels)]
        centre_tap_init(layers[-1], spec.sizes, centre_weight)
        super().__init__(*layers)


@dataclass(frozen=True)
class TrunkConfig(NetConfig):
    """The fields of a network on the KPN trunk: ``width``: trunk channels (divisible by 16 for the
    ×4 shuffle; also the decoder's hidden width). ``feature_width``: channels of the
    full-resolution features the kernel heads read."""

    feature_width: int = 64

    def __post_init__(self):
        super().__post_init__()
        check_ints(self, ("feature_width",), minimum=1)
        if self.width % TRUNK_SCALE**2:
            raise ValueError(f"{type(self).__name__}.width must divide by 16 (pixel-shuffle ×4), got {self.width}")


@dataclass(frozen=True)
class KPNConfig(TrunkConfig):
    """The trunk's fields and the kernel ``heads``."""

    heads: tuple[KernelHeadSpec, ...] = (KernelHeadSpec((5,)),)

    def __post_init__(self):
        super().__post_init__()
        if not self.heads or not all(isinstance(h, KernelHeadSpec) for h in self.heads):
            raise ValueError(
                f"{type(self).__name__}.heads must be a non-empty tuple of KernelHeadSpec, got {self.heads!r}"
            )

    @property
    def sizes(self) -> tuple[int, ...]:
        """Kernel sizes of all heads, in the order of the packed kernel channels."""
        return tuple(s for head in self.heads for s in head.sizes)


class KPN(SameSizeNet):
    """Trunk -> decoder -> kernel heads; ``restore`` applies the packed kernels to the image with
    :func:`ddet_ops.multi_dynconv` (one fused pass over every size)."""

    multiple = TRUNK_SCALE

    def __init__(self, config: KPNConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.sizes = config.sizes
        self.trunk = Trunk(config.in_channels, config.width, config.blocks)
        self.decoder = feature_decoder(config.width, TRUNK_SCALE, config.width, config.feature_width)
        centre_weight = 1.0 / len(self.sizes)
        self.heads = nn.ModuleList(KernelHead(config.feature_width, spec, centre_weight) for spec in config.heads)

    @property
    def kernel_radius(self) -> int:
        """Receptive radius of the kernels: the trunk's 3×3 convs (head, two per block, the closing
        conv) at 1/4 resolution, whose 4×4 cells reach 3 pixels further on one side, then the
        decoder's two convs and the deepest head."""
        trunk_convs = 2 + 2 * self.config.blocks
        trunk = TRUNK_SCALE * trunk_convs + TRUNK_SCALE - 1
        return trunk + 2 + max(head.radius for head in self.config.heads)

    @property
    def receptive_radius(self) -> int:
        return max(self.kernel_radius, max(self.sizes) // 2)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """Packed per-pixel kernels (N, sum(s²) over ``self.sizes``, H, W) for an image whose H and
        W divide by 4."""
        features = self.decoder(self.trunk(x))
        kernels = [head(features) for head in self.heads]
        return kernels[0] if len(kernels) == 1 else torch.cat(kernels, dim=1)  # cat copies even one

    def apply_kernels(self, image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Sum over sizes of the per-pixel convolutions of ``image``, in the image's dtype (under
        autocast the heads emit half-precision kernels, which the op reads as they are)."""
        return ddet_ops.multi_dynconv(image, kernels, self.sizes)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_kernels(x, self.kernels(x))


MODELS = {
    f"kpn{k}": Entry(
        KPN,
        KPNConfig(heads=(KernelHeadSpec((k,)),)),
        f"KPN of RealSR (Cai et al. 2019), {k}x{k} per-pixel kernels; Table III: {table_mb} MB",
    )
    for k, table_mb in ((5, 5.1), (7, 5.2), (13, 5.5), (19, 5.9))
}
