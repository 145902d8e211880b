"""Where DDet's time goes, and DDet on ddet_ops against the same network on the unfold reference.

* Shares: one profiled forward (eval, no gradients, on the Table III frame) and one profiled
  training step (forward + L1 loss + backward on a 16x1x64x64 batch) of ``ddet``, its operators'
  self time grouped into ``ddet_ops::multi_dynconv*`` (forward, backward and its autograd node),
  convolutions (every ``aten`` convolution, forward and backward, and its autograd nodes) and
  everything else. CPU: self CPU time; CUDA: self device time of the operators that launched
  the kernels.
* DDet on ``ddet_ops`` against DDet on ``ddet_ops.reference.multi_dynconv`` (F.unfold): median
  forward and training-step times, their runs interleaved, and their peak extra memory; the
  same for the MDA stage alone (forward + backward of ``model.apply_kernels`` on the image and
  kernels DDet makes for the training batch), where the operator's own cost shows. The
  reference is swapped in by patching the ``ddet_ops.multi_dynconv`` attribute that
  ``ddet.models`` calls, for the duration of a context manager; ddet's code is untouched. Each
  peak is measured after a warm-up call, as the peak of live tensor memory
  (:func:`benchmarks.common.peak_extra_memory`).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from unittest import mock

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import ddet_ops
from ddet import models
from ddet_ops import reference

from .common import device_slug, machine, markdown_table, median_time, peak_extra_memory
from .table3 import DEFAULT_FRAME, QUICK_FRAME, Frame

MODEL = "ddet"
TRAIN_BATCH = (16, 1, 64, 64)
QUICK_TRAIN_BATCH = (2, 1, 32, 32)
DEFAULT_REPEATS = {"cuda": 20, "cpu": 5}
GROUPS = ("multi_dynconv", "convolution", "rest")
MDA_STAGE = "MDA stage alone, training step"
SHARE_TARGET = 0.05  # multi_dynconv's share of DDet's forward the operator library must stay under
_CONVOLUTION = re.compile(r"conv(olution|\d|_transpose|_depthwise|_dilated)", re.IGNORECASE)


def op_group(name: str) -> str:
    """The group of a profiler event name."""
    if "multi_dynconv" in name:
        return "multi_dynconv"
    if _CONVOLUTION.search(name):
        return "convolution"
    return "rest"


def time_shares(fn: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Self time of one profiled call of ``fn`` (after a warm-up) per group, in seconds, and the total."""
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = dict.fromkeys(GROUPS, 0.0)
    for event in prof.key_averages():
        # Kernel rows repeat the device time already counted on the operator that launched them.
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        self_us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        seconds[op_group(event.key)] += self_us / 1e6
    seconds["total"] = sum(seconds[group] for group in GROUPS)
    return seconds


@contextmanager
def unfold_reference() -> Iterator[None]:
    """DDet on ``ddet_ops.reference.multi_dynconv`` while inside; raises on leaving if the model
    never called it, so that a measurement cannot silently be of ddet_ops twice."""
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return reference.multi_dynconv(*args, **kwargs)

    with mock.patch.object(ddet_ops, "multi_dynconv", counted):
        yield
    if not calls:
        raise RuntimeError(
            "DDet never called ddet_ops.multi_dynconv while it was patched: "
            "benchmarks/breakdown.py's reference swap no longer reaches the model"
        )


IMPLEMENTATIONS: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "ddet_ops": nullcontext,
    "unfold reference": unfold_reference,
}


def _training_pair(device: torch.device, batch: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.rand(batch, generator=gen).to(device) for _ in range(2))


def workloads(device: torch.device, frame: Frame, batch: tuple[int, ...]) -> dict[str, Callable[[], object]]:
    """The two measured calls on one DDet: a forward of the frame and a training step of the batch."""
    torch.manual_seed(0)
    model = models.create(MODEL).to(device)
    image = torch.rand((1, 1, *frame), generator=torch.Generator().manual_seed(0)).to(device)
    lr, hr = _training_pair(device, batch)

    def forward():
        model.eval()
        with torch.no_grad():
            return model(image)

    # Gradients are dropped at the end, not the start, so that a call's peak memory includes them.
    def training_step():
        model.train()
        F.l1_loss(model(lr), hr).backward()
        model.zero_grad(set_to_none=True)

    return {"forward": forward, "training step": training_step}


def mda_stage(device: torch.device, batch: tuple[int, ...]) -> Callable[[], object]:
    """Forward + backward of DDet's MDA stage alone (``model.apply_kernels``) on the revised image
    and the kernels that DDet makes for the training batch: the operator's own cost inside DDet,
    which the whole network's peak may hide."""
    torch.manual_seed(0)
    model = models.create(MODEL).to(device)
    lr, _ = _training_pair(device, batch)
    with torch.no_grad():
        image, kernels = model.revise(lr).requires_grad_(), model.kernels(lr).requires_grad_()
    grad_y = torch.ones_like(image)

    return lambda: torch.autograd.grad(model.apply_kernels(image, kernels), (image, kernels), grad_y)


def interleaved_medians(
    calls: dict[tuple[str, str], tuple[Callable[[], AbstractContextManager[None]], Callable[[], object]]],
    device: torch.device,
    repeats: int,
) -> dict[tuple[str, str], float]:
    """Median seconds of each (implementation, workload) call. The runs are interleaved, one of
    each call in turn, after a first round of warm-ups, so that the load changes of a shared
    machine reach every implementation alike."""
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for round_number in range(repeats + 1):
        for key, (swapped_in, fn) in calls.items():
            with swapped_in():
                seconds = median_time(fn, device, min_repeats=1, max_repeats=1, budget_s=0.0, warmup=0)
            if round_number:
                samples[key].append(seconds)
    return {key: statistics.median(values) for key, values in samples.items()}


