"""Training and validation data for real-world SR: RealSR, paired folders, synthetic cross-camera pairs."""

import os
from collections.abc import Sequence
from typing import Union

from ddet.data.datasets import CHANNELS, TrainingPatches, WholeImages, to_channels, training_loader
from ddet.data.degrade import Degradation, degrade, resize
from ddet.data.io import list_images, read_image, write_image
from ddet.data.sources import (
    REALSR_CAMERAS,
    SKIMAGE_TRAIN_PHOTOS,
    SKIMAGE_VALIDATION_PHOTOS,
    DecodedCache,
    FilePairs,
    SyntheticPairs,
    folder_photos,
    paired_folder,
    realsr,
    skimage_photos,
)

DATA_KINDS = ("synthetic", "realsr", "folder")
PathLike = Union[str, os.PathLike]
PairSource = Union[SyntheticPairs, FilePairs]
VALIDATION_SEED = 20200101  # fixed, so every run and `ddet eval` see the same validation pairs


def training_source(
    kind: str,
    scale: int,
    root: PathLike | None = None,
    *,
    realsr_version: int = 2,
    cameras: Sequence[str] = REALSR_CAMERAS,
    decode_cache: PathLike | None = None,
) -> PairSource:
    """The pairs training patches are cut from.

    synthetic: photos from ``root`` (default: scikit-image's training photos), degraded afresh for
        every patch; realsr: ``root`` is the RealSR folder, its Train split; folder: ``root`` is a
        paired folder (``hr/``, ``lr/``).

    ``decode_cache``: a folder where the files of realsr and folder data are kept decoded (see
    ``DecodedCache``).
    """
    _check_kind(kind)
    if kind == "synthetic":
        return SyntheticPairs(folder_photos(root) if root else skimage_photos(SKIMAGE_TRAIN_PHOTOS), scale)
    cache = DecodedCache(decode_cache) if decode_cache else None
    if kind == "realsr":
        return realsr(_needed_root(kind, root), scale, "Train", cameras, realsr_version, cache)
    return paired_folder(_needed_root(kind, root), cache)


def validation_source(
    kind: str,
    scale: int,
    root: PathLike | None = None,
    *,
    realsr_version: int = 2,
    cameras: Sequence[str] = REALSR_CAMERAS,
    split: str = "Test",
) -> PairSource:
    """Whole-image pairs to validate a run or evaluate a model on; the same pairs every time.

    synthetic: the photos in ``root`` (default: scikit-image's held-out photos), degraded with the
        fixed ``VALIDATION_SEED``; realsr: ``split`` of the RealSR folder ``root``; folder: ``root``
        is a paired folder (``hr/``, ``lr/``).
    """
    _check_kind(kind)
    if kind == "synthetic":
        photos = folder_photos(root) if root else skimage_photos(SKIMAGE_VALIDATION_PHOTOS)
        return SyntheticPairs(photos, scale, fixed_seed=VALIDATION_SEED)
    if kind == "realsr":
        return realsr(_needed_root(kind, root), scale, split, cameras, realsr_version)
    return paired_folder(_needed_root(kind, root))


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
    """(training source, validation source or None) of a training run.

    ``root`` is the training data of :func:`training_source`; ``val_root`` that of
    :func:`validation_source`, by default scikit-image's held-out photos for synthetic data, the
    Test split of ``root`` for RealSR, and no validation for a paired folder.
    """
    train = training_source(
        kind, scale, root, realsr_version=realsr_version, cameras=cameras, decode_cache=decode_cache
    )
    if kind == "realsr":
        val_root = val_root or root
    elif kind == "folder" and not val_root:
        return train, None
    return train, validation_source(kind, scale, val_root, realsr_version=realsr_version, cameras=cameras)


def _check_kind(kind: str) -> None:
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}; choose from {DATA_KINDS}")


def _needed_root(kind: str, root: PathLike | None) -> PathLike:
    if not root:
        folder = "the RealSR folder" if kind == "realsr" else "a folder with hr/ and lr/"
        raise ValueError(f"data {kind!r} needs {folder} (--data-root)")
    return root


__all__ = [
    "CHANNELS",
    "DATA_KINDS",
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
    "training_source",
    "validation_source",
    "write_image",
]
