"""The cache of freed CPU output blocks.

Large CPU outputs of the ops (from 4 MB: the kernel gradients above all) are not returned to the
system when their tensors die but kept for the next call of the same size, as the CUDA caching
allocator does: fresh memory costs a page fault and a zeroing per page on first touch, which a
reused block skips. The cache holds at
most ``DDET_OPS_CPU_CACHE_MB`` megabytes (default 2048; 0 turns it off), read at the first large
allocation.

The blocks are wrapped as tensors with a deleter of their own (the LibTorch stable ABI has no
allocator interface), so torch.profiler's memory events do not see them: the cache counts the
bytes of its blocks in use itself, and keeps their high-water mark (:func:`cpu_cache_peak_bytes`).
"""

from __future__ import annotations

import torch

__all__ = ["empty_cpu_cache", "cpu_cache_bytes", "cpu_cache_peak_bytes", "reset_cpu_cache_peak"]


def empty_cpu_cache() -> None:
    """Returns every cached CPU block to the system (tensors in use are not affected)."""
    torch.ops.ddet_ops.empty_cpu_cache()


def cpu_cache_bytes() -> int:
    """Bytes held by the cache of freed CPU output blocks."""
    return int(torch.ops.ddet_ops.cpu_cache_bytes())


def cpu_cache_peak_bytes() -> int:
    """Most bytes of cached blocks in use by live tensors at once since the last
    :func:`reset_cpu_cache_peak` (or since the process started)."""
    return int(torch.ops.ddet_ops.cpu_cache_peak_bytes())


def reset_cpu_cache_peak() -> None:
    """Starts :func:`cpu_cache_peak_bytes` again from the bytes in use now."""
    torch.ops.ddet_ops.reset_cpu_cache_peak()
