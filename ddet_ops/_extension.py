"""Loads the compiled kernels, or explains in one sentence how to get them."""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

import torch

_REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."
# The text python_module.cpp keeps in the library, followed by the torch version and a NUL byte.
_BUILT_AGAINST = b"ddet_ops built against torch "


def load(package_path: list[str]) -> None:
    """Import ``ddet_ops._C`` (which registers the ``torch.ops.ddet_ops`` kernels).

    ``package_path`` is the package's ``__path__``. Run from a source folder whose package was
    installed without ``-e``, the folder shadows the installed package and holds no compiled
    library: the installed one is then found on ``sys.path`` and used.
    The extension is C++ compiled against one torch build, recorded inside the library; it is
    checked before loading, since under another torch loading fails with undefined symbols.
    """
    library = _find_library(package_path)
    if library is None:
        raise ImportError(
            "ddet_ops: the compiled extension is missing (ddet_ops was not built). "
            f"From the ddet source folder run: {_REBUILD}"
        )
    built_against = _built_against(library)
    if built_against != torch.__version__:
        raise ImportError(
            f"ddet_ops: {library} was compiled against torch {built_against}, but torch "
            f"{torch.__version__} is installed. Rebuild it against this torch: from the ddet "
            f"source folder run: {_REBUILD}"
        )
    try:
        from . import _C  # noqa: F401  (importing registers the ops)
    except ImportError as error:
        raise ImportError(
            f"ddet_ops: the compiled extension failed to load ({error}). "
            f"Rebuild it against the installed torch {torch.__version__}: from the ddet source "
            f"folder run: {_REBUILD}"
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


def _built_against(library: Path) -> str:
    data = library.read_bytes()
    start = data.find(_BUILT_AGAINST)
    if start < 0:
        return "an unknown version"
    start += len(_BUILT_AGAINST)
    return data[start : data.index(b"\0", start)].decode()


def cuda_compiled() -> bool:
    """Whether this build of the extension holds CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("ddet_ops::multi_dynconv", "CUDA")


def cuda_kernels() -> str:
    """The CUDA kernel version this process runs: ``"v2"`` (the default) or ``"v1"``, chosen by
    the environment variable ``DDET_OPS_CUDA_KERNELS`` when the first op call reads it (any other
    value is refused there). v1 is the first design, kept to be timed against v2."""
    return str(torch.ops.ddet_ops.cuda_kernels())
