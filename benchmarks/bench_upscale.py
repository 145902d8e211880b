"""`ddet upscale` end to end (decode the PNG, run the bundled DDet ×2, encode the PNG) for each
precision and tile setting, in one run, on a 1-megapixel and a 24-megapixel output.

    python benchmarks/bench_upscale.py --out DIR   # also writes DIR/upscale-<device>-<date>.{json,md}
    python benchmarks/bench_upscale.py --quick     # small photos, one repeat, nothing saved

Photos: scikit-image's astronaut (512×512, ×2 → 1024×1024) and the same photo resized with
bicubic to 3000×2000 (×2 → 6000×4000). Every case runs in a fresh process, so its peak resident
memory (the whole process: Python, torch, the images, the network) is its own. "previous default"
runs the ``ddet`` package of commit ``--previous`` (default: the last one before precision choice
and memory-sized tiles) with its defaults: float32, NCHW, 512-pixel tiles blended over 32 pixels.
Precisions the hardware lacks units for (bfloat16 / float16 on a CPU without AMX or AVX-512 BF16)
run on the small photo only: they are emulated there and several times slower than float32.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after site-packages: the installed packages win

from benchmarks.common import device_slug, machine, markdown_table, write_and_print  # noqa: E402
from ddet.data.sources import skimage_photos  # noqa: E402

PREVIOUS = "6e3c5ec"
# (label, upscale options): the previous default first (run with the previous package, which
# takes no options), the new default second; the ratios compare these two.
SETTINGS = [
    ("previous default (fp32, 512 tiles, overlap 32)", {}),
    ("default: auto precision, tiling from --max-memory", {}),
    ("fp32, tiling from --max-memory", {"precision": "fp32"}),
    ("bf16, tiling from --max-memory", {"precision": "bf16"}),
    ("fp16, tiling from --max-memory", {"precision": "fp16"}),
    ("fp32, whole image (--tile 0)", {"precision": "fp32", "tile": 0}),
]


def run_case(photo: str, options: dict, device: str) -> dict:
    """One timed upscale in this process: seconds from reading the file to the written PNG."""
    from ddet.data.io import write_image
    from ddet.inference import upscale

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        image = upscale(photo, scale=2, device=device, dtype=np.uint8, **options)
        write_image(Path(scratch) / "out.png", image)
        seconds = time.perf_counter() - started
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_bytes": peak, "megapixels": image.shape[0] * image.shape[1] / 1e6}


def in_fresh_process(photo: Path, options: dict, device: str, package: Path | None = None) -> dict:
    """``run_case`` in a new process; with the ``ddet`` package found in ``package`` first if given."""
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        __file__,
        "--case",
        json.dumps({"photo": str(photo), "options": options, "device": device}),
    ]
    return json.loads(
        subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.splitlines()[-1]
    )


def export_previous(ref: str, folder: Path) -> Path:
    """The ``ddet`` package of commit ``ref`` in ``folder`` (it runs on today's ``ddet_ops``)."""
    archive = subprocess.run(
        ["git", "archive", ref, "ddet"], cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def write_photos(folder: Path, quick: bool) -> dict:
    """The two test photos as PNG: astronaut, and astronaut resized to 3000×2000."""
    astronaut = Image.fromarray(np.round(skimage_photos(["astronaut"])["astronaut"] * 255).astype(np.uint8))
    sizes = {"small": (64, 64), "large": (96, 64)} if quick else {"small": astronaut.size, "large": (3000, 2000)}
    paths = {}
    for name, size in sizes.items():
        paths[name] = folder / f"astronaut-{size[0]}x{size[1]}.png"
        astronaut.resize(size, Image.BICUBIC).save(paths[name])
    return paths


def cases(auto: str, native_half: bool, repeats: int) -> list:
    """(photo, label, options, repeats): on the small photo every setting but the one the default
    already is; on the large one the previous and new defaults and bf16 where the hardware has it."""
    same_as_default = SETTINGS[2][0] if auto == "fp32" else SETTINGS[3][0]
    settings = [(label, options) for label, options in SETTINGS if label != same_as_default]
    plan = [
        ("small", label, options, repeats if options.get("precision", "auto") in ("fp32", "auto") else 1)
        for label, options in settings
    ]
    plan += [
        ("large", label, options, 1)
        for label, options in settings[:3]
        if native_half or options.get("precision") != "bf16"
    ]
    return plan


def measure(plan: list, photos: dict, device: str, previous: Path) -> list:
    """Every case of the plan, its repeats taken in turns with the other cases' (round r runs
    every case that has an r-th repeat), so that a slower spell of a shared machine falls on all
    of them rather than on one setting."""
    runs = {index: [] for index in range(len(plan))}
    for round_index in range(max(repeats for *_, repeats in plan)):
        for index, (photo, label, options, repeats) in enumerate(plan):
            if round_index < repeats:
                package = previous if label == SETTINGS[0][0] else None
                runs[index].append(in_fresh_process(photos[photo], options, device, package))
                print(f"{photo}: {label}: {runs[index][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    return [
        summary(photos[photo], label, options, runs[index]) for index, (photo, label, options, _) in enumerate(plan)
    ]


def summary(photo: Path, label: str, options: dict, runs: list) -> dict:
    seconds = statistics.median(run["seconds"] for run in runs)
    return {
        "photo": photo.name,
        "setting": label,
        "options": options,
        "repeats": len(runs),
        "seconds": seconds,
        "megapixels_per_s": runs[0]["megapixels"] / seconds,
        "peak_bytes": max(run["peak_bytes"] for run in runs),
        "output_megapixels": runs[0]["megapixels"],
    }


def speedups(rows: list) -> dict:
    """New default against the previous default, per photo."""
    result = {}
    for photo in dict.fromkeys(row["photo"] for row in rows):
        times = {row["setting"]: row["seconds"] for row in rows if row["photo"] == photo}
        result[photo] = times[SETTINGS[0][0]] / times[SETTINGS[1][0]]
    return result


def report(rows: list, device: str, auto: str) -> str:
    table = [
        [
            row["photo"],
            f"{row['output_megapixels']:.1f}",
            row["setting"],
            row["repeats"],
            f"{row['seconds']:.1f}",
            f"{row['megapixels_per_s']:.3f}",
            f"{row['peak_bytes'] / 2**30:.2f}",
        ]
        for row in rows
    ]
    gains = ", ".join(f"{photo}: {gain:.2f}×" for photo, gain in speedups(rows).items())
    return "\n".join(
        [
            f"# `ddet upscale` ×2 end to end ({device})",
            "",
            f"Default precision here: {auto}. Default vs previous default: {gains}. Times are medians of the repeats; "
            "repeats were taken in turns with the other cases'; peak = the process's peak resident memory"
            + (" (CUDA: the allocator's peak)" if device.startswith("cuda") else "")
            + ".",
            "",
            markdown_table(["photo", "output MP", "setting", "repeats", "s", "MP/s", "peak GiB"], table),
            "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in machine(torch.device(device)).items()),
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each float32 case on the small photo (median)")
    parser.add_argument("--quick", action="store_true", help="small photos, one repeat, nothing saved")
    parser.add_argument("--out", metavar="DIR", help="write the JSON and markdown results into this folder")
    parser.add_argument(
        "--previous",
        default=PREVIOUS,
        help=f"commit whose ddet package gives the previous default (default {PREVIOUS})",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one measurement, in a child process
    args = parser.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(run_case(case["photo"], case["options"], case["device"])))
        return 0
    from ddet.device import pick_device
    from ddet.inference import bf16_matrix_units, choose_precision

    device = str(pick_device(args.device))  # the child processes take it as text
    native_half = device.startswith("cuda") or bf16_matrix_units()
    auto = choose_precision("auto", device)
    with tempfile.TemporaryDirectory() as scratch:
        photos = write_photos(Path(scratch), args.quick)
        previous = export_previous(args.previous, Path(scratch))
        rows = measure(cases(auto.name, native_half, 1 if args.quick else args.repeats), photos, device, previous)
    markdown = report(rows, device, f"{auto.name} ({auto.reason})")
    if args.quick:
        print(markdown)
        return 0
    payload = {
        "machine": machine(torch.device(device)),
        "previous": args.previous,
        "auto_precision": auto.name,
        "rows": rows,
        "speedup_default_vs_previous": speedups(rows),
    }
    stem = f"upscale-{device_slug(torch.device(device))}-{_dt.date.today().isoformat()}"
    write_and_print(stem, payload, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
