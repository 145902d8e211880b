"""DDet (the bundled ×2 weights) on a 512×512 Y frame in PyTorch eager, in its AOTInductor package
(pt2) and in ONNX Runtime on the CPU, in one run: export times, run times and each output's largest
difference from eager; or, with ``--models``, the ONNX and pt2 exports of registered models
checked against eager on a 97×131 and a 512×512 frame (``--sizes``: other frames).

    python benchmarks/bench_export.py --out DIR                 # writes DIR/export-cpu-<date>.{json,md}
    python benchmarks/bench_export.py --models all --out DIR    # DIR/export-models-cpu-<date>.{json,md}
    python benchmarks/bench_export.py --models kpn5 lpkpn       # these only
    python benchmarks/bench_export.py --models edsr --sizes 97x131   # DIR/export-models-97x131-cpu-<date>.*

Needs the export extra (``pip install 'ddet[export]'``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after site-packages: the installed packages win

import ddet  # noqa: E402
import ddet_ops  # noqa: E402, F401  (registers the op the pt2 package calls)
from benchmarks.common import frame_size, machine, markdown_table, median_time, write_and_print  # noqa: E402
from ddet import models  # noqa: E402
from ddet.data.color import rgb_to_ycbcr  # noqa: E402
from ddet.data.sources import skimage_photos  # noqa: E402
from ddet.inference import resolve_model  # noqa: E402

CPU = torch.device("cpu")
SIZES = ((97, 131), (512, 512))
TOLERANCE = 1e-4  # float32 exports against eager


def y_frame(size: int) -> torch.Tensor:
    """The Y channel of scikit-image's astronaut, resized to size×size, as (1, 1, H, W)."""
    photo = torch.from_numpy(rgb_to_ycbcr(skimage_photos(("astronaut",))["astronaut"])[..., 0].copy())
    return torch.nn.functional.interpolate(photo[None, None], size=(size, size), mode="bicubic", align_corners=False)


def timed_export(path: Path, **options) -> float:
    started = time.perf_counter()
    ddet.export(path, **options)
    return time.perf_counter() - started


def onnx_runner(path: Path):
    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy().astype(dtype)})[0]).float()


FILES = {"pt2": "model.pt2", "ONNX Runtime": "model.onnx", "ONNX Runtime, float16": "model_fp16.onnx"}


def load_export(path: Path):
    """The exported model at ``path`` as a callable on a float32 tensor."""
    if path.suffix == ".pt2":
        return torch._inductor.aoti_load_package(str(path))
    return onnx_runner(path)


def runners(folder: Path, model: torch.nn.Module) -> tuple:
    """{implementation: callable on a float32 tensor}, {implementation: export seconds}."""
    seconds = {
        name: timed_export(folder / file, model=model, dtype="float16" if "float16" in name else "float32")
        for name, file in FILES.items()
    }
    found = {"eager": lambda x: model(x), **{name: load_export(folder / file) for name, file in FILES.items()}}
    return found, seconds


def largest_differences(found: dict, frames: list) -> dict:
    """{implementation: [max |output - eager| on each frame]}."""
    with torch.no_grad():
        expected = [found["eager"](x) for x in frames]
        return {
            name: [(run(x) - y).abs().max().item() for x, y in zip(frames, expected, strict=True)]
            for name, run in found.items()
            if name != "eager"
        }


def time_ddet(folder: Path) -> dict:
    model = resolve_model(None, None, 2, "cpu").model
    found, export_s = runners(folder, model)
    frame = y_frame(512)
    with torch.no_grad():
        seconds = {
            name: median_time(functools.partial(run, frame), CPU, min_repeats=7, budget_s=10.0)
            for name, run in found.items()
        }
    differences = largest_differences(found, [torch.rand(1, 1, *SIZES[0]), frame])
    return {"run_s": seconds, "export_s": export_s, "max_abs_diff": differences}


def check_format(folder: Path, model: torch.nn.Module, file_name: str, frames: list, expected: list) -> dict:
    """Export ``model`` to ``folder/file_name``, run it on ``frames``: export seconds and the largest
    difference from ``expected`` on each frame, or the error that stopped it (a sweep reports what
    fails rather than ending)."""
    started = time.perf_counter()
    try:
        export_s = timed_export(folder / file_name, model=model)
        run = load_export(folder / file_name)
        with torch.no_grad():
            differences = [(run(x) - y).abs().max().item() for x, y in zip(frames, expected, strict=True)]
    except Exception as error:  # noqa: BLE001  (torch.export / inductor / onnxruntime raise many kinds)
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        return {"error": f"{type(error).__name__}: {first_line}", "seconds": time.perf_counter() - started}
    return {"export_s": export_s, "max_abs_diff": differences, "seconds": time.perf_counter() - started}


