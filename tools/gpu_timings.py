"""The timing steps of tools/gpu_check.sh, one subcommand each, results as JSON then markdown.

    python tools/gpu_timings.py kernels --json v2.json         # raw-op timings, this process's kernels
    DDET_OPS_CUDA_KERNELS=v1 python tools/gpu_timings.py kernels --json v1.json
    python tools/gpu_timings.py peers --json peers.json        # unfold and torch.compile, headline case
    python tools/gpu_timings.py report --v1 v1.json --v2 v2.json --peers peers.json --markdown summary.md

--dry-run runs the same code on the CPU on tiny cases, so that CI keeps the script working.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Appended, not prepended: an installed ddet_ops must win over the source folder of that name.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import ops  # noqa: E402

HEADLINE = "1x3x1024x1024 g1"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["kernels", "peers", "report"])
    parser.add_argument("--json", help="kernels/peers: where to write the results")
    parser.add_argument("--v1", help="report: the v1 kernel timings")
    parser.add_argument("--v2", help="report: the v2 kernel timings")
    parser.add_argument("--peers", help="report: the peer timings")
    parser.add_argument("--markdown", help="report: where to write the summary (it is printed too)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per measurement (default: 30)")
    parser.add_argument("--dry-run", action="store_true", help="CPU and tiny cases: checks the code, measures nothing")
    args = parser.parse_args(argv)
    if args.step in ("kernels", "peers") and not args.json:
        parser.error(f"{args.step} needs --json")
    if args.step == "report" and not (args.v1 and args.markdown):
        parser.error("report needs --v1 and --markdown")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def load(path):
    """A results file, or None where its step did not write one (it failed or was skipped)."""
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.step == "report":
        markdown = (
            ops.kernel_report(load(args.v1), load(args.v2), load(args.peers))
            if load(args.v1)
            else ("no kernel timings were written\n")
        )
        Path(args.markdown).write_text(markdown)
        print(markdown)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_timings: no CUDA device (use --dry-run to check the code on the CPU)")
    device = torch.device("cpu" if args.dry_run else "cuda")
    repeats = 2 if args.dry_run else args.repeats
    if args.step == "kernels":
        variant = ops.kernel_variant(device)
        cases = [
            case
            for case in (ops.DRY_RUN_CASES if args.dry_run else ops.KERNEL_CASES)
            if variant != "v1" or ops.v1_has(case)
        ]
        ops.run_kernel_timings(device, cases, repeats, args.json, variant)
    else:
        cases = (
            ops.DRY_RUN_CASES
            if args.dry_run
            else [c for c in ops.KERNEL_CASES if c.name.startswith(HEADLINE) and c.dtype != "float16" and ops.v1_has(c)]
        )
        # The dry run traces torch.compile's graphs but leaves inductor's minutes of CPU compiling out.
        ops.run_peers(device, cases, repeats, args.json, backend="eager" if args.dry_run else "inductor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
