"""DDet (the bundled ×2 weights) on a 512×512 Y frame in PyTorch eager, in its AOTInductor package
(pt2) and in ONNX Runtime on the CPU, in one run: export times, run times and each output's largest
difference from eager; ``--models`` also checks the ONNX and pt2 exports of registered models.

    python benchmarks/bench_export.py --out DIR            # also writes DIR/export-cpu-<date>.{json,md}
    python benchmarks/bench_export.py --models kpn5 lpkpn  # + exports of these (weights moved off their init)

Needs the export extra (``pip install 'ddet[export]'``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
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
from benchmarks.common import machine, markdown_table, median_time, write_and_print  # noqa: E402
from ddet import models  # noqa: E402
from ddet.data.color import rgb_to_ycbcr  # noqa: E402
from ddet.data.sources import skimage_photos  # noqa: E402
from ddet.inference import resolve_model  # noqa: E402

CPU = torch.device("cpu")
SIZES = ((97, 131), (512, 512))


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


def runners(folder: Path, model: torch.nn.Module, half: bool) -> tuple:
    """{implementation: callable on a float32 tensor}, {implementation: export seconds}."""
    seconds = {
        "pt2": timed_export(folder / "model.pt2", model=model),
        "ONNX Runtime": timed_export(folder / "model.onnx", model=model),
    }
    found = {
        "eager": lambda x: model(x),
        "pt2": torch._inductor.aoti_load_package(str(folder / "model.pt2")),
        "ONNX Runtime": onnx_runner(folder / "model.onnx"),
    }
    if half:
        seconds["ONNX Runtime, float16"] = timed_export(folder / "model_fp16.onnx", model=model, dtype="float16")
        found["ONNX Runtime, float16"] = onnx_runner(folder / "model_fp16.onnx")
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
    found, export_s = runners(folder, model, half=True)
    frame = y_frame(512)
    with torch.no_grad():
        seconds = {
            name: median_time(functools.partial(run, frame), CPU, min_repeats=7, budget_s=10.0)
            for name, run in found.items()
        }
    differences = largest_differences(found, [torch.rand(1, 1, *SIZES[0]), frame])
    return {"run_s": seconds, "export_s": export_s, "max_abs_diff": differences}


def check_model(folder: Path, name: str) -> dict:
    torch.manual_seed(0)
    model = models.create(name).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    found, export_s = runners(folder, model, half=False)
    frames = [torch.rand(1, model.in_channels, *size) for size in SIZES]
    return {"export_s": export_s, "max_abs_diff": largest_differences(found, frames)}


def checked_or_error(folder: Path, name: str) -> dict:
    """check_model's result, or the error that stopped an export: a sweep reports what fails."""
    try:
        return check_model(folder, name)
    except Exception as error:  # noqa: BLE001  (torch.export / inductor raise many kinds)
        return {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}"}


def report(ddet_result: dict, checks: dict) -> str:
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
    lines = [
        "# DDet exported: eager PyTorch, AOTInductor package (pt2), ONNX Runtime (CPU)",
        "",
        "Bundled ×2 weights, one 512×512 Y frame (scikit-image's astronaut), float32 unless marked; "
        "run times are medians; max |diff| is against eager on a random 97×131 frame / the 512×512 frame.",
        "",
        markdown_table(
            ["implementation", "ms / frame", "vs eager", "export s", "max abs diff (97×131 / 512×512)"], rows
        ),
    ]
    if checks:
        check_rows = [
            [
                name,
                kind,
                f"{result['export_s'][kind]:.0f}",
                " / ".join(f"{d:.1e}" for d in result["max_abs_diff"][kind]),
            ]
            for name, result in checks.items()
            for kind in result.get("export_s", [])
        ] + [[name, "failed", "", result["error"]] for name, result in checks.items() if "error" in result]
        lines += [
            "",
            "Registered models (default configuration, every weight moved off its initialisation by 0.05·N(0, 1)):",
            "",
            markdown_table(["model", "format", "export s", "max abs diff vs eager (97×131 / 512×512)"], check_rows),
        ]
    lines += [
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine(CPU).items()),
        f"onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="*",
        default=[],
        choices=models.names(),
        metavar="NAME",
        help="also check the exports of these models",
    )
    parser.add_argument("--out", metavar="DIR", help="write the JSON and markdown results into this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
        ddet_result = time_ddet(Path(scratch) / "ddet")
        checks = {name: checked_or_error(Path(scratch) / name, name) for name in args.models}
    markdown = report(ddet_result, checks)
    payload = {
        "machine": machine(CPU),
        "onnxruntime": onnxruntime.__version__,
        "ddet_x2_512": ddet_result,
        "models": checks,
    }
    write_and_print(f"export-cpu-{_dt.date.today().isoformat()}", payload, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
