"""The operator benchmark: ddet_ops.multi_dynconv against the memory-bandwidth floor and the peers.

For every case, in one process: the copy bandwidth B of the device, then forward (without
autograd, and as in training) and backward (gradients of x and of the kernels) of

* ``ddet_ops``  - the fused kernels,
* ``unfold``    - ``ddet_ops.reference.multi_dynconv`` (F.unfold, what most people write),
* ``compiled``  - ``torch.compile`` of ``ddet_ops.reference.multi_dynconv_shift_add``,

each as a multiple of its floor (DESIGN.md: bytes_fwd = elem*N*H*W*(sum groups*s^2 + 2C),
bytes_bwd = elem*N*H*W*(2*sum groups*s^2 + 3C), divided by B), and the peak extra memory of one
forward + backward.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import ddet_ops
from ddet_ops import reference

from .common import copy_bandwidth, device_slug, machine, markdown_table, median_time, peak_extra_memory, write_results

SIZES = (3, 5, 7)


@dataclass(frozen=True)
class Case:
    name: str
    shape: Tuple[int, int, int, int]
    groups: int = 1
    dtype: str = "float32"
    sizes: Tuple[int, ...] = SIZES

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def kernel_channels(self) -> int:
        return self.groups * sum(s * s for s in self.sizes)

    def floor_bytes(self) -> Tuple[int, int]:
        n, c, h, w = self.shape
        elem = torch.empty((), dtype=self.torch_dtype).element_size()
        taps = self.kernel_channels()
        return elem * n * h * w * (taps + 2 * c), elem * n * h * w * (2 * taps + 3 * c)

    def output_bytes(self) -> int:
        """What one forward + backward returns: y, grad_x and the kernel gradients."""
        n, c, h, w = self.shape
        elem = torch.empty((), dtype=self.torch_dtype).element_size()
        return elem * n * h * w * (2 * c + self.kernel_channels())


CPU_CASES = [
    Case("headline 1x3x1024x1024", (1, 3, 1024, 1024)),
    Case("training batch 16x1x64x64", (16, 1, 64, 64)),
    Case("features 1x64x256x256 g1", (1, 64, 256, 256), groups=1),
    Case("features 1x64x256x256 g64", (1, 64, 256, 256), groups=64),
]

CUDA_CASES = [
    Case("1x3x2048x2048 fp32", (1, 3, 2048, 2048)),
    Case("1x3x2048x2048 bf16", (1, 3, 2048, 2048), dtype="bfloat16"),
    Case("16x1x256x256 fp32", (16, 1, 256, 256)),
    Case("16x1x256x256 bf16", (16, 1, 256, 256), dtype="bfloat16"),
    Case("8x64x128x128 g1", (8, 64, 128, 128), groups=1),
    Case("8x64x128x128 g64", (8, 64, 128, 128), groups=64),
]

QUICK_CASES = [Case("quick 1x3x64x64", (1, 3, 64, 64)), Case("quick 2x4x32x32 g4", (2, 4, 32, 32), groups=4)]


def implementations(case: Case) -> Dict[str, Callable]:
    native = dict(sizes=case.sizes, groups=case.groups, compute_dtype=case.torch_dtype)
    compiled = torch.compile(functools.partial(reference.multi_dynconv_shift_add, **native), fullgraph=True,
                             dynamic=False)
    return {
        "ddet_ops": functools.partial(ddet_ops.multi_dynconv, sizes=case.sizes, groups=case.groups),
        "unfold": functools.partial(reference.multi_dynconv, **native),
        "compiled": compiled,
    }


def measure_case(case: Case, device: torch.device, bandwidth: float, skip: Sequence[str] = ()) -> Dict[str, object]:
    gen = torch.Generator(device=device).manual_seed(0)
    n, c, h, w = case.shape
    x = torch.randn(case.shape, device=device, generator=gen).to(case.torch_dtype).requires_grad_(True)
    kernels = (torch.randn((n, case.kernel_channels(), h, w), device=device, generator=gen) / 10).to(
        case.torch_dtype).requires_grad_(True)
    grad_y = torch.randn(case.shape, device=device, generator=gen).to(case.torch_dtype)
    floor_fwd, floor_bwd = (b / bandwidth for b in case.floor_bytes())
    results: Dict[str, object] = {"case": asdict(case), "floor_fwd_s": floor_fwd, "floor_bwd_s": floor_bwd,
                                  "output_bytes": case.output_bytes(), "impls": {}}
    for name, fn in implementations(case).items():
        if name in skip:
            continue
        # Forward twice: for inference (no autograd) and as in training (inputs require grad);
        # torch.compile builds a different graph for each, and they need not run alike.
        with torch.no_grad():
            forward = median_time(lambda: fn(x, kernels), device)
        training_forward = median_time(lambda: fn(x, kernels), device)
        y = fn(x, kernels)
        backward = median_time(lambda: torch.autograd.grad(y, (x, kernels), grad_y, retain_graph=True), device)
        del y
        peak = peak_extra_memory(lambda: torch.autograd.grad(fn(x, kernels), (x, kernels), grad_y), device)
        results["impls"][name] = {"forward_s": forward, "training_forward_s": training_forward,
                                  "backward_s": backward, "peak_extra_bytes": peak}
    return results


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def summary_rows(all_results: List[Dict[str, object]]) -> List[List[object]]:
    rows = []
    for res in all_results:
        ours = res["impls"].get("ddet_ops")
        for name, r in res["impls"].items():
            peak = r["peak_extra_bytes"]
            rows.append([
                res["case"]["name"], name,
                _ms(r["forward_s"]), f"{r['forward_s'] / res['floor_fwd_s']:.2f}", _ms(r["training_forward_s"]),
                _ms(r["backward_s"]), f"{r['backward_s'] / res['floor_bwd_s']:.2f}",
                "n/a" if peak is None else f"{peak / 1e6:.0f}",
                f"{r['forward_s'] / ours['forward_s']:.1f}x" if ours else "",
                f"{r['training_forward_s'] / ours['training_forward_s']:.1f}x" if ours else "",
                f"{r['backward_s'] / ours['backward_s']:.1f}x" if ours else "",
            ])
    return rows


HEADERS = ["case", "impl", "fwd ms", "fwd / floor", "train-fwd ms", "bwd ms", "bwd / floor", "peak extra MB",
           "fwd vs ddet_ops", "train-fwd vs ddet_ops", "bwd vs ddet_ops"]


def report(info: Dict[str, object], bandwidth: float, all_results: List[Dict[str, object]]) -> str:
    who = info.get("gpu", info["cpu"])
    header = (f"ddet_ops operator benchmark on {who} ({info['device']}, {info['torch_threads']} threads), "
              f"torch {info['torch']}, commit {info['commit']}, {info['date']}.\n"
              f"Copy bandwidth B = {bandwidth / 1e9:.1f} GB/s (read + write). Floors: bytes / B. "
              f"Times are medians; fwd: no autograd (inference), train-fwd: inputs require grad; "
              f"'vs ddet_ops' = that implementation's time / ddet_ops' time.\n")
    return header + "\n" + markdown_table(HEADERS, summary_rows(all_results))


def run(device: torch.device, cases: Optional[List[Case]] = None, skip: Sequence[str] = (),
        out_dir: Optional[str] = None, json_path: Optional[str] = None, markdown_path: Optional[str] = None) -> str:
    """Runs the cases, prints the results and writes them where asked; returns the markdown table.

    The files are rewritten after every case, so a run stopped by a time limit keeps what it measured."""
    if cases is None:
        cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    info = machine(device)
    bandwidth = copy_bandwidth(device)
    all_results: List[Dict[str, object]] = []
    stem = f"ops-{device_slug(device)}-{info['date'][:10]}"
    for case in cases:
        print(f"  measuring {case.name} ...", flush=True)
        all_results.append(measure_case(case, device, bandwidth, skip))
        payload = {"machine": info, "bandwidth_bytes_per_s": bandwidth, "results": all_results}
        paths = write_results(stem, payload, report(info, bandwidth, all_results), out_dir, json_path, markdown_path)
    if paths:
        print("  wrote " + ", ".join(str(path) for path in paths))
    markdown = report(info, bandwidth, all_results)
    print(markdown)
    return markdown
