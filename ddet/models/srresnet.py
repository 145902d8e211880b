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
from .layers import GlobalResidualNet, NetConfig, ResidualBlock, ResidualGroup

__all__ = ["SRResNetConfig", "SRResNet"]


@dataclass(frozen=True)
class SRResNetConfig(NetConfig):
    """The common fields at SRResNet's defaults: 64 channels, 16 blocks."""


class SRResNet(GlobalResidualNet):
    def make_head(self, config: SRResNetConfig) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(config.in_channels, config.width, 9, padding=4), nn.PReLU())

    def make_body(self, config: SRResNetConfig) -> ResidualGroup:
        blocks = (ResidualBlock(config.width, activation=nn.PReLU) for _ in range(config.blocks))
        return ResidualGroup(blocks, config.width)

    def make_tail(self, config: SRResNetConfig) -> nn.Conv2d:
        return nn.Conv2d(config.width, config.in_channels, 9, padding=4)


MODELS = {
    "srresnet": Entry(SRResNet, SRResNetConfig(), "SRResNet (Ledig et al. 2017), 16 blocks, no BN; Table III: 4.9 MB"),
}