def move_off_initialisation(model: torch.nn.Module) -> None:
    """Add 0.1·N(0, 1)/√fan-in to every weight (seed 0): the identity-like starts of the networks
    would hide a wrong graph (a zero tail passes the input through), and noise of a fixed size
    would blow deep trunks up to outputs of 1e20, where float32 rounding alone exceeds 1e-4."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
            parameter.add_(0.1 / math.sqrt(fan_in) * torch.randn_like(parameter))


def check_model(folder: Path, name: str, sizes: list) -> dict:
    """Eager vs pt2 vs ONNX Runtime for registered model ``name`` (default configuration, weights
    moved off their initialisation) on a random frame of each of ``sizes``."""
    model = models.create(name).eval()
    move_off_initialisation(model)
    frames = [torch.rand(1, model.in_channels, *size) for size in sizes]
    started = time.perf_counter()
    with torch.no_grad():
        expected = [model(x) for x in frames]
    result = {
        "eager_s": time.perf_counter() - started,
        "max_abs_eager": max(y.abs().max().item() for y in expected),
        "max_abs_eager_minus_input": max((y - x).abs().max().item() for x, y in zip(frames, expected, strict=True)),
    }
    for kind in ("pt2", "ONNX Runtime"):
        print(f"  {name}: {kind} ...", file=sys.stderr, flush=True)
        result[kind] = check_format(folder, model, FILES[kind], frames, expected)
        print(f"  {name}: {kind} {result[kind]}", file=sys.stderr, flush=True)
    return result


def footer() -> list:
    return [
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine(CPU).items()),
        f"onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads.",
    ]


def report_ddet(ddet_result: dict) -> str:
    eager = ddet_result["run_s"]["eager"]
    rows = [
        [
            name,
            f"{seconds * 1e3:.0f}",
            f"{seconds / eager:.2f}x",
            f"{ddet_result['export_s'][name]:.0f}" if name in ddet_result["export_s"] else "",
            " / ".join(f"{d:.1e}" for d in ddet_result["max_abs_diff"].get(name, [])),
        ]
        for name, seconds in ddet_result["run_s"].items()
    ]
    header = ["implementation", "ms / frame", "vs eager", "export s", "max abs diff (97×131 / 512×512)"]
    lines = [
        "# DDet exported: eager PyTorch, AOTInductor package (pt2), ONNX Runtime (CPU)",
        "",
        "Bundled ×2 weights, one 512×512 Y frame (scikit-image's astronaut), float32 unless marked; "
        "run times are medians; max |diff| is against eager on a random 97×131 frame / the 512×512 frame.",
        "",
        markdown_table(header, rows),
    ]
    return "\n".join(lines + footer())


def model_row(name: str, kind: str, result: dict) -> list:
    check = result[kind]
    if "error" in check:
        return [name, kind, "", "", "failed", f"{check['seconds']:.0f}", check["error"]]
    differences = check["max_abs_diff"]
    verdict = "yes" if max(differences) <= TOLERANCE else "NO"
    sizes = " / ".join(f"{d:.1e}" for d in differences)
    return [name, kind, f"{check['export_s']:.0f}", sizes, verdict, f"{check['seconds']:.0f}", ""]


def report_models(checks: dict, sizes: list) -> str:
    named = [f"{h}×{w}" for h, w in sizes]
    rows = [model_row(name, kind, result) for name, result in checks.items() for kind in ("pt2", "ONNX Runtime")]
    eager = [
        [name, f"{r['eager_s']:.1f}", f"{r['max_abs_eager']:.2f}", f"{r['max_abs_eager_minus_input']:.2f}"]
        for name, r in checks.items()
    ]
    difference = f"max abs diff ({' / '.join(named)})"
    header = ["model", "format", "export s", difference, f"≤ {TOLERANCE:g}", "check s", "error"]
    lines = [
        "# Registered models exported: pt2 (AOTInductor) and ONNX Runtime (CPU) against eager PyTorch",
        "",
        "Default configuration of each model, float32, every weight moved off its initialisation by "
        f"0.1·N(0, 1)/√fan-in (seed 0); one random frame in [0, 1) of each size ({', '.join(named)}); "
        "max |output - eager|. 'check s' is the wall time of the export, the load and the runs.",
        "",
        markdown_table(header, rows),
        "",
        "The eager outputs compared against (their scale, and how far the weights move them off the input):",
        "",
        markdown_table(["model", "eager s (all frames)", "max abs eager", "max abs (eager - input)"], eager),
    ]
    return "\n".join(lines + footer())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        choices=["all", *models.names()],
        metavar="NAME",
        help="check the exports of these registered models ('all': every one) instead of timing DDet",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=frame_size,
        default=list(SIZES),
        metavar="HxW",
        help="frames the --models check runs on (default 97x131 512x512)",
    )
    parser.add_argument("--out", metavar="DIR", help="write the JSON and markdown results into this folder")
    args = parser.parse_args(argv)
    payload = {"machine": machine(CPU), "onnxruntime": onnxruntime.__version__}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
        if args.models:
            names = models.names() if "all" in args.models else args.models
            payload["sizes"] = args.sizes
            payload["models"] = {name: check_model(Path(scratch) / name, name, args.sizes) for name in names}
            sizes = "" if args.sizes == list(SIZES) else "-" + "-".join(f"{h}x{w}" for h, w in args.sizes)
            stem, markdown = f"export-models{sizes}-cpu", report_models(payload["models"], args.sizes)
        else:
            payload["ddet_x2_512"] = time_ddet(Path(scratch) / "ddet")
            stem, markdown = "export-cpu", report_ddet(payload["ddet_x2_512"])
    write_and_print(f"{stem}-{_dt.date.today().isoformat()}", payload, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
