"""Loads the compiled kernels, or explains in one sentence how to get them."""

from __future__ import annotations

import importlib.machinery
import re
import sys
from pathlib import Path

import torch

_REBUILD = "pip install --force-reinstall --no-deps ."
# The text python_module.cpp keeps in the library: "<prefix><built against> for torch >= <minimum>",
# then a NUL byte.
_BUILT_AGAINST = b"ddet_ops built against torch "
_FOR_TORCH = " for torch >= "


def load(package_path: list[str]) -> None:
    """Import ``ddet_ops._C`` (which registers the ``torch.ops.ddet_ops`` kernels).

    ``package_path`` is the package's ``__path__``. Run from a source folder whose package was
    installed without ``-e``, the folder shadows the installed package and holds no compiled
    library: the installed one is then found on ``sys.path`` and used.
    The extension uses only the LibTorch stable ABI: built against any torch, it runs under
    every torch from the minimum it was built for (both versions are recorded inside the
    library). The minimum is checked before loading, since under an older torch loading fails
    with undefined symbols.
    """
    library = _find_library(package_path)
    if library is None:
        raise ImportError(
            "ddet_ops: the compiled extension is missing (ddet_ops was not built). "
            f"From the ddet source folder run: {_REBUILD}"
        )
    built_against, minimum = _built_for(library)
    if minimum is None:
        raise ImportError(
            f"ddet_ops: {library} was compiled against torch {built_against} without the stable ABI, so it "
            f"runs under that torch only (and a rebuild, named _C.abi3.so, would not replace it). Remove it "
            f"and rebuild: from the ddet source folder run: rm {library} && {_REBUILD}"
        )
    if _release(torch.__version__) < _release(minimum):
        raise ImportError(
            f"ddet_ops: {library} was compiled against torch {built_against} for torch >= {minimum}, but "
            f"torch {torch.__version__} is installed. Install torch >= {minimum}: pip install 'torch>={minimum}'"
        )
    try:
        from . import _C  # noqa: F401  (importing registers the ops)
    except ImportError as error:
        raise ImportError(
            f"ddet_ops: the compiled extension failed to load under torch {torch.__version__} ({error}). "
            f"Rebuild it: from the ddet source folder run: {_REBUILD}"
        ) from None


def _find_library(package_path: list[str]) -> Path | None:
    """The compiled ``_C`` of this package, else of an installed copy it shadows (whose folder is
    then added to ``package_path`` so that ``from . import _C`` finds it)."""
    own = [Path(folder) for folder in package_path]
    folders = own + [Path(entry or ".") / "ddet_ops" for entry in sys.path]
    for folder in folders:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            library = folder / f"_C{suffix}"
            if library.is_file():
                if folder not in own:
                    package_path.append(str(folder))
                return library
    return None


def _built_for(library: Path) -> tuple[str, str | None]:
    """The torch the library was compiled against and the oldest torch it runs under (None when
    the library does not say: it was not built with the stable ABI)."""
    data = library.read_bytes()
    start = data.find(_BUILT_AGAINST)
    if start < 0:
        return "an unknown version", None
    start += len(_BUILT_AGAINST)
    built_against, _, minimum = data[start : data.index(b"\0", start)].decode().partition(_FOR_TORCH)
    return built_against, minimum or None


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version such as "2.13.0+cpu"."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def cuda_compiled() -> bool:
    """Whether this build of the extension holds CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("ddet_ops::multi_dynconv", "CUDA")


def cuda_kernels() -> str:
    """The CUDA kernel version this process runs: ``"v2"`` (the default) or ``"v1"``, chosen by
    the environment variable ``DDET_OPS_CUDA_KERNELS`` when the first op call reads it (any other
    value is refused there). v1 is the first design, kept to be timed against v2."""
    return str(torch.ops.ddet_ops.cuda_kernels())
