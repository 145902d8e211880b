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
from .layers import GlobalResidualNet, NetConfig, ResidualBlock, ResidualGroup

__all__ = ["EDSRConfig", "EDSR"]


@dataclass(frozen=True)
class EDSRConfig(NetConfig):
    width: int = 256
    blocks: int = 32
    res_scale: float = 0.1


class EDSR(GlobalResidualNet):
    def make_body(self, config: EDSRConfig) -> ResidualGroup:
        blocks = (ResidualBlock(config.width, scale=config.res_scale) for _ in range(config.blocks))
        return ResidualGroup(blocks, config.width)


MODELS = {
    "edsr": Entry(
        EDSR,
        EDSRConfig(),
        "EDSR (Lim et al. 2017), 32 blocks x 256 channels, residual scaling 0.1; Table III: 153.5 MB",
    ),
}
