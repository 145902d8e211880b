"""EDRN: the encoder–decoder residual network of the NTIRE 2019 Real Image SR entry (Cheng et al.,
CVPRW 2019; code yyknight/NTIRE2019_EDRN, configuration "B": G0 = 64, D = 4, C = 10).

Layout (f1..f3 at full, 1/2 and 1/4 resolution)::

    f1 = conv 3×3 C→64
    f2 = ReLU(BN(conv 3×3 stride 2, 64→128))        f3 = ReLU(BN(conv 3×3 stride 2, 128→256))
    y  = ReLU(BN(convT 256→128)) ( [4 groups at 256, conv](f3) + f3 )
    y  = ReLU(BN(convT 128→64))  ( [2 groups at 128, conv](y)  + f2 )
    y  = [1 group at 64, conv](y) + f1
    out = conv 3×3 64→C (y) + x

A group is RCAN's residual group of 10 RCAB (reduction 16). The original already works at equal
input and output size (the NTIRE 2019 LR images are at HR size). Differences: the input is added
back, with a zero-initialised last conv, so the model starts as the identity (see
:class:`~ddet.models.layers.GlobalResidualNet`); the weight normalisation of the original's convs
(a reparametrisation of the same functions, one extra scale per output channel) and its
parameterless RGB mean shift are left out. Batch norm is kept, as in the original. H and W are
padded to a multiple of 4 for the two stride-2 stages.

Size, published configuration: 58.44 M parameters = 233.8 MB at C = 1 (batch-norm scales and
shifts included), 77% more than Table III's 131.9 MB. No configuration of the published code
gives that figure (D = 2 gives 118 MB), so the published one is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._registry import Entry
from .layers import GlobalResidualNet, ResidualGroup, conv3x3, stack_with_conv
from .rcan import RCANConfig, channel_attention_group

__all__ = ["EDRNConfig", "EDRN", "EncoderDecoder"]


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        conv3x3(in_channels, out_channels, stride=2), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class EncoderDecoder(nn.Module):
    """EDRN's body: features at full resolution in, features at full resolution out."""

    def __init__(self, width: int, groups: int, blocks: int, reduction: int):
        super().__init__()

        def groups_at(channels: int, count: int):
            return (channel_attention_group(channels, blocks, reduction) for _ in range(count))

        self.down1 = _down(width, 2 * width)
        self.down2 = _down(2 * width, 4 * width)
        self.deep = ResidualGroup(groups_at(4 * width, groups), 4 * width)
        self.up1 = _up(4 * width, 2 * width)
        self.middle = stack_with_conv(groups_at(2 * width, groups // 2), 2 * width)
        self.up2 = _up(2 * width, width)
        self.shallow = stack_with_conv(groups_at(width, groups // 4), width)

    def forward(self, f1: torch.Tensor) -> torch.Tensor:
        f2 = self.down1(f1)
        y = self.up1(self.deep(self.down2(f2)))
        y = self.up2(self.middle(y) + f2)
        return self.shallow(y) + f1


@dataclass(frozen=True)
class EDRNConfig(RCANConfig):
    """RCAN's fields; ``groups``: residual groups at 1/4 resolution (half as many at 1/2, a quarter
    at full); ``blocks``: RCABs per group."""

    blocks: int = 10
    groups: int = 4


class EDRN(GlobalResidualNet):
    multiple = 4

    def make_body(self, config: EDRNConfig) -> EncoderDecoder:
        return EncoderDecoder(config.width, config.groups, config.blocks, config.reduction)


MODELS = {
    "edrn": Entry(
        EDRN,
        EDRNConfig(),
        "EDRN (NTIRE 2019 Real SR, Cheng et al.), encoder-decoder of RCAN groups; Table III: 131.9 MB",
    ),
}
