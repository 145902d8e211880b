"""Loads the compiled kernels, or explains in one sentence how to get them."""

from __future__ import annotations

import torch

_REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


def load() -> None:
    """Import ``ddet_ops._C`` (which registers the ``torch.ops.ddet_ops`` kernels).

    The extension is C++ compiled against one torch build; another torch at run time shows up
    as undefined symbols, so both cases are turned into an ImportError naming the fix.
    """
    try:
        from . import _build_info
    except ImportError:
        raise ImportError(
            "ddet_ops: the compiled extension is missing (ddet_ops was not built). "
            f"From the ddet source folder run: {_REBUILD}"
        ) from None
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"ddet_ops was compiled against torch {_build_info.TORCH_VERSION}, but torch "
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


def cuda_compiled() -> bool:
    """Whether this build of the extension holds CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("ddet_ops::multi_dynconv", "CUDA")


def cuda_kernels() -> str:
    """The CUDA kernel version this process runs: ``"v2"`` (the default) or ``"v1"``, chosen by
    the environment variable ``DDET_OPS_CUDA_KERNELS`` when the first op call reads it (any other
    value is refused there). v1 is the first design, kept to be timed against v2."""
    return str(torch.ops.ddet_ops.cuda_kernels())
