"""LP-KPN: the Laplacian-pyramid kernel prediction network of RealSR (Cai et al., ICCV 2019).

Layout (``LPKPN.prototxt`` and ``Train/LP-KPN.prototxt`` of csjcai/RealSR)::

    bands = laplacian_pyramid(x)             L0 (H×W), L1 (H/2), G2 (H/4)
    f     = Trunk(x)                         the KPN trunk, (N, 64, H/4, W/4)
    level l: pixel-shuffle ×(4 / 2^l) ─ conv → 64, ReLU ─ conv → 64, ReLU ─ conv → 25   (K = 5)
             filtered_l = dynconv(band_l, kernels_l)
    y     = reconstruct(filtered)

Pyramid: a 5×5 binomial filter ([1 4 6 4 1]ᵀ[1 4 6 4 1] / 256) then decimation by 2 (reduce);
zero insertion then the same filter times 4, i.e. / 64 (expand). Band l = G_l − expand(G_{l+1}),
the last band is the coarsest Gaussian level G_2. Borders are replicated (the Caffe layer pads with
zeros, which darkens the edges of every level); analysis followed by synthesis is exact either way.

Size: 1.43 M parameters = 5.72 MB at C = 1 (Table III: 5.7 MB).

Multi-level loss. The released training network puts one Euclidean loss on every level, between the
filtered band and the same band of the HR image; ``model.loss_pairs(lr, hr)`` gives those pairs to
the trainer::

    output, levels = model.forward_levels(lr)
    targets = model.pyramid(hr)
    loss = sum(((out - target) ** 2).mean() for out, target in zip(levels, targets))

Both lists run finest → coarsest, are computed on the same padded frame (H, W rounded up to a
multiple of 4 by edge replication) and cropped to ceil(H / 2^l) × ceil(W / 2^l), so they have
equal shapes; ``reconstruct(model.pyramid(hr))`` is hr when H and W divide by 4.

Initialisation: every level's last conv has zero weights and a centre-tap bias of 1, so a fresh
LP-KPN filters every band by the identity and returns its input.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import ddet_ops

from ._registry import Entry
from .kpn import TRUNK_SCALE, KernelHead, KernelHeadSpec, Trunk, TrunkConfig, feature_decoder
from .layers import SameSizeNet, check_image, check_ints, pad_to_multiple

__all__ = ["LPKPNConfig", "LPKPN", "laplacian_pyramid", "reconstruct", "reduce", "expand"]

LEVELS = 3
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _binomial_filter(x: torch.Tensor, gain: float) -> torch.Tensor:
    """The 5×5 binomial filter (sum = ``gain``) as a depthwise conv weight for x's channels."""
    taps = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device)
    kernel = torch.outer(taps, taps) * (gain / 256.0)
    return kernel.expand(x.shape[1], 1, 5, 5)


def reduce(x: torch.Tensor) -> torch.Tensor:
    """Blur with the binomial filter and keep every other row and column: (H, W) -> (⌈H/2⌉, ⌈W/2⌉)."""
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    return F.conv2d(padded, _binomial_filter(x, 1.0), stride=2, groups=x.shape[1])


def expand(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Insert zeros between samples and filter with 4 × the binomial filter, cropped to ``size``
    (at most twice x's size). Replicating x's border before the zero insertion keeps the edge rows
    at full weight."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    up = F.conv_transpose2d(padded, _binomial_filter(x, 4.0), stride=2, groups=x.shape[1])
    # conv_transpose places input sample i at 2i + 2; the replicated row shifts that by 2 more.
    return up[..., 4 : 4 + size[0], 4 : 4 + size[1]]


def laplacian_pyramid(x: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """Bands finest → coarsest: G_l − expand(G_{l+1}) for l < levels − 1, then G_{levels−1}.

    Computed in x's dtype even under autocast, so that :func:`reconstruct` inverts it exactly.
    """
    with torch.autocast(x.device.type, enabled=False):
        gaussians = [x]
        for _ in range(levels - 1):
            gaussians.append(reduce(gaussians[-1]))
        bands = [fine - expand(coarse, fine.shape[-2:]) for fine, coarse in itertools.pairwise(gaussians)]
        return bands + [gaussians[-1]]


def reconstruct(bands: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`laplacian_pyramid`: from the coarsest band, expand and add the next."""
    image = bands[-1]
    with torch.autocast(image.device.type, enabled=False):
        for band in reversed(bands[:-1]):
            image = band + expand(image.to(band.dtype), band.shape[-2:])
    return image


@dataclass(frozen=True)
class LPKPNConfig(TrunkConfig):
    """The trunk's fields (``width`` is also the hidden width of every level's decoder) and
    ``kernel_size``, K of every level."""

    kernel_size: int = 5

    def __post_init__(self):
        super().__post_init__()
        check_ints(self, ("kernel_size",), minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"LPKPNConfig.kernel_size must be odd, got {self.kernel_size}")


class LPKPN(SameSizeNet):
    """See the module docstring. ``model(x)`` is the reconstruction; :meth:`forward_levels` also
    returns the filtered bands and :meth:`pyramid` the matching bands of a target image."""

    multiple = TRUNK_SCALE

    def __init__(self, config: LPKPNConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.trunk = Trunk(config.in_channels, config.width, config.blocks)
        head = KernelHeadSpec((config.kernel_size,))
        self.levels = nn.ModuleList(
            nn.Sequential(
                feature_decoder(config.width, TRUNK_SCALE >> level, config.width, config.feature_width),
                KernelHead(config.feature_width, head, centre_weight=1.0),
            )
            for level in range(LEVELS)
        )

    def filtered_bands(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each band of x's pyramid convolved with its level's per-pixel kernels (H, W divide by 4)."""
        features = self.trunk(x)
        return [
            ddet_ops.dynconv(band, level(features))
            for band, level in zip(laplacian_pyramid(x), self.levels, strict=True)
        ]

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return reconstruct(self.filtered_bands(x))

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        check_image(x, self.in_channels, type(self).__name__)
        return pad_to_multiple(x, self.multiple), x.shape[-2], x.shape[-1]

    @staticmethod
    def _crop_levels(bands: Sequence[torch.Tensor], h: int, w: int) -> list[torch.Tensor]:
        return [band[..., : -(-h // 2**level), : -(-w // 2**level)] for level, band in enumerate(bands)]

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(output, [filtered band per level, finest → coarsest]); the output equals ``model(x)``."""
        padded, h, w = self._padded(x)
        bands = self.filtered_bands(padded)
        return reconstruct(bands)[..., :h, :w], self._crop_levels(bands, h, w)

    def pyramid(self, hr: torch.Tensor) -> list[torch.Tensor]:
        """The targets of the per-level loss: the Laplacian bands of ``hr``, finest → coarsest,
        in the same padded frame and crop as :meth:`forward_levels`."""
        padded, h, w = self._padded(hr)
        return self._crop_levels(laplacian_pyramid(padded), h, w)

    def loss_pairs(self, x: torch.Tensor, target: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every filtered band beside the same band of ``target``: the multi-level loss."""
        _, levels = self.forward_levels(x)
        return list(zip(levels, self.pyramid(target), strict=True))


MODELS = {
    "lpkpn": Entry(
        LPKPN, LPKPNConfig(), "LP-KPN of RealSR (Cai et al. 2019), 3 pyramid levels, K = 5; Table III: 5.7 MB"
    ),
}
