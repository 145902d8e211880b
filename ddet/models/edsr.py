"""EDSR (Lim et al., CVPRW 2017), the large model, at equal input and output size.

Layout: conv 3×3 C→256; 32 × [conv–ReLU–conv, × 0.1, + skip]; conv 3×3 under a long skip; conv 3×3
256→C; plus the input (no upsampler, see :class:`~ddet.models.layers.GlobalResidualNet`). The
fixed RGB mean shift of the original is left out: it has no parameters, and a learned bias does
its job on inputs in [0, 1].

Size: 38.36 M parameters = 153.44 MB at C = 1; 153.48 MB at C = 3. Table III's 153.5 MB matches
both (it was most likely counted on RGB); the ×4 upsampler would add 4.7 M parameters (18.9 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import Entry
from .layers import GlobalResidualNet, ResidualBlock, ResidualGroup, check_ints, conv3x3

__all__ = ["EDSRConfig", "EDSR"]


@dataclass(frozen=True)
class EDSRConfig:
    in_channels: int = 1
    width: int = 256
    blocks: int = 32
    res_scale: float = 0.1

    def __post_init__(self):
        check_ints(self, ("in_channels", "width"), minimum=1)
        check_ints(self, ("blocks",), minimum=0)


class EDSR(GlobalResidualNet):
    def __init__(self, config: EDSRConfig):
        width = config.width
        super().__init__(
            config.in_channels,
            head=conv3x3(config.in_channels, width),
            body=ResidualGroup((ResidualBlock(width, scale=config.res_scale) for _ in range(config.blocks)), width),
            tail=conv3x3(width, config.in_channels),
        )
        self.config = config


MODELS = {
    "edsr": Entry(
        EDSR,
        EDSRConfig(),
        "EDSR (Lim et al. 2017), 32 blocks x 256 channels, residual scaling 0.1; Table III: 153.5 MB",
    ),
}
