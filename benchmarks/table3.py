"""The paper's Table III on this machine: time per frame and parameters of every network of the
paper's comparison, beside the paper's own figures.

Each model runs forward in eval mode without gradients on one Y-channel frame (the ×3 networks
work at HR size: the LR image is resized to the HR frame first). Its time is the median of
``repeats`` runs after a warm-up (CUDA: timed with events). A model whose full-frame runs would
not fit ``budget_s`` is measured on a smaller frame and its row is marked; it is never left out.
The frame is chosen from a probe: the faster of two runs on a small frame, after a first run that
pays the one-time costs. Parameters are float32 bytes / 10^6, Table III's unit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from ddet import models

from . import paper
from .common import device_slug, machine, markdown_table, median_time

Frame = tuple[int, int]


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table III (from benchmarks/paper.py); ``None`` where the paper has no figure."""

    label: str
    mb: float
    seconds_per_frame: float | None = None
    psnr_x3: float | None = None
    note: str = ""


PAPER_SOURCE = f"{paper.SOURCE}, Table III"
_NOTES = {
    "rcan": "published configuration; no configuration of its code gives Table III's MB",
    "edrn": "published configuration; no configuration of its code gives Table III's MB",
}
PAPER_TABLE3: dict[str, PaperRow] = {
    name: PaperRow(row.label, row.mb, row.seconds_per_frame, row.psnr_x3, _NOTES.get(name, ""))
    for name, row in paper.TABLE3.items()
}
PAPER_TABLE3["ddet-released"] = PaperRow(
    "DDet (released x3)",
    5.7,
    note="released x3/x4 layout, not a row of Table III; its 5.7 MB is the x2 file (feature_width=64: 5.72 MB)",
)
# Models whose architecture is the paper's own: their MB must be within 3% of Table III.
PAPER_ARCHITECTURES = ("srresnet", "edsr", "kpn5", "kpn7", "kpn13", "kpn19", "lpkpn", "ddet")
MB_TOLERANCE = 0.03
PAPER_FRAME: Frame = (1000, 1000)  # the size of the released networks' inputs

