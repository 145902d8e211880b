"""DDet, its Table II ablations and every network of the paper's comparisons, by name.

>>> from ddet import models
>>> model = models.create("ddet")                  # Y channel; models.create("ddet", in_channels=3) for RGB
>>> y = model(x)                                   # x: (N, C, H, W) LR image at HR size, roughly in [0, 1]
>>> models.names(), models.size_mb(model)          # 5.76 (MB = float32 bytes / 10^6, Table III's unit)
>>> model = models.create("ddet", pretrained=True, scale=2)   # the bundled x2 weights loaded
>>> models.pretrained_scales("ddet")               # [2, 3, 4]: the scales with bundled weights

Every model maps (N, C, H, W) to the same shape, for any H and W (padded inside by edge replication
where the network needs a multiple of 4, then cropped), has ``model.in_channels``,
``model.config`` (the frozen dataclass it was built from: ``create(name, **fields)`` replaces
fields), ``model.receptive_radius`` (how far an input pixel can move an output pixel: 144 for
``ddet``; stated for the KPN family and DDet, ``math.inf`` for the others) and
``model.loss_pairs(x, target)`` (the (prediction, target) pairs its training loss sums over: the
output alone, or LP-KPN's pyramid levels), and starts close to the identity mapping (see each
family's docstring).

=================  =====================================================  ==========  =========
name               what                                                   MB (C = 1)  Table III
=================  =====================================================  ==========  =========
``ddet``           DDet, paper text: MDA sizes 3, 5, 7, CDM, refinement        5.76       5.7
``ddet-released``  DDet, released ×3/×4 Caffe layout: sizes 9, 7, 5            6.24       5.7 [1]
``ddet-plain``     Table II: KPN K = 7 on DDet's trunk                         5.44       --
``ddet-pr``        Table II: + post-refinement                                 5.45       --
``ddet-cdm``       Table II: + CDM (``ddet`` adds MDA)                         5.60       --
``kpn5``           KPN of RealSR, K = 5                                        5.13       5.1
``kpn7``           KPN, K = 7                                                  5.18       5.2
``kpn13``          KPN, K = 13                                                 5.46       5.5
``kpn19``          KPN, K = 19                                                 5.90       5.9
``lpkpn``          Laplacian-pyramid KPN of RealSR, 3 levels, K = 5            5.72       5.7
``srresnet``       SRResNet, 16 blocks, no BN, same size                       4.92       4.9
``edsr``           EDSR, 32 blocks × 256, residual scaling 0.1, same size    153.44     153.5
``rcan``           RCAN, 10 groups × 20 RCAB, same size                       61.18      54.8 [2]
``edrn``           EDRN of NTIRE 2019 Real SR, published configuration       233.77     131.9 [2]
=================  =====================================================  ==========  =========

[1] ``create("ddet-released", feature_width=64)`` is the released ×2 network: 1.43 M parameters,
    5.72 MB, the figure behind Table III.
[2] The published configurations, kept as they are: RCAN is 11.6% and EDRN 77% larger than
    Table III says, and no configuration of their published code gives Table III's figures.
"""

from . import ddet, edrn, edsr, kpn, lpkpn, rcan, srresnet
from ._registry import (
    create,
    default_config,
    describe,
    names,
    parameter_count,
    pretrained_file,
    pretrained_scales,
    register,
    size_mb,
)

for _family in (ddet, kpn, lpkpn, srresnet, edsr, rcan, edrn):
    for _name, _entry in _family.MODELS.items():
        register(_name, _entry)
del _family, _name, _entry

__all__ = [
    "create",
    "names",
    "describe",
    "default_config",
    "parameter_count",
    "size_mb",
    "register",
    "pretrained_scales",
    "pretrained_file",
]
