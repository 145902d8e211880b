"""Training patches per second from a paired folder of PNGs (RealSR-like data), decoding both
files for every patch against reading them from a ``DecodedCache`` (cold: filling it; warm: a later
run or a loader worker), on the CPU.

    python benchmarks/bench_data.py --out DIR      # also writes DIR/data-cpu-<date>.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after site-packages: the installed packages win

from benchmarks.common import machine, markdown_table, write_and_print  # noqa: E402
from ddet.data import DecodedCache, TrainingPatches, paired_folder, skimage_photos, training_loader  # noqa: E402


def write_pairs(root: Path, size: tuple) -> None:
    """HR photos of ``size`` (H, W) and their LR halves as PNG, from scikit-image's photographs."""
    for folder in ("hr", "lr"):
        (root / folder).mkdir(parents=True)
    for name, photo in skimage_photos(("astronaut", "rocket", "brick", "coins")).items():
        hr = Image.fromarray(np.round(photo * 255).astype(np.uint8)).resize((size[1], size[0]), Image.BICUBIC)
        hr.save(root / "hr" / f"{name}.png")
        hr.resize((size[1] // 2, size[0] // 2), Image.BICUBIC).save(root / "lr" / f"{name}.png")


def patches_per_second(root: Path, cache, samples: int) -> float:
    patches = TrainingPatches(paired_folder(root, cache), 64, "y", seed=0, num_samples=samples)
    started = time.perf_counter()
    for _ in training_loader(patches, 16):
        pass
    return samples / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small images, for a smoke test")
    parser.add_argument("--out", metavar="DIR", help="write the JSON and markdown results into this folder")
    args = parser.parse_args(argv)
    size, samples = ((96, 128), 32) if args.quick else ((1200, 1500), 64)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "pairs"
        write_pairs(root, size)
        decoding = patches_per_second(root, None, samples)
        cold = patches_per_second(root, DecodedCache(Path(scratch) / "cache"), samples)
        warm = patches_per_second(root, DecodedCache(Path(scratch) / "cache"), samples)
    rows = [
        [
            f"64² patches from 4 PNG pairs of {size[1]}×{size[0]} (LR at half size), one process",
            f"{decoding:.1f}",
            f"{cold:.1f}",
            f"{warm:.1f}",
            f"{warm / decoding:.0f}×",
        ]
    ]
    markdown = "\n".join(
        [
            "# Training patches per second (CPU)",
            "",
            markdown_table(
                ["data", "decode every patch", "DecodedCache, cold", "DecodedCache, warm", "warm / decode"], rows
            ),
            "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in machine(torch.device("cpu")).items()),
        ]
    )
    payload = {
        "machine": machine(torch.device("cpu")),
        "pair_size": size,
        "patches_per_s": {"decode": decoding, "cache_cold": cold, "cache_warm": warm},
    }
    write_and_print(f"data-cpu-{_dt.date.today().isoformat()}", payload, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
