"""A training step in bfloat16 autocast with the kernel heads' bfloat16 output read by the op as it
is, against the same step with the kernels first cast to the image's float32 (what the models had
to do while the op refused mixed dtypes), and the float32 step, in one run with the repeats of the
three taken in turns.

    python benchmarks/bench_autocast.py                  # DDet, 16 patches of 64x64, channels_last
    python benchmarks/bench_autocast.py --model kpn19 --out DIR   # also DIR/autocast-<device>-<date>.{json,md}

Autocast pays off only where the CPU multiplies bfloat16 in hardware (AMX, AVX-512 BF16); the
comparison that matters here is the first two rows, which differ only in the cast.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after site-packages: the installed packages win

from benchmarks.common import machine, markdown_table, synchronize, write_and_print  # noqa: E402
from ddet.models import create  # noqa: E402
from ddet.run import Objective  # noqa: E402

SETTINGS = {
    "bf16 autocast, kernels read as they are": (torch.bfloat16, False),
    "bf16 autocast, kernels cast to float32 first": (torch.bfloat16, True),
    "float32": (None, False),
}


def training_step(name: str, cast_kernels: bool, amp: torch.dtype | None, batch: int, patch: int, device):
    """A closure running one optimiser step of ``name`` on fixed random patches."""
    torch.manual_seed(0)
    model = create(name).to(device, memory_format=torch.channels_last)
    if cast_kernels:
        plain = type(model).apply_kernels
        model.apply_kernels = lambda image, kernels: plain(model, image, kernels.to(image.dtype))
    objective = Objective(model, "l1")
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    lr, hr = (
        torch.rand(batch, 1, patch, patch, device=device).contiguous(memory_format=torch.channels_last) for _ in "ab"
    )

    def step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = objective(lr, hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ddet")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="write the JSON and markdown results into this folder")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    steps = {
        label: training_step(args.model, cast, amp, args.batch, args.patch, device)
        for label, (amp, cast) in SETTINGS.items()
    }
    times = {label: [] for label in steps}
    for step in steps.values():  # warm-up: first-call allocations and kernel selection
        step()
    for _ in range(args.repeats):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(t) for label, t in times.items()}
    base = medians["bf16 autocast, kernels cast to float32 first"]
    rows = [[label, f"{m * 1e3:.0f}", f"{m / base:.2f}"] for label, m in medians.items()]
    info = machine(device)
    markdown = (
        f"# A {args.model} training step, {args.batch} patches of {args.patch}x{args.patch}, channels_last "
        f"({info['device']})\n\nMedians of {args.repeats} steps of each setting, taken in turns; "
        f"'vs cast' = time / the cast-first step's.\n\n"
        + markdown_table(["setting", "ms per step", "vs cast"], rows)
        + f"\n\nMachine: {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
        f"commit {info['commit']}, {info['date']}\n"
    )
    payload = {"machine": info, "args": vars(args), "seconds": times, "median_seconds": medians}
    write_and_print(f"autocast-{args.device}-{info['date'][:10]}", payload, markdown, args.out)


if __name__ == "__main__":
    main()
