"""Sources of (LR-at-HR-size, HR) image pairs: RealSR, a paired folder, synthetic pairs from photos.

A source has ``names`` and ``pair(index, rng) -> (lr, hr)``, float32 H×W×3 arrays in [0, 1] of the
same size. File sources ignore ``rng``; the synthetic source draws a fresh degradation from it.
``region`` (top, left, height, width), when given, asks for that window of the HR image only
(synthetic pairs degrade just that window, so training never pays for whole photos).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddet.data.degrade import Degradation, degrade, resize
from ddet.data.io import ORIENTATION_TAG, list_images, read_image, read_integer_image
from ddet.files import PathLike, atomic_write

# Photographs shipped with scikit-image (no synthetic charts, no binary masks, no duplicates such as
# `cat` = `chelsea`); validation photos are held out by name.
SKIMAGE_TRAIN_PHOTOS = (
    "astronaut",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "moon",
    "coins",
    "brick",
    "grass",
    "gravel",
    "clock",
    "page",
    "text",
    "cell",
)
SKIMAGE_VALIDATION_PHOTOS = ("coffee", "chelsea", "camera")
REALSR_CAMERAS = ("Canon", "Nikon")


def _bicubic_to(lr, shape, path):
    if lr.shape[:2] == tuple(shape):
        return lr
    if lr.shape[0] > shape[0] or lr.shape[1] > shape[1]:
        raise ValueError(
            f"LR image {path} ({lr.shape[0]}×{lr.shape[1]}) is larger than its HR image ({shape[0]}×{shape[1]})"
        )
    return np.clip(resize(lr, shape[0], shape[1]), 0.0, 1.0)


def _window(image, region):
    if region is None:
        return image
    top, left, height, width = region
    return image[top : top + height, left : left + width]


class DecodedCache:
    """Decoded images kept in ``folder`` as uncompressed .npy files and read by memory map, so a
    training patch reads its window only, where a file source would decode both whole images for
    every patch (~0.1 s a PNG of two megapixels). Worker processes share the files through the page
    cache. Entries are keyed by the file's absolute path, size and modification time, so an edited
    image is decoded afresh. Pixels stay as stored (uint8 or uint16); an LR image resized to its HR
    image's size is stored as uint16, within 1/65535 of the float resize."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mapped = {}

    def __getstate__(self):  # worker processes map the files themselves
        return {"folder": self.folder, "mapped": {}}

    def pixels(self, path: PathLike, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
        """(integer H×W×3 array, peak value) of the image at ``path``, resized to ``shape`` when given."""
        path = Path(path).resolve()
        stat = path.stat()
        key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{shape}".encode()).hexdigest()
        if key not in self.mapped:
            file = self.folder / f"{key}.npy"
            if not file.is_file():
                pixels, peak = read_integer_image(path)
                if shape is not None and pixels.shape[:2] != tuple(shape):
                    resized = _bicubic_to(pixels.astype(np.float32) / peak, shape, path)
                    pixels = np.round(resized * 65535.0).astype(np.uint16)
                atomic_write(file, lambda handle: np.save(handle, pixels))
            pixels = np.load(file, mmap_mode="r")
            self.mapped[key] = (pixels, 255.0 if pixels.dtype == np.uint8 else 65535.0)
        return self.mapped[key]


class FilePairs:
    """Pairs stored as files; LR images smaller than their HR image are bicubic-resized to its size.
    With ``cache`` (a DecodedCache) each file is decoded once, not once for every patch."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], cache: DecodedCache | None = None):
        if not pairs:
            raise ValueError("no image pairs found")
        self.paths = list(pairs)
        self.names = [hr.stem for hr, _ in self.paths]
        self.cache = cache
        self.sizes = {}

    def __len__(self) -> int:
        return len(self.paths)

    def pair(
        self, index: int, rng: np.random.Generator | None = None, region: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        hr_path, lr_path = self.paths[index]
        if self.cache is None:
            hr = read_image(hr_path)
            lr = _bicubic_to(read_image(lr_path), hr.shape[:2], lr_path)
            return _window(lr, region), _window(hr, region)
        hr, hr_peak = self.cache.pixels(hr_path)
        lr, lr_peak = self.cache.pixels(lr_path, hr.shape[:2])
        return _window(lr, region).astype(np.float32) / lr_peak, _window(hr, region).astype(np.float32) / hr_peak

    def size(self, index: int) -> tuple[int, int]:
        # Remembered: Pillow decodes a whole PNG to find its EXIF orientation.
        if index not in self.sizes:
            self.sizes[index] = self._size(self.paths[index][0])
        return self.sizes[index]

    def _size(self, path):
        if self.cache is not None:
            return self.cache.pixels(path)[0].shape[:2]
        try:
            with Image.open(path) as image:
                # EXIF orientations 5-8 swap the axes once `read_image` applies them.
                transposed = image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
                return (image.width, image.height) if transposed else (image.height, image.width)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error


def realsr(
    root: PathLike,
    scale: int,
    split: str = "Train",
    cameras: Sequence[str] = REALSR_CAMERAS,
    version: int = 2,
    cache: DecodedCache | None = None,
) -> FilePairs:
    """RealSR (Cai et al. 2019) v2 or v3: ``root/{Canon,Nikon}/{Train,Test}/{2,3,4}/<Cam>_<id>_HR.png``
    beside ``_LR{scale}.png``. Version 2 LR images are already at HR size; version 3 ones are smaller
    and are resized with bicubic. Both are read the same way."""
    if version not in (2, 3):
        raise ValueError(f"RealSR version must be 2 or 3, got {version}")
    root = Path(root)
    pairs = []
    for camera in cameras:
        if camera not in REALSR_CAMERAS:
            raise ValueError(f"unknown RealSR camera {camera!r}; choose from {REALSR_CAMERAS}")
        folder = root / camera / split / str(scale)
        if not folder.is_dir():
            raise FileNotFoundError(f"RealSR folder not found: {folder}")
        for hr_path in sorted(folder.glob("*_HR.png")):
            lr_path = hr_path.with_name(hr_path.name.replace("_HR.png", f"_LR{scale}.png"))
            if not lr_path.is_file():
                raise FileNotFoundError(f"RealSR LR image missing for {hr_path}: {lr_path}")
            pairs.append((hr_path, lr_path))
    if not pairs:
        raise ValueError(f"no *_HR.png images under {root} for cameras {list(cameras)}, split {split}, scale {scale}")
    return FilePairs(pairs, cache)


def paired_folder(root: PathLike, cache: DecodedCache | None = None) -> FilePairs:
    """``root/hr/`` and ``root/lr/`` with images matched by file name (the stem; suffixes may differ)."""
    root = Path(root)
    hr_files = list_images(root / "hr")
    lr_by_stem = {path.stem: path for path in list_images(root / "lr")}
    missing = [path.name for path in hr_files if path.stem not in lr_by_stem]
    if missing:
        raise FileNotFoundError(f"no LR image in {root / 'lr'} for: {', '.join(missing[:5])}")
    return FilePairs([(path, lr_by_stem[path.stem]) for path in hr_files], cache)


def skimage_photos(names: Iterable[str]) -> dict[str, np.ndarray]:
    """The named scikit-image photographs as float32 H×W×3 arrays (grey ones repeated to RGB)."""
    import skimage.data

    photos = {}
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"skimage.data has no image {name!r}")
        image = loader()
        image = image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view
        image = np.asarray(image, dtype=np.float32) / 255.0
        photos[name] = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    return photos


def folder_photos(folder: PathLike) -> dict[str, np.ndarray]:
    return {path.stem: read_image(path) for path in list_images(folder)}


class SyntheticPairs:
    """Cross-camera pairs made from photographs by the seeded pipeline of ``ddet.data.degrade``.

    Photos are cropped (top-left) to a multiple of ``scale``. With ``fixed_seed`` every request for
    photo ``i`` returns the same pair (validation); otherwise the caller's generator draws it.
    """

    def __init__(
        self,
        photos: Mapping[str, np.ndarray],
        scale: int,
        spec: Degradation = Degradation(),
        fixed_seed: int | None = None,
    ):
        if not photos:
            raise ValueError("no photographs for synthetic pairs")
        self.names = list(photos)
        self.scale = scale
        self.spec = spec
        self.fixed_seed = fixed_seed
        self.photos = []
        for name, photo in photos.items():
            height, width = photo.shape[0] // scale * scale, photo.shape[1] // scale * scale
            if height == 0 or width == 0:
                raise ValueError(f"photo {name} ({photo.shape[0]}×{photo.shape[1]}) is smaller than the scale {scale}")
            self.photos.append(np.ascontiguousarray(photo[:height, :width]))

    def __len__(self) -> int:
        return len(self.photos)

    def size(self, index: int) -> tuple[int, int]:
        return self.photos[index].shape[:2]

    def pair(
        self, index: int, rng: np.random.Generator | None = None, region: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.fixed_seed is not None:
            rng = np.random.default_rng([self.fixed_seed, index])
        hr = self.photos[index]
        if region is None:
            return degrade(hr, self.scale, rng, self.spec), hr
        # Degrade a margin around the window so blur and misalignment see real neighbours; the margin
        # is a multiple of the scale to keep the down-sampling grid of the window.
        top, left, height, width = region
        margin = -(-12 // self.scale) * self.scale
        y0, x0 = max(0, (top - margin) // self.scale * self.scale), max(0, (left - margin) // self.scale * self.scale)
        y1 = min(hr.shape[0], -(-(top + height + margin) // self.scale) * self.scale)
        x1 = min(hr.shape[1], -(-(left + width + margin) // self.scale) * self.scale)
        lr = degrade(hr[y0:y1, x0:x1], self.scale, rng, self.spec)
        window = (top - y0, left - x0, height, width)
        return _window(lr, window), _window(hr, region)


PairSource = SyntheticPairs | FilePairs
