"""Timing, memory and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

import ddet_ops


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], object],
    device: torch.device,
    *,
    min_repeats: int = 5,
    max_repeats: int = 25,
    budget_s: float = 3.0,
    warmup: int = 1,
) -> float:
    """Median wall time of fn() in seconds: at least min_repeats runs, more while within budget.

    CUDA runs are timed with events on the current stream."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start_all < budget_s):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int = 512 * 2**20) -> float:
    """Bytes per second of a large tensor copy, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), device, min_repeats=7, budget_s=2.0, warmup=2)
    return 2 * nbytes / seconds


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak of live tensor memory above the starting point while fn() runs, in bytes.

    CUDA: the caching allocator's peak. CPU: the peak of the running sum of the allocations and
    frees that torch.profiler records (torch's CPU allocator), plus the peak of ddet_ops' cache of
    freed output blocks, whose blocks the profiler does not see (ddet_ops.cpu_cache_peak_bytes).
    The sum of the two peaks is an upper bound of the true peak, equal to it when both fall at the
    same moment (as for one op call, whose outputs all live to its end). The resident set size
    would not do: glibc keeps freed heap memory, so it shows the history of the process rather
    than what fn() needs."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    ddet_ops.reset_cpu_cache_peak()
    cache_base = ddet_ops.cpu_cache_peak_bytes()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cache_peak = ddet_ops.cpu_cache_peak_bytes() - cache_base
    changes = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak + cache_peak


def machine(device: torch.device) -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": commit,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    stem: str,
    payload: dict[str, object],
    markdown: str,
    out_dir: str | None = None,
    json_path: str | None = None,
    markdown_path: str | None = None,
) -> list[Path]:
    """Writes JSON and markdown as ``out_dir/<stem>.{json,md}`` and/or to the paths given; returns the
    paths written (none when no destination is given: a run writes only where its user asks)."""
    json_file = Path(json_path) if json_path else Path(out_dir) / f"{stem}.json" if out_dir else None
    md_file = Path(markdown_path) if markdown_path else Path(out_dir) / f"{stem}.md" if out_dir else None
    written = []
    for path, text in ((json_file, json.dumps(payload, indent=2) + "\n"), (md_file, markdown + "\n")):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def write_and_print(stem: str, payload: dict[str, object], markdown: str, out_dir: str | None, **paths) -> None:
    """:func:`write_results` (``paths``: its json_path and markdown_path), saying what it wrote,
    then the markdown on the terminal."""
    for path in write_results(stem, payload, markdown, out_dir, **paths):
        print(f"  wrote {path}")
    print(markdown)


def frame_size(text: str) -> tuple[int, int]:
    """An argparse type: "HxW" as (height, width), both at least 1."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x256, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"frame sides must be positive, got {text!r}")
    return height, width