DEFAULT_FRAME = {"cuda": PAPER_FRAME, "cpu": (256, 256)}
QUICK_FRAME: Frame = (32, 32)
DEFAULT_REPEATS = {"cuda": 10, "cpu": 3}
DEFAULT_BUDGET_S = {"cuda": 60.0, "cpu": 15.0}  # per model; 11 CPU models then fit in 5 minutes
# A GPU needs a frame large enough to be busy, or its launch overhead, extrapolated per pixel,
# would push models onto reduced frames they do not need.
PROBE_FRAME: dict[str, Frame] = {"cuda": (256, 256), "cpu": (32, 32)}
FRAME_MULTIPLE = 16
AUTOCAST_DTYPES = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def frame_within_budget(frame: Frame, probe_frame: Frame, probe_seconds: float, runs: int, budget_s: float) -> Frame:
    """The frame to measure on: ``frame`` if ``runs`` forwards of it fit ``budget_s`` at the probe's
    time per pixel (a convolutional network's time is linear in the pixels), else the largest frame
    of the same aspect, in steps of FRAME_MULTIPLE, predicted to fit."""
    predicted = probe_seconds / (probe_frame[0] * probe_frame[1]) * frame[0] * frame[1] * runs
    if predicted <= budget_s:
        return frame
    scale = math.sqrt(budget_s / predicted)
    return tuple(min(side, max(FRAME_MULTIPLE, int(side * scale) // FRAME_MULTIPLE * FRAME_MULTIPLE)) for side in frame)


def _forward(model: torch.nn.Module, device: torch.device, dtype: str) -> Callable[[torch.Tensor], torch.Tensor]:
    autocast_dtype = AUTOCAST_DTYPES[dtype]

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(x)

    return run


def _frame(channels: int, frame: Frame, device: torch.device, channels_last: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, channels, *frame), generator=gen).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _seconds_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_model(
    name: str,
    device: torch.device,
    frame: Frame,
    *,
    dtype: str = "float32",
    channels_last: bool = False,
    repeats: int = 3,
    budget_s: float = 15.0,
) -> dict[str, object]:
    """Times ``name`` and returns its row: ours, the paper's, and how they compare."""
    model = models.create(name).eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = _forward(model, device, dtype)
    probe_frame = tuple(min(side, probe_side) for side, probe_side in zip(frame, PROBE_FRAME[device.type], strict=True))
    probe = _frame(model.in_channels, probe_frame, device, channels_last)
    forward(probe)  # the first call pays one-time costs (oneDNN primitives, cuDNN plans, allocations)
    # The faster of two runs: on a shared machine one run can be several times slower than usual.
    probe_seconds = min(_seconds_once(lambda: forward(probe), device) for _ in range(2))
    used = frame_within_budget(frame, probe_frame, probe_seconds, repeats + 1, budget_s)
    x = probe if used == probe_frame else _frame(model.in_channels, used, device, channels_last)
    # The probe run already warmed up a model measured on the probe's own frame.
    seconds = median_time(
        lambda: forward(x),
        device,
        min_repeats=repeats,
        max_repeats=repeats,
        budget_s=0.0,
        warmup=0 if used == probe_frame else 1,
    )
    per_mpixel = seconds / (used[0] * used[1]) * 1e6
    mb = models.size_mb(model)
    paper = PAPER_TABLE3.get(name)
    at_paper_frame = per_mpixel * PAPER_FRAME[0] * PAPER_FRAME[1] / 1e6
    return {
        "model": name,
        "frame": list(used),
        "reduced_frame": tuple(used) != tuple(frame),
        "seconds_per_frame": seconds,
        "seconds_per_mpixel": per_mpixel,
        "seconds_at_paper_frame": at_paper_frame,
        "mb": mb,
        "paper": asdict(paper) if paper else None,
        "mb_deviation": (mb / paper.mb - 1) if paper else None,
        "paper_architecture": name in PAPER_ARCHITECTURES,
        "time_vs_paper": (at_paper_frame / paper.seconds_per_frame) if paper and paper.seconds_per_frame else None,
    }


def _or_na(value: float | None, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    return "n/a" if value is None else format(value * scale, fmt) + suffix


HEADERS = [
    "model",
    "frame",
    "ms / frame",
    "ms / Mpixel",
    "MB",
    "paper MB",
    "MB vs paper",
    "paper s / frame",
    "ours / paper time",
    "paper x3 PSNR (dB)",
]


def table_rows(rows: Sequence[dict[str, object]]) -> list[list[object]]:
    out = []
    for row in rows:
        paper = row["paper"] or {}
        frame = "x".join(map(str, row["frame"])) + (" (reduced)" if row["reduced_frame"] else "")
        out.append(
            [
                paper.get("label", row["model"]) + f" (`{row['model']}`)",
                frame,
                f"{row['seconds_per_frame'] * 1e3:.1f}",
                f"{row['seconds_per_mpixel'] * 1e3:.0f}",
                f"{row['mb']:.2f}",
                _or_na(paper.get("mb"), ".1f"),
                _or_na(row["mb_deviation"], "+.1f", 100, "%"),
                _or_na(paper.get("seconds_per_frame"), ".3f"),
                _or_na(row["time_vs_paper"], ".2f"),
                _or_na(paper.get("psnr_x3"), ".2f"),
            ]
        )
    return out


def markdown(payload: dict[str, object]) -> str:
    info, settings = payload["machine"], payload["settings"]
    who = info.get("gpu", info["cpu"])
    frame = "x".join(map(str, settings["frame"]))
    notes = [
        f"- `{row['model']}`: {row['paper']['note']}"
        for row in payload["rows"]
        if row["paper"] and row["paper"]["note"]
    ]
    if any(row["reduced_frame"] for row in payload["rows"]):
        notes.append(
            f"- (reduced): {settings['repeats'] + 1} full-frame runs would not fit the per-model budget of "
            f"{settings['budget_s']:.0f} s, so the model ran on the largest frame predicted to fit; "
            "compare rows by ms / Mpixel."
        )
    return "\n".join(
        [
            f"Table III on {who} ({info['device']}, {info['torch_threads']} threads), torch {info['torch']}, "
            f"commit {info['commit']}, {info['date']}.",
            f"Frame {frame} (Y, 1 channel), {settings['dtype']}"
            f"{', channels_last' if settings['channels_last'] else ''}; "
            f"forward in eval mode without gradients, median of {settings['repeats']} run(s) after a warm-up. "
            f"Whole run: {payload['wall_seconds']:.0f} s.",
            f"Paper figures: {PAPER_SOURCE} (n/a: not a row of the paper's table). The paper names neither its GPU "
            f"nor its frame size; 'ours / paper time' scales our time per pixel to a {PAPER_FRAME[0]}x{PAPER_FRAME[1]} "
            "frame, the input size of the authors' released networks.",
            *notes,
            "",
            markdown_table(HEADERS, table_rows(payload["rows"])),
        ]
    )


def run(
    device: torch.device,
    names: Sequence[str] | None = None,
    frame: Frame | None = None,
    *,
    dtype: str = "float32",
    channels_last: bool = False,
    repeats: int | None = None,
    budget_s: float | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, object]:
    """Measures every model of ``names`` (default: the paper's Table III) and returns the results."""
    names = list(names or PAPER_TABLE3)
    frame = tuple(frame or DEFAULT_FRAME[device.type])
    repeats = repeats or DEFAULT_REPEATS[device.type]
    budget_s = budget_s or DEFAULT_BUDGET_S[device.type]
    progress(
        f"Table III on {device}: frame {frame[0]}x{frame[1]}, {dtype}, {repeats} repeats, "
        f"budget {budget_s:.0f} s per model"
    )
    start = time.perf_counter()
    rows = []
    for name in names:
        rows.append(
            measure_model(
                name, device, frame, dtype=dtype, channels_last=channels_last, repeats=repeats, budget_s=budget_s
            )
        )
        used = "x".join(map(str, rows[-1]["frame"]))
        progress(f"  {name}: {rows[-1]['seconds_per_frame'] * 1e3:.1f} ms on {used}")
    return {
        "machine": machine(device),
        "settings": {
            "frame": list(frame),
            "dtype": dtype,
            "channels_last": channels_last,
            "repeats": repeats,
            "budget_s": budget_s,
            "paper_frame": list(PAPER_FRAME),
            "paper_source": PAPER_SOURCE,
        },
        "wall_seconds": time.perf_counter() - start,
        "rows": rows,
    }


def stem(device: torch.device, payload: dict[str, object]) -> str:
    settings = payload["settings"]
    variant = "" if settings["dtype"] == "float32" else f"-{settings['dtype']}"
    variant += "-channels-last" if settings["channels_last"] else ""
    return f"table3-{device_slug(device)}{variant}-{payload['machine']['date'][:10]}"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from None


def plot(payload: dict[str, object], path: str) -> None:
    """PNG of time per frame (scaled to the paper's frame) against parameters, with the paper's
    points where it gives a time: the trade-off of the paper's figure."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    with_paper_time = [row["paper"] for row in rows if row["paper"] and row["paper"]["seconds_per_frame"]]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(
        [row["mb"] for row in rows], [row["seconds_at_paper_frame"] for row in rows], color="tab:blue", label="ours"
    )
    for row in rows:
        ax.annotate(
            row["model"],
            (row["mb"], row["seconds_at_paper_frame"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    if with_paper_time:
        ax.scatter(
            [p["mb"] for p in with_paper_time],
            [p["seconds_per_frame"] for p in with_paper_time],
            facecolors="none",
            edgecolors="tab:red",
            label="paper",
        )
    ax.legend()
    info = payload["machine"]
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="parameters (MB, float32)",
        ylabel=f"seconds per {PAPER_FRAME[0]}x{PAPER_FRAME[1]} frame (from time per pixel)",
        title=f"Table III trade-off on {info.get('gpu', info['cpu'])} ({payload['settings']['dtype']})",
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
