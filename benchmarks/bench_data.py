"""Training patches per second from a paired folder of PNGs (RealSR-like data), decoding both
files for every patch against reading them from a ``DecodedCache`` (cold: filling it; warm: a later
run or a loader worker), on the CPU.

    python benchmarks/bench_data.py --out DIR      # also writes DIR/data-cpu-<date>.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
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
    """Patches per second of one pass of the loader over ``samples`` fresh patches."""
    patches = TrainingPatches(paired_folder(root, cache), 64, "y", seed=0, num_samples=samples)
    started = time.perf_counter()
    for _ in training_loader(patches, 16):
        pass
    return samples / (time.perf_counter() - started)


def median_rate(root: Path, make_cache, samples: int, repeats: int) -> float:
    """Median over ``repeats`` passes, each with the cache ``make_cache(i)`` (None: decode)."""
    return statistics.median(patches_per_second(root, make_cache(i), samples) for i in range(repeats))


def measure(scratch: Path, root: Path, samples: int, repeats: int) -> dict:
    """Patches per second decoding every patch, filling a fresh cache (cold) and reading a filled
    one (warm), each the median of ``repeats`` passes after an untimed pass that reads the files
    into the page cache and fills the warm cache."""
    patches_per_second(root, None, samples // 4)
    patches_per_second(root, DecodedCache(scratch / "warm"), samples)
    return {
        "decode": median_rate(root, lambda i: None, samples, repeats),
        "cache_cold": median_rate(root, lambda i: DecodedCache(scratch / f"cold-{i}"), samples, repeats),
        # a filled cache reads fast: time more patches so a pass is long enough to measure
        "cache_warm": median_rate(root, lambda i: DecodedCache(scratch / "warm"), samples * 16, repeats),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small images, for a smoke test")
    parser.add_argument("--out", metavar="DIR", help="write the JSON and markdown results into this folder")
    args = parser.parse_args(argv)
    size, samples, repeats = ((96, 128), 32, 1) if args.quick else ((1200, 1500), 64, 3)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "pairs"
        write_pairs(root, size)
        rates = measure(Path(scratch), root, samples, repeats)
    decoding, cold, warm = rates["decode"], rates["cache_cold"], rates["cache_warm"]
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
            f"Each figure is the median of {repeats} timed pass{'es' if repeats > 1 else ''} after an untimed "
            f"warm-up pass; a pass reads {samples} patches ({samples * 16} from the warm cache).",
            "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in machine(torch.device("cpu")).items()),
        ]
    )
    payload = {
        "machine": machine(torch.device("cpu")),
        "pair_size": size,
        "samples_per_pass": {"decode": samples, "cache_cold": samples, "cache_warm": samples * 16},
        "repeats": repeats,
        "patches_per_s": rates,
    }
    write_and_print(f"data-cpu-{_dt.date.today().isoformat()}", payload, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
