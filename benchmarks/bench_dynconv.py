"""Benchmarks of the paper's Table III and of the ddet_ops operator.

    python benchmarks/bench_dynconv.py --ops                 # operator vs bandwidth floor and peers
    python benchmarks/bench_dynconv.py --ops --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Appended, not prepended: an installed ddet_ops (with its compiled kernels) must win over the
# source folder of the same name in the repository root.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import ops  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", action="store_true", help="run the operator benchmark")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for the test suite")
    parser.add_argument("--skip", nargs="*", default=[], choices=["unfold", "compiled"],
                        help="peers to leave out of the operator benchmark")
    parser.add_argument("--json", help="where to write the JSON results (default: benchmarks/results/)")
    parser.add_argument("--markdown", help="where to write the markdown results (default: benchmarks/results/)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no result files")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_dynconv: --device cuda was asked for, but torch sees no CUDA device")
    if args.ops:
        ops.run(device, ops.QUICK_CASES if args.quick else None, skip=args.skip, json_path=args.json,
                markdown_path=args.markdown, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
