"""Reads a CUDA build log made with ``-Xptxas -v`` and prints each kernel's registers, stack frame
and spills per architecture; exits 1 if a kernel matching --strict (default: the v2 kernels) has a
stack frame or spills, which mean local-memory traffic in the loops that must stream.

    python tools/ptxas_report.py build.log [--strict REGEX]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def demangle(names):
    if not names or shutil.which("c++filt") is None:
        return dict(zip(names, names, strict=True))
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out, strict=True)) if len(out) == len(names) else dict(zip(names, names, strict=True))


def parse(text: str):
    """[(mangled name, arch, registers, stack frame, spill stores, spill loads)] in log order."""
    kernels, current = [], None
    for line in text.splitlines():
        if match := ENTRY.search(line):
            current = [match.group(1), match.group(2), None, 0, 0, 0]
            kernels.append(current)
        elif current and (match := FRAME.search(line)):
            current[3:6] = map(int, match.groups())
        elif current and (match := REGISTERS.search(line)):
            current[2] = int(match.group(1))
    return [tuple(k) for k in kernels]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--strict", default=r"ddet_ops::v2::", help="kernels that must not spill (regex)")
    args = parser.parse_args(argv)
    kernels = parse(Path(args.log).read_text(errors="replace"))
    if not kernels:
        print(f"ptxas_report: no kernel resource lines in {args.log} (was it built with -Xptxas -v?)")
        return 1
    names = demangle(sorted({k[0] for k in kernels}))
    bad = []
    print("| kernel | arch | registers | stack frame B | spill stores B | spill loads B |\n|---|---|---|---|---|---|")
    for name, arch, registers, frame, stores, loads in kernels:
        print(f"| {names[name]} | {arch} | {registers} | {frame} | {stores} | {loads} |")
        if re.search(args.strict, names[name]) and (frame or stores or loads):
            bad.append(f"{names[name]} ({arch})")
    if bad:
        print("ptxas_report: stack frame or spills in " + "; ".join(bad), file=sys.stderr)
        return 1
    print(f"ptxas_report: {len(kernels)} kernels; none matching {args.strict!r} has a stack frame or spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
