"""ddet_ops: fused per-pixel dynamic convolution for PyTorch, on the CPU and CUDA.

>>> from ddet_ops import multi_dynconv
>>> y = multi_dynconv(x, [k3, k5, k7])              # one kernel tensor per size
>>> y = multi_dynconv(x, packed, sizes=(3, 5, 7))    # or one packed tensor
"""

from ._extension import cuda_compiled, cuda_kernels
from ._extension import load as _load

_load(__path__)

from . import reference  # noqa: E402
from .memory import cpu_cache_bytes, cpu_cache_peak_bytes, empty_cpu_cache, reset_cpu_cache_peak  # noqa: E402
from .modules import MultiDynConv  # noqa: E402
from .ops import dynconv, multi_dynconv  # noqa: E402

__all__ = [
    "multi_dynconv",
    "dynconv",
    "MultiDynConv",
    "reference",
    "cuda_compiled",
    "cuda_kernels",
    "empty_cpu_cache",
    "cpu_cache_bytes",
    "cpu_cache_peak_bytes",
    "reset_cpu_cache_peak",
]
__version__ = "0.1.0"
