"""Training and validation data for real-world SR: RealSR, paired folders, synthetic cross-camera pairs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ddet.data.datasets import CHANNELS, TrainingPatches, WholeImages, to_channels, training_loader
from ddet.data.degrade import Degradation, degrade, resize
from ddet.data.io import list_images, read_image, write_image
from ddet.data.sources import (
    REALSR_CAMERAS,
    SKIMAGE_TRAIN_PHOTOS,
    SKIMAGE_VALIDATION_PHOTOS,
    DecodedCache,
    PairSource,
    SyntheticPairs,
    folder_photos,
    paired_folder,
    realsr,
    skimage_photos,
)
from ddet.files import PathLike

DATA_KINDS = ("synthetic", "realsr", "folder")
VALIDATION_SEED = 20200101  # fixed, so every run and `ddet eval` see the same validation pairs


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A kind of data at an SR scale: where training patches and validation images come from.

    synthetic: cross-camera pairs made from photos, by default scikit-image's (training photos for
        training, the held-out ones for validation); realsr: a RealSR folder, cameras ``cameras``
        of dataset version ``realsr_version``; folder: a paired folder (``hr/``, ``lr/``).
    """

    kind: str
    scale: int
    realsr_version: int = 2
    cameras: Sequence[str] = REALSR_CAMERAS

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"unknown data kind {self.kind!r}; choose from {DATA_KINDS}")

    def training(self, root: PathLike | None = None, decode_cache: PathLike | None = None) -> PairSource:
        """The pairs training patches are cut from: the photos in ``root`` degraded afresh for every
        patch, RealSR's Train split, or the paired folder ``root``. ``decode_cache``: a folder
        where the files of realsr and folder data are kept decoded (see ``DecodedCache``)."""
        if self.kind == "synthetic":
            return SyntheticPairs(folder_photos(root) if root else skimage_photos(SKIMAGE_TRAIN_PHOTOS), self.scale)
        cache = DecodedCache(decode_cache) if decode_cache else None
        if self.kind == "realsr":
            return realsr(self._needed(root), self.scale, "Train", self.cameras, self.realsr_version, cache)
        return paired_folder(self._needed(root), cache)

    def validation(self, root: PathLike | None = None, split: str = "Test") -> PairSource:
        """Whole-image pairs to validate a run or evaluate a model on, the same every time: the
        photos in ``root`` degraded with the fixed ``VALIDATION_SEED``, RealSR's ``split``, or the
        paired folder ``root``."""
        if self.kind == "synthetic":
            photos = folder_photos(root) if root else skimage_photos(SKIMAGE_VALIDATION_PHOTOS)
            return SyntheticPairs(photos, self.scale, fixed_seed=VALIDATION_SEED)
        if self.kind == "realsr":
            return realsr(self._needed(root), self.scale, split, self.cameras, self.realsr_version)
        return paired_folder(self._needed(root))

    def _needed(self, root: PathLike | None) -> PathLike:
        if not root:
            folder = "the RealSR folder" if self.kind == "realsr" else "a folder with hr/ and lr/"
            raise ValueError(f"data {self.kind!r} needs {folder} (--data-root)")
        return root


def make_sources(
    kind: str,
    scale: int,
    root: PathLike | None = None,
    val_root: PathLike | None = None,
    *,
    realsr_version: int = 2,
    cameras: Sequence[str] = REALSR_CAMERAS,
    decode_cache: PathLike | None = None,
) -> tuple[PairSource, PairSource | None]:
    """(training source, validation source or None) of a training run: :meth:`DataSpec.training`
    of ``root`` and :meth:`DataSpec.validation` of ``val_root``, by default scikit-image's held-out
    photos for synthetic data, the Test split of ``root`` for RealSR, and no validation for a
    paired folder."""
    data = DataSpec(kind, scale, realsr_version, cameras)
    train = data.training(root, decode_cache)
    if kind == "realsr":
        val_root = val_root or root
    elif kind == "folder" and not val_root:
        return train, None
    return train, data.validation(val_root)


__all__ = [
    "CHANNELS",
    "DATA_KINDS",
    "DataSpec",
    "REALSR_CAMERAS",
    "DecodedCache",
    "Degradation",
    "SKIMAGE_TRAIN_PHOTOS",
    "SKIMAGE_VALIDATION_PHOTOS",
    "SyntheticPairs",
    "TrainingPatches",
    "WholeImages",
    "degrade",
    "folder_photos",
    "list_images",
    "make_sources",
    "paired_folder",
    "read_image",
    "realsr",
    "resize",
    "skimage_photos",
    "to_channels",
    "training_loader",
    "write_image",
]
