"""RCAN (Zhang et al., ECCV 2018) at equal input and output size.

Layout: conv 3×3 C→64; 10 residual groups, each 20 RCAB (conv–ReLU–conv–channel attention with
reduction 16, + skip) and a conv under a skip; conv 3×3 under a long skip; conv 3×3 64→C; plus the
input (no upsampler, see :class:`~ddet.models.layers.GlobalResidualNet`). The parameterless RGB
mean shift of the original is left out.

Size, published configuration: 15.29 M parameters = 61.18 MB at C = 1 (61.2 MB at C = 3; 62.4 MB
with the ×4 upsampler), 11.6% more than Table III's 54.8 MB. No RCAN configuration of the
published code gives that figure, so the published one is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import Entry
from .layers import GlobalResidualNet, NetConfig, ResidualBlock, ResidualGroup, check_ints

__all__ = ["RCANConfig", "RCAN", "channel_attention_group"]


def channel_attention_group(channels: int, blocks: int, reduction: int) -> ResidualGroup:
    """RCAN's residual group: ``blocks`` RCABs and a conv under a skip (also EDRN's group)."""
    return ResidualGroup((ResidualBlock(channels, reduction=reduction) for _ in range(blocks)), channels)


@dataclass(frozen=True)
class RCANConfig(NetConfig):
    """``groups`` residual groups of ``blocks`` RCABs each, channel attention reducing ``width``
    by ``reduction`` (also EDRN's fields)."""

    blocks: int = 20
    groups: int = 10
    reduction: int = 16

    def __post_init__(self):
        super().__post_init__()
        check_ints(self, ("reduction",), minimum=1)
        check_ints(self, ("groups",), minimum=0)
        if self.width // self.reduction < 1:
            raise ValueError(f"{type(self).__name__}.reduction ({self.reduction}) must not exceed width ({self.width})")


class RCAN(GlobalResidualNet):
    def make_body(self, config: RCANConfig) -> ResidualGroup:
        width = config.width
        groups = (channel_attention_group(width, config.blocks, config.reduction) for _ in range(config.groups))
        return ResidualGroup(groups, width)


MODELS = {
    "rcan": Entry(RCAN, RCANConfig(), "RCAN (Zhang et al. 2018), 10 groups x 20 RCAB, 64 channels; Table III: 54.8 MB"),
}
