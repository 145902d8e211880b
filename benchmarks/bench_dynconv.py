"""Benchmarks of the paper's Table III, of DDet's time breakdown and of the ddet_ops operator.

    python benchmarks/bench_dynconv.py                       # Table III: time per frame, MB, the paper's figures
    python benchmarks/bench_dynconv.py --device cuda         # ... on a 1000x1000 frame, the paper's size
    python benchmarks/bench_dynconv.py --frame 512x512 --models ddet kpn5 --plot table3.png
    python benchmarks/bench_dynconv.py --breakdown           # DDet's time shares; ddet_ops vs the unfold reference
    python benchmarks/bench_dynconv.py --ops                 # operator vs bandwidth floor and peers

The markdown table is printed last. --out DIR also writes <kind>-<device>-<date>.{json,md} into DIR
(--json/--markdown: exact paths); the project's committed results are made with
--out benchmarks/results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Appended, not prepended: an installed ddet_ops (with its compiled kernels) must win over the
# source folder of the same name in the repository root.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import breakdown, ops, table3  # noqa: E402
from benchmarks.common import frame_size, write_and_print  # noqa: E402
from ddet import models  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--breakdown", action="store_true", help="DDet's time breakdown instead of Table III")
    mode.add_argument("--ops", action="store_true", help="the operator benchmark instead of Table III")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    cuda_frame, cpu_frame = ("x".join(map(str, table3.DEFAULT_FRAME[kind])) for kind in ("cuda", "cpu"))
    parser.add_argument(
        "--frame",
        type=frame_size,
        help=f"HxW of Table III's frame and of the breakdown's forward "
        f"(default: {cuda_frame} on CUDA, {cpu_frame} on the CPU)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        choices=models.names(),
        help="Table III models to run (default: the paper's table)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=list(table3.AUTOCAST_DTYPES),
        help="Table III precision: float32, or bf16/fp16 autocast (CUDA, or CPUs with "
        "AVX-512 BF16/AMX, elsewhere emulated and slow)",
    )
    parser.add_argument("--channels-last", action="store_true", help="Table III in channels_last memory format")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default: device-dependent)")
    parser.add_argument(
        "--budget",
        type=float,
        help="Table III seconds per model, beyond which it runs on a smaller frame "
        f"(default: {table3.DEFAULT_BUDGET_S['cpu']:.0f} on the CPU, "
        f"{table3.DEFAULT_BUDGET_S['cuda']:.0f} on CUDA)",
    )
    parser.add_argument("--plot", help="PNG of Table III's time per frame against parameters (needs matplotlib)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of torch (default: torch's own; --quick: 1). On a machine shared with "
        "busy processes, fewer threads than cores avoid waiting on descheduled ones",
    )
    parser.add_argument("--quick", action="store_true", help="tiny frame, one repeat, one thread: for the test suite")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["unfold", "compiled"],
        help="peers to leave out of the operator benchmark",
    )
    parser.add_argument("--out", metavar="DIR", help="write the JSON and markdown results into this folder")
    parser.add_argument("--json", help="write the JSON results to this file")
    parser.add_argument("--markdown", help="write the markdown results to this file")
    args = parser.parse_args(argv)
    for flag in ("repeats", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.plot and (args.breakdown or args.ops):
        parser.error("--plot draws Table III; leave out --breakdown/--ops")
    return args


def save_and_print(stem: str, payload: dict, markdown: str, args: argparse.Namespace) -> None:
    write_and_print(stem, payload, markdown, args.out, json_path=args.json, markdown_path=args.markdown)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_dynconv: --device cuda was asked for, but torch sees no CUDA device")
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    if args.ops:
        ops.run(
            device,
            ops.QUICK_CASES if args.quick else None,
            skip=args.skip,
            out_dir=args.out,
            json_path=args.json,
            markdown_path=args.markdown,
        )
        return 0
    if args.breakdown:
        payload = breakdown.run(device, args.frame, quick=args.quick, repeats=args.repeats)
        save_and_print(breakdown.stem(device, payload), payload, breakdown.markdown(payload), args)
        return 0
    if args.plot:
        try:
            table3.require_matplotlib()
        except RuntimeError as error:
            sys.exit(f"bench_dynconv: {error}")
    payload = table3.run(
        device,
        args.models,
        args.frame or (table3.QUICK_FRAME if args.quick else None),
        dtype=args.dtype,
        channels_last=args.channels_last,
        repeats=args.repeats or (1 if args.quick else None),
        budget_s=args.budget,
    )
    if args.plot:
        table3.plot(payload, args.plot)
        print(f"  wrote {args.plot}")
    save_and_print(table3.stem(device, payload), payload, table3.markdown(payload), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