def run(
    device: torch.device,
    frame: Frame | None = None,
    *,
    quick: bool = False,
    repeats: int | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, object]:
    frame = tuple(frame or (QUICK_FRAME if quick else DEFAULT_FRAME[device.type]))
    batch = QUICK_TRAIN_BATCH if quick else TRAIN_BATCH
    repeats = repeats or (1 if quick else DEFAULT_REPEATS[device.type])
    start = time.perf_counter()
    progress(
        f"DDet breakdown on {device}: forward on {frame[0]}x{frame[1]}, training step on "
        f"{'x'.join(map(str, batch))}, {repeats} repeats"
    )
    progress("  profiling DDet on ddet_ops ...")
    shares = {name: time_shares(fn, device) for name, fn in workloads(device, frame, batch).items()}
    calls = {
        (impl, name): (swapped_in, fn)
        for impl, swapped_in in IMPLEMENTATIONS.items()
        for name, fn in {**workloads(device, frame, batch), MDA_STAGE: mda_stage(device, batch)}.items()
    }
    progress(f"  timing DDet on {' and on '.join(IMPLEMENTATIONS)}, runs interleaved ...")
    seconds = interleaved_medians(calls, device, repeats)
    progress("  peak memory ...")
    impls: dict[str, dict[str, dict[str, float]]] = {impl: {} for impl in IMPLEMENTATIONS}
    for (impl, name), (swapped_in, fn) in calls.items():
        with swapped_in():
            fn()
            impls[impl][name] = {"seconds": seconds[impl, name], "peak_extra_bytes": peak_extra_memory(fn, device)}
    return {
        "machine": machine(device),
        "settings": {
            "model": MODEL,
            "frame": list(frame),
            "train_batch": list(batch),
            "repeats": repeats,
            "dtype": "float32",
        },
        "wall_seconds": time.perf_counter() - start,
        "shares": shares,
        "impls": impls,
    }


def stem(device: torch.device, payload: dict[str, object]) -> str:
    return f"breakdown-{device_slug(device)}-{payload['machine']['date'][:10]}"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%"


def _mb(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1e6:.0f}"


def markdown(payload: dict[str, object]) -> str:
    info, settings = payload["machine"], payload["settings"]
    who = info.get("gpu", info["cpu"])
    unit = "self device time" if info["device"].startswith("cuda") else "self CPU time"
    share_rows = [
        [name, f"{s['total'] * 1e3:.1f}", *(_percent(s[group], s["total"]) for group in GROUPS)]
        for name, s in payload["shares"].items()
    ]
    ours, peer = payload["impls"]["ddet_ops"], payload["impls"]["unfold reference"]
    peer_rows = []
    for name in ours:
        a, b = ours[name], peer[name]
        # A zero peak (memory the allocator already held) has no meaningful ratio.
        both_peaks = bool(a["peak_extra_bytes"]) and b["peak_extra_bytes"] is not None
        peer_rows.append(
            [
                name,
                f"{a['seconds'] * 1e3:.1f}",
                f"{b['seconds'] * 1e3:.1f}",
                f"{b['seconds'] / a['seconds']:.2f}x",
                _mb(a["peak_extra_bytes"]),
                _mb(b["peak_extra_bytes"]),
                f"{b['peak_extra_bytes'] / a['peak_extra_bytes']:.2f}x" if both_peaks else "n/a",
            ]
        )
    forward_share = payload["shares"]["forward"]["multi_dynconv"] / payload["shares"]["forward"]["total"]
    frame, batch = "x".join(map(str, settings["frame"])), "x".join(map(str, settings["train_batch"]))
    return "\n".join(
        [
            f"DDet (`{settings['model']}`) breakdown on {who} ({info['device']}, {info['torch_threads']} threads), "
            f"torch {info['torch']}, commit {info['commit']}, {info['date']}. "
            f"Whole run: {payload['wall_seconds']:.0f} s.",
            f"Forward: eval, no gradients, 1x1x{frame}. Training step: forward + L1 loss + backward on {batch}. "
            f"float32; times are medians of {settings['repeats']} run(s) after a warm-up, "
            "the two implementations' runs interleaved.",
            "",
            f"Share of one profiled call ({unit} of the operators, grouped by name):",
            "",
            markdown_table(["workload", "profiled ms", "multi_dynconv", "convolutions", "rest"], share_rows),
            "",
            f"multi_dynconv is {100 * forward_share:.2f}% of DDet's forward "
            f"({'within' if forward_share <= SHARE_TARGET else 'OVER'} the {100 * SHARE_TARGET:.0f}% target).",
            "",
            "DDet on ddet_ops against the same network on ddet_ops.reference.multi_dynconv (F.unfold), swapped in by "
            "patching the `ddet_ops.multi_dynconv` attribute the model calls. Peak: extra memory while the call runs "
            "(peak of live tensor memory: CUDA allocator statistics, CPU torch.profiler memory events plus the peak "
            "of ddet_ops' block cache). "
            "'x' columns: reference / ddet_ops.",
            "",
            markdown_table(
                [
                    "workload",
                    "ddet_ops ms",
                    "reference ms",
                    "time x",
                    "ddet_ops peak MB",
                    "reference peak MB",
                    "peak x",
                ],
                peer_rows,
            ),
        ]
    )
