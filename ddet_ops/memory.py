"""The cache of freed CPU output blocks.

Large CPU outputs of the ops (from 4 MB: the kernel gradients above all) are not returned to the
system when their tensors die but kept for the next call of the same size, as the CUDA caching
allocator does: fresh memory costs a page fault and a zeroing per page on first touch, which a
reused block skips. The cache holds at
most ``DDET_OPS_CPU_CACHE_MB`` megabytes (default 2048; 0 turns it off), read at the first large
allocation.
"""

from __future__ import annotations

import torch

__all__ = ["empty_cpu_cache", "cpu_cache_bytes"]


def empty_cpu_cache() -> None:
    """Returns every cached CPU block to the system (tensors in use are not affected)."""
    torch.ops.ddet_ops.empty_cpu_cache()


def cpu_cache_bytes() -> int:
    """Bytes held by the cache of freed CPU output blocks."""
    return int(torch.ops.ddet_ops.cpu_cache_bytes())
