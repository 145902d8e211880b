"""SRResNet (Ledig et al., CVPR 2017) without batch norm, at equal input and output size.

Layout: conv 9×9 C→64, PReLU; 16 × [conv–PReLU–conv + skip]; conv 3×3 under a long skip; conv 9×9
64→C; plus the input (no upsampler, see :class:`~ddet.models.layers.GlobalResidualNet`).

Size: 1.23 M parameters = 4.92 MB at C = 1 (Table III: 4.9 MB). The ×4 upsampler (two conv 64→256
+ pixel-shuffle ×2 stages) would add 0.30 M parameters and 1.2 MB, which is why Table III's figure
is read as the same-size network.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._registry import Entry
from .layers import GlobalResidualNet, ResidualBlock, ResidualGroup, check_ints

__all__ = ["SRResNetConfig", "SRResNet"]


@dataclass(frozen=True)
class SRResNetConfig:
    in_channels: int = 1
    width: int = 64
    blocks: int = 16

    def __post_init__(self):
        check_ints(self, ("in_channels", "width"), minimum=1)
        check_ints(self, ("blocks",), minimum=0)


class SRResNet(GlobalResidualNet):
    def __init__(self, config: SRResNetConfig):
        width = config.width
        super().__init__(
            config.in_channels,
            head=nn.Sequential(nn.Conv2d(config.in_channels, width, 9, padding=4), nn.PReLU()),
            body=ResidualGroup((ResidualBlock(width, activation=nn.PReLU) for _ in range(config.blocks)), width),
            tail=nn.Conv2d(width, config.in_channels, 9, padding=4),
        )
        self.config = config


MODELS = {
    "srresnet": Entry(SRResNet, SRResNetConfig(), "SRResNet (Ledig et al. 2017), 16 blocks, no BN; Table III: 4.9 MB"),
}
