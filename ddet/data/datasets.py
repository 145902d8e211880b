"""PyTorch datasets over pair sources: random training patches and whole validation images.

Training sample ``k`` of a run is a pure function of (seed, k): the image (each image once per
epoch, in an order drawn from the seed and the epoch), the crop, the flips and rotations, and the
synthetic degradation. A resumed run and a run split over several processes therefore see exactly
the samples of one uninterrupted single-process run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from ddet.data.color import rgb_to_y
from ddet.data.sources import PairSource

CHANNELS = ("y", "rgb")


def to_channels(image: np.ndarray, channels: str) -> np.ndarray:
    """H×W×3 RGB in [0, 1] → H×W×1 (MATLAB Y / 255) or H×W×3."""
    if channels == "y":
        return rgb_to_y(image)[..., None]
    if channels == "rgb":
        return image
    raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


class TrainingPatches(Dataset):
    """``num_samples`` random (lr, hr) patches, samples ``first_sample`` … ``first_sample + num_samples − 1``."""

    def __init__(
        self,
        source: PairSource,
        patch: int,
        channels: str = "y",
        seed: int = 0,
        *,
        num_samples: int = 1,
        first_sample: int = 0,
        augment: bool = True,
    ):
        self.source, self.patch, self.channels = source, patch, channels
        self.seed, self.num_samples, self.first_sample, self.augment = seed, num_samples, first_sample, augment
        to_channels(np.zeros((1, 1, 3), np.float32), channels)  # validates `channels` now
        for index in range(len(source)):
            height, width = source.size(index)
            if min(height, width) < patch:
                raise ValueError(
                    f"image {source.names[index]} ({height}×{width}) is smaller than the patch size {patch}"
                )

    def __len__(self) -> int:
        return self.num_samples

    def image_index(self, sample: int) -> int:
        epoch, position = divmod(sample, len(self.source))
        order = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.source))
        return int(order[position])

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= item < self.num_samples:
            raise IndexError(item)
        sample = self.first_sample + item
        rng = np.random.default_rng([self.seed, 0, sample])
        index = self.image_index(sample)
        height, width = self.source.size(index)
        top = int(rng.integers(0, height - self.patch + 1))
        left = int(rng.integers(0, width - self.patch + 1))
        lr, hr = self.source.pair(index, rng, region=(top, left, self.patch, self.patch))
        lr, hr = to_channels(lr, self.channels), to_channels(hr, self.channels)
        if self.augment:
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            lr, hr = np.rot90(lr, turns), np.rot90(hr, turns)
            if flip:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
        return to_tensor(lr), to_tensor(hr)


class WholeImages(Dataset):
    """Full (lr, hr, name) images, for validation and evaluation; batch size 1 (sizes differ)."""

    def __init__(self, source: PairSource, channels: str = "y", cache: bool = True):
        self.source, self.channels = source, channels
        self.cached = {} if cache else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        if self.cached is not None and index in self.cached:
            return self.cached[index]
        lr, hr = self.source.pair(index)
        item = (
            to_tensor(to_channels(lr, self.channels)),
            to_tensor(to_channels(hr, self.channels)),
            self.source.names[index],
        )
        if self.cached is not None:
            self.cached[index] = item
        return item


def training_loader(
    dataset: Dataset, global_batch: int, workers: int = 0, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Loader of ``global_batch / world_size`` patches per step on this rank.

    DistributedSampler without shuffling deals sample ``k`` to rank ``k mod world_size``, so a step's
    samples across all ranks are exactly one single-process batch of ``global_batch``.
    """
    if global_batch % world_size:
        raise ValueError(f"batch {global_batch} is not divisible by the number of processes {world_size}")
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=True)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=global_batch // world_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
