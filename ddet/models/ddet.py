"""DDet: Dual-path Dynamic Enhancement Network (Shi et al., IEEE SPL 2020), its released Caffe
layout and the ablations of its Table II.

Two paths from the LR image I_LR (already at HR size)::

    G_Sat (deep):  the KPN trunk and decoder (see ddet.models.kpn), then kernel heads
    G_Dil (CDM):   conv 3×3 C→64, ReLU, conv 64→64, ReLU, conv 64→C;   I_Rev = G_Dil(I_LR) + I_LR
    MDA:           y = Σ_s dynconv_s(I_Rev, kernels_s)   (ddet_ops.multi_dynconv, raw kernels)
    F_PR:          out = conv 64→C ∘ ReLU ∘ conv C→64 (y)      (post-refinement, no skip)

Layouts (float32 MB at C = 1; Table III lists DDet at 5.7 MB):

=================  ============================================================  =========
name               layout                                                        MB
=================  ============================================================  =========
``ddet``           paper text: sizes 3, 5, 7 from one 83-channel head,           5.76
                   trunk features 128 (1.44 M parameters)
``ddet-released``  ykshi/DDet ``x4/DDet_x4.prototxt`` (also x3): sizes 9, 7, 5   6.24
                   from heads 128→81; 128→49, ReLU, 49→49; 128→32, ReLU, 32→25
                   (1.56 M)
``ddet-released``  with ``feature_width=64``: ``x2/DDet_x2.prototxt`` (1.43 M),  5.72
                   the network behind Table III's 5.7 MB
=================  ============================================================  =========

The released trunk ends in a conv to 128 channels (×3/×4 networks; 64 in ×2). The
paper-text ``ddet`` keeps 128, which puts it within 1% of Table III (with 64 it would be 5.42 MB,
5% under); ``ddet-released`` defaults to the ×4 file, and ``feature_width=64`` gives the ×2 file.

Table II ablations are configurations of the same class, each rung adding one component with
everything else (including the 128-channel trunk features) unchanged:

* ``ddet-plain``: KPN with K = 7 (no CDM, no post-refinement). With ``feature_width=64`` it has
  exactly the layout and parameters of ``kpn7``.
* ``ddet-pr``: + post-refinement.
* ``ddet-cdm``: + CDM.
* ``ddet``: + MDA (sizes 3, 5, 7 instead of 7).

Initialisation, so that a briefly trained network starts from the identity mapping: every kernel
head's last conv has zero weights and a bias of 1/S at the centre tap of each of its sizes (S =
number of sizes in the model), so the MDA sum is exactly I_Rev; G_Dil's last conv is zero, so
I_Rev = I_LR; F_PR's first conv copies the image into its first C channels (its other channels
keep their random start) and its second conv reads back only those, so F_PR(y) = ReLU(y) = y for
the non-negative images the model sees. The kernels stay raw (no normalisation), as in the paper
and the released networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._registry import Entry
from .kpn import KPN, KernelHeadSpec, KPNConfig
from .layers import check_ints, conv3x3, pass_through_init, zero_init

__all__ = ["DDetConfig", "DDet", "RELEASED_HEADS"]

RELEASED_HEADS = (KernelHeadSpec((9,)), KernelHeadSpec((7,), hidden=49), KernelHeadSpec((5,), hidden=32))


@dataclass(frozen=True)
class DDetConfig(KPNConfig):
    """KPN's fields plus the two DDet components; ``branch_width`` is the hidden width of G_Dil
    and F_PR."""

    feature_width: int = 128
    heads: tuple[KernelHeadSpec, ...] = (KernelHeadSpec((3, 5, 7)),)
    cdm: bool = True
    post_refine: bool = True
    branch_width: int = 64

    def __post_init__(self):
        super().__post_init__()
        # F_PR's pass-through initialisation needs one hidden channel per image channel.
        check_ints(self, ("branch_width",), minimum=self.in_channels)


class DDet(KPN):
    """DDet and its ablations; see the module docstring. ``restore`` runs, on an image whose H
    and W divide by 4: :meth:`revise` (CDM), :meth:`kernels` (G_Sat), :meth:`apply_kernels` (MDA)
    and :meth:`refine_output` (F_PR)."""

    def __init__(self, config: DDetConfig):
        super().__init__(config)
        channels, hidden = config.in_channels, config.branch_width
        self.detail = None
        if config.cdm:
            self.detail = nn.Sequential(
                conv3x3(channels, hidden),
                nn.ReLU(inplace=True),
                conv3x3(hidden, hidden),
                nn.ReLU(inplace=True),
                zero_init(conv3x3(hidden, channels)),
            )
        self.refine = None
        if config.post_refine:
            self.refine = nn.Sequential(conv3x3(channels, hidden), nn.ReLU(inplace=True), conv3x3(hidden, channels))
            pass_through_init(self.refine[0], self.refine[2])

    def revise(self, x: torch.Tensor) -> torch.Tensor:
        """I_Rev = G_Dil(x) + x with CDM, else x."""
        return x if self.detail is None else x + self.detail(x)

    def refine_output(self, y: torch.Tensor) -> torch.Tensor:
        """F_PR(y) with post-refinement, else y."""
        return y if self.refine is None else self.refine(y)

    @property
    def receptive_radius(self) -> int:
        """The kernels' reach, or the revised image's (three convs of CDM) seen through the
        largest kernel, whichever is further, plus F_PR's two convs."""
        revised = 3 if self.detail is not None else 0
        refined = 2 if self.refine is not None else 0
        return max(self.kernel_radius, revised + max(self.sizes) // 2) + refined

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine_output(self.apply_kernels(self.revise(x), self.kernels(x)))


MODELS = {
    "ddet": Entry(
        DDet,
        DDetConfig(),
        "DDet, paper layout: MDA sizes 3, 5, 7 + CDM + post-refinement; Table III: 5.7 MB",
        pretrained={scale: f"ddet_x{scale}.safetensors" for scale in (2, 3, 4)},
    ),
    "ddet-released": Entry(
        DDet,
        DDetConfig(heads=RELEASED_HEADS),
        "DDet, released x3/x4 Caffe layout: sizes 9, 7, 5 with their own heads (feature_width=64: the x2 file)",
    ),
    "ddet-plain": Entry(
        DDet,
        DDetConfig(heads=(KernelHeadSpec((7,)),), cdm=False, post_refine=False),
        "Table II ablation: plain KPN, K = 7",
    ),
    "ddet-pr": Entry(
        DDet,
        DDetConfig(heads=(KernelHeadSpec((7,)),), cdm=False),
        "Table II ablation: KPN K = 7 + post-refinement",
    ),
    "ddet-cdm": Entry(
        DDet,
        DDetConfig(heads=(KernelHeadSpec((7,)),)),
        "Table II ablation: KPN K = 7 + post-refinement + CDM",
    ),
}
