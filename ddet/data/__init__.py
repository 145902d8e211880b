"""Training and validation data for real-world SR: RealSR, paired folders, synthetic cross-camera pairs."""

from ddet.data.datasets import CHANNELS, TrainingPatches, WholeImages, to_channels, training_loader
from ddet.data.degrade import Degradation, degrade, resize
from ddet.data.io import list_images, read_image, write_image
from ddet.data.sources import (
    REALSR_CAMERAS,
    SKIMAGE_TRAIN_PHOTOS,
    SKIMAGE_VALIDATION_PHOTOS,
    DecodedCache,
    SyntheticPairs,
    folder_photos,
    paired_folder,
    realsr,
    skimage_photos,
)

DATA_KINDS = ("synthetic", "realsr", "folder")
VALIDATION_SEED = 20200101  # fixed, so every run and `ddet eval` see the same validation pairs


def make_sources(kind, scale, root=None, val_root=None, realsr_version=2, cameras=REALSR_CAMERAS, decode_cache=None):
    """(training source, validation source or None) for a data kind.

    synthetic: photos from ``root`` (default: scikit-image's training photos), validated on the
        photos in ``val_root`` (default: scikit-image's held-out photos);
    realsr: ``root`` is the RealSR folder; Train for training, Test for validation;
    folder: ``root`` and ``val_root`` are paired folders (``hr/``, ``lr/``).

    ``decode_cache``: a folder where the training files of realsr and folder data are kept decoded
    (see ``DecodedCache``); validation images are decoded once and kept in memory anyway.
    """
    if kind == "synthetic":
        train_photos = folder_photos(root) if root else skimage_photos(SKIMAGE_TRAIN_PHOTOS)
        val_photos = folder_photos(val_root) if val_root else skimage_photos(SKIMAGE_VALIDATION_PHOTOS)
        return SyntheticPairs(train_photos, scale), SyntheticPairs(val_photos, scale, fixed_seed=VALIDATION_SEED)
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}; choose from {DATA_KINDS}")
    if not root:
        raise ValueError(
            f"data {kind!r} needs "
            + ("the RealSR folder" if kind == "realsr" else "a folder with hr/ and lr/")
            + " (--data-root)"
        )
    cache = DecodedCache(decode_cache) if decode_cache else None
    if kind == "realsr":
        return (
            realsr(root, scale, "Train", cameras, realsr_version, cache),
            realsr(val_root or root, scale, "Test", cameras, realsr_version),
        )
    return paired_folder(root, cache), paired_folder(val_root) if val_root else None


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
    "write_image",
]
