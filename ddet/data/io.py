"""Image files ↔ float32 H×W×3 arrays in [0, 1], with Pillow.

8- and 16-bit PNG, JPEG and the other formats Pillow opens; EXIF orientation applied; grey images
repeated to three channels, alpha dropped. Pillow decodes 16-bit colour PNGs at 8 bits, so those
are decoded by ``ddet.data.png16`` at full precision.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import resource
except ImportError:  # not on Windows
    resource = None

from ddet.data.png16 import read_png16
from ddet.files import PathLike, atomic_write

ORIENTATION_TAG = 0x0112
# EXIF orientation → the array operation that displays the image upright (as ImageOps.exif_transpose).
EXIF_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: PathLike) -> np.ndarray:
    """The image file as float32 H×W×3 in [0, 1]."""
    pixels, peak = read_integer_image(path)
    return pixels.astype(np.float32) / peak


def read_integer_image(path: PathLike) -> tuple[np.ndarray, float]:
    """(H×W×3 integer array as stored — uint8, or uint16 for 16-bit files —, its peak value 255 or
    65535), EXIF orientation applied; a ValueError naming the file when it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            _refuse_beyond_memory(image, path)
            if _is_png16_colour(image):
                deep = read_png16(path.read_bytes())
                if deep is not None:
                    oriented = EXIF_ORIENTATIONS.get(image.getexif().get(ORIENTATION_TAG, 1), lambda a: a)(deep)
                    return np.ascontiguousarray(oriented[..., :3], dtype=np.uint16), 65535.0
            image = ImageOps.exif_transpose(image)
            if image.mode == "F":
                raise ValueError("floating-point pixels (mode F) are not supported: save it with 8 or 16 bits")
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                grey = np.asarray(image)
                if grey.min() < 0 or grey.max() > 65535:
                    raise ValueError(
                        f"32-bit pixels from {grey.min()} to {grey.max()}: only 8 and 16 bits are supported"
                    )
                return np.repeat(grey.astype(np.uint16)[..., None], 3, axis=2), 65535.0
            return np.asarray(image.convert("RGB")), 255.0
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as error:
        raise ValueError(f"refusing to decode image {path}: {error}") from None
    except MemoryError:
        raise ValueError(f"not enough memory to decode image {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def _is_png16_colour(image):
    """A 16-bit colour PNG, which Pillow would decode at 8 bits."""
    return (
        image.format == "PNG"
        and image.mode in ("RGB", "RGBA")
        and bool(image.tile)
        and image.tile[0][3].endswith(";16B")
    )


class ImageTooLarge(ValueError):
    """An image whose decoded pixels would not fit in memory."""


def _describe(size):
    width, height = size
    return f"{width}×{height}, {width * height / 1e6:.1f} megapixels"


def _refuse_beyond_memory(image, path):
    """Refuse, before decoding, an image whose pixels would not fit in the memory this process may
    still use: a small compressed file can expand a thousandfold."""
    width, height = image.size
    sample_bytes = 2 if image.mode.startswith("I") or _is_png16_colour(image) else 1
    needed = width * height * 3 * (sample_bytes + 4)  # the stored samples, then read_image's float32 copy
    available = available_memory()
    if needed > available:
        raise ImageTooLarge(
            f"image {path} is {_describe(image.size)}: decoding it needs about {needed / 1e9:.2f} GB, "
            f"more than the {available / 1e9:.2f} GB of memory available"
        )


def available_memory() -> float:
    """Bytes this process can still allocate: the system's available memory, or less under an
    address-space limit (ulimit -v); unbounded where neither can be read."""
    limits = [_proc_field("/proc/meminfo", "MemAvailable:")]
    if resource is not None:
        soft_limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft_limit != resource.RLIM_INFINITY:
            limits.append(max(0.0, soft_limit - _proc_field("/proc/self/status", "VmSize:", missing=0.0)))
    return min(limits)


def _proc_field(path, field, missing=math.inf):
    """A kB figure of a /proc file in bytes, or ``missing`` where there is none (not Linux)."""
    try:
        return int(Path(path).read_text().split(field)[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return missing


def list_images(folder: PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def to_pil(image: np.ndarray) -> Image.Image:
    """float H×W×3 (or H×W) in [0, 1] → 8-bit Pillow image (rounded, clipped); uint8 as it is."""
    if image.dtype == np.uint8:
        return Image.fromarray(image)
    return Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))


def write_image(path: PathLike, image: np.ndarray, force: bool = False, quality: int = 95) -> None:
    """Write float H×W×3 in [0, 1] (or uint8) as an 8-bit image, format from the suffix, atomically.

    Refuses to replace an existing file unless ``force``.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (pass --force / force=True to overwrite)")
    image_format = writable_format(path)
    pil = to_pil(image)
    options = {"quality": quality} if image_format == "JPEG" else {}
    atomic_write(path, lambda handle: pil.save(handle, format=image_format, **options))


def writable_format(path: PathLike) -> str:
    """Pillow's format for the suffix of ``path``, or a ValueError naming the path."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format not in Image.SAVE:
        raise ValueError(
            f"cannot tell an image format Pillow writes from the suffix of {path} (use .png, .jpg, .tif, .webp, ...)"
        )
    return image_format
