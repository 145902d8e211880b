"""Building blocks shared by the model families: residual blocks and groups, channel attention,
the same-size image-to-image base class and the initialisations that start a model near identity."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention of RCAN: x * sigmoid(MLP(mean over H, W))."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        if channels // reduction < 1:
            raise ValueError(f"channel attention reduction {reduction} leaves no channels of {channels}")
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualBlock(nn.Module):
    """x + scale * [conv - activation - conv (- channel attention)](x), all 3x3 at one width.

    The residual block of the DDet/KPN trunk, of SRResNet without batch norm (PReLU), of EDSR
    (scale 0.1) and, with ``reduction``, the RCAB of RCAN and EDRN.
    """

    def __init__(
        self,
        channels: int,
        *,
        activation: Callable[[], nn.Module] = nn.ReLU,
        scale: float = 1.0,
        reduction: int | None = None,
    ):
        super().__init__()
        layers = [conv3x3(channels, channels), activation(), conv3x3(channels, channels)]
        if reduction is not None:
            layers.append(ChannelAttention(channels, reduction))
        self.body = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def stack_with_conv(modules: Iterable[nn.Module], channels: int) -> nn.Sequential:
    """``modules`` in sequence, closed by a 3x3 conv: the body of every residual group."""
    return nn.Sequential(*modules, conv3x3(channels, channels))


class ResidualGroup(nn.Module):
    """x + [modules..., conv3x3](x): the long skip of the trunks and RCAN's residual group."""

    def __init__(self, modules: Iterable[nn.Module], channels: int):
        super().__init__()
        self.body = stack_with_conv(modules, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _round_up(size, multiple: int):
    return (size + multiple - 1) // multiple * multiple


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of x by edge replication so that H and W divide by ``multiple``.

    Replication rather than zeros: a zero border is a false edge that the networks would
    sharpen, and unlike reflection it works for any H, W >= 1. Padding by zero pixels still goes
    through ``F.pad`` rather than a branch on the size, so that a graph exported with a dynamic
    H and W (``ddet export``) pads correctly for every size, not just the example's. The padded
    size is written as a round-up, ``multiple · ⌊(H + multiple − 1) / multiple⌋``: AOTInductor
    cancels that factor in the stride checks of later convolutions, whereas ``H + (−H mod
    multiple)`` leaves it a quotient whose value range it cannot bound (``ValueRangeError``).
    """
    pad_h = _round_up(x.shape[-2], multiple) - x.shape[-2]
    pad_w = _round_up(x.shape[-1], multiple) - x.shape[-1]
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def check_image(x: torch.Tensor, in_channels: int, model: str) -> None:
    """Raise a ValueError naming what is wrong unless x is a floating (N, in_channels, H, W) tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{model} expects a tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{model} expects an image batch of shape (N, {in_channels}, H, W), got {tuple(x.shape)}"
            + ("" if in_channels != 1 else "; build it with in_channels=3 for RGB input")
        )
    if not x.is_floating_point():
        raise ValueError(f"{model} expects a floating-point image, got dtype {x.dtype}")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"{model} expects H, W >= 1, got {tuple(x.shape)}")


class SameSizeNet(nn.Module):
    """Base of every model: (N, C, H, W) in, same shape out, for any H and W.

    Subclasses set ``in_channels`` and ``multiple`` (the factor H and W must divide by inside the
    network) and implement :meth:`restore` on the padded image; one trained with a loss on more than
    its output overrides :meth:`loss_pairs`.
    """

    in_channels: int
    multiple: int = 1

    @property
    def receptive_radius(self) -> float:
        """How far (pixels, in H or W) an input pixel can be from an output pixel it changes:
        tiles that read this much context beyond their edges give exactly the whole-image result.
        ``math.inf`` where it is not stated (or is the whole image, as with channel attention's
        global pooling)."""
        return math.inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels, type(self).__name__)
        h, w = x.shape[-2:]
        return self.restore(pad_to_multiple(x, self.multiple))[..., :h, :w]

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_pairs(self, x: torch.Tensor, target: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (prediction, target) pairs the training loss compares, summed over the pairs: here the
        output for ``x`` and ``target``; a model trained on intermediate results too returns those."""
        return [(self(x), target)]


def check_ints(config: NetConfig, fields: Sequence[str], *, minimum: int) -> None:
    """Raise a ValueError naming the first of ``fields`` of ``config`` that is not an int >= minimum."""
    for field in fields:
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{type(config).__name__}.{field} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class NetConfig:
    """The fields every model family has: ``in_channels`` (1 for Y, 3 for RGB), ``width`` (feature
    channels) and ``blocks`` (residual blocks); a family's configuration adds its own, changes the
    defaults and extends the checks."""

    in_channels: int = 1
    width: int = 64
    blocks: int = 16

    def __post_init__(self):
        check_ints(self, ("in_channels", "width"), minimum=1)
        check_ints(self, ("blocks",), minimum=0)


class GlobalResidualNet(SameSizeNet):
    """x + tail(body(head(x))): the classical baselines at equal input and output size.

    The published networks end in an upsampler; on RealSR's same-size pairs that tail is dropped
    and the input is added back, with ``tail`` zero-initialised so the model starts as the
    identity (as every model here does). A family implements :meth:`make_body`; ``head`` and
    ``tail`` are 3×3 convs between the image and ``config.width`` channels unless it overrides
    :meth:`make_head` or :meth:`make_tail`. They are built in that order, head first, so a seed
    gives the same weights whichever part a family changes.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.head = self.make_head(config)
        self.body = self.make_body(config)
        self.tail = zero_init(self.make_tail(config))

    def make_head(self, config: NetConfig) -> nn.Module:
        return conv3x3(config.in_channels, config.width)

    def make_body(self, config: NetConfig) -> nn.Module:
        raise NotImplementedError

    def make_tail(self, config: NetConfig) -> nn.Conv2d:
        return conv3x3(config.width, config.in_channels)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.body(self.head(x)))


def zero_init(conv: nn.Conv2d) -> nn.Conv2d:
    """Zero a conv's weight and bias, so that a residual path around it starts as the identity."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def centre_tap_init(conv: nn.Conv2d, sizes: Sequence[int], centre_weight: float) -> nn.Conv2d:
    """Make a kernel-predicting conv emit, at every pixel, kernels that are ``centre_weight`` at
    the centre tap of every size and 0 elsewhere (packed size-major, row-major taps).

    The weight is zero, so at the start the kernels ignore the image content; the bias carries the
    identity. Gradients still reach the weight, and through it the rest of the network.
    """
    zero_init(conv)
    with torch.no_grad():
        start = 0
        for size in sizes:
            conv.bias[start + (size * size) // 2] = centre_weight
            start += size * size
    return conv


def pass_through_init(first: nn.Conv2d, second: nn.Conv2d) -> None:
    """Start conv - ReLU - conv (no skip) as the identity on non-negative images.

    Channel c of ``first`` copies image channel c (a centre tap of 1, bias 0) and passes the ReLU
    unchanged for x >= 0; ``second`` reads back only those channels. The other channels of
    ``first`` keep their random initialisation, so they start learning as soon as ``second``'s
    weights move away from zero.
    """
    channels = first.in_channels
    with torch.no_grad():
        first.weight[:channels].zero_()
        first.bias[:channels].zero_()
        zero_init(second)
        for c in range(channels):
            first.weight[c, c, 1, 1] = 1.0
            second.weight[c, c, 1, 1] = 1.0
