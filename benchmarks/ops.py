"""The operator benchmark: ddet_ops.multi_dynconv against the memory-bandwidth floor and the peers.

For every case, in one process: the copy bandwidth B of the device, then forward (without
autograd, and as in training) and backward (gradients of x and of the kernels) of

* ``ddet_ops``  - the fused kernels,
* ``unfold``    - ``ddet_ops.reference.multi_dynconv`` (F.unfold, what most people write),
* ``compiled``  - ``torch.compile`` of ``ddet_ops.reference.multi_dynconv(formulation="shift_add")``,
* ``kernels cast, then ddet_ops`` - for kernels of another dtype than x: what a library that
  refuses mixed dtypes makes its users write,
* ``torch.softmax, then ddet_ops`` - for a softmax over the taps: the softmax outside the op,

each as a multiple of its floor (docs/ops.md: bytes_fwd = N*H*W*(elem_k*sum groups*s^2 + 2*elem_x*C),
bytes_bwd = N*H*W*(2*elem_k*sum groups*s^2 + 3*elem_x*C), plus a softmax's log-normalisers,
divided by B), and the peak extra memory of one forward + backward.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import ddet_ops
from ddet_ops import reference

from .common import copy_bandwidth, device_slug, machine, markdown_table, median_time, peak_extra_memory, write_results

SIZES = (3, 5, 7)


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int, int]
    groups: int = 1
    dtype: str = "float32"
    sizes: tuple[int, ...] = SIZES
    kernel_dtype: str | None = None  # None: x's dtype
    normalize: str | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def torch_kernel_dtype(self) -> torch.dtype:
        return getattr(torch, self.kernel_dtype or self.dtype)

    def kernel_channels(self) -> int:
        return self.groups * sum(s * s for s in self.sizes)

    def _elements(self) -> tuple[int, int, int]:
        """Bytes per value of x and of the kernels, and bytes per pixel of the log-normalisers."""
        elem_x = torch.empty((), dtype=self.torch_dtype).element_size()
        elem_k = torch.empty((), dtype=self.torch_kernel_dtype).element_size()
        sets = {None: 0, "softmax": 1, "softmax_per_size": len(self.sizes)}[self.normalize]
        return elem_x, elem_k, 4 * self.groups * sets

    def floor_bytes(self) -> tuple[int, int]:
        n, c, h, w = self.shape
        elem_x, elem_k, lse = self._elements()
        taps = self.kernel_channels()
        return n * h * w * (elem_k * taps + 2 * elem_x * c + lse), n * h * w * (
            2 * elem_k * taps + 3 * elem_x * c + lse
        )

    def output_bytes(self) -> int:
        """What one forward + backward returns: y, grad_x and the kernel gradients."""
        n, c, h, w = self.shape
        elem_x, elem_k, _ = self._elements()
        return n * h * w * (2 * elem_x * c + elem_k * self.kernel_channels())


HEADLINE = (1, 3, 1024, 1024)
CPU_CASES = [
    Case("headline 1x3x1024x1024", HEADLINE),
    Case("headline bf16", HEADLINE, dtype="bfloat16"),
    Case("headline fp16", HEADLINE, dtype="float16"),
    Case("headline fp32 x, bf16 kernels", HEADLINE, kernel_dtype="bfloat16"),
    Case("headline softmax", HEADLINE, normalize="softmax"),
    Case("headline softmax per size", HEADLINE, normalize="softmax_per_size"),
    Case("headline softmax, fp32 x, bf16 kernels", HEADLINE, kernel_dtype="bfloat16", normalize="softmax"),
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

QUICK_CASES = [
    Case("quick 1x3x64x64", (1, 3, 64, 64)),
    Case("quick 2x4x32x32 g4", (2, 4, 32, 32), groups=4),
    Case("quick fp32 x, bf16 kernels", (1, 3, 32, 32), kernel_dtype="bfloat16"),
    Case("quick softmax per size g3", (1, 3, 32, 32), groups=3, normalize="softmax_per_size"),
]


def implementations(case: Case, backend: str = "inductor") -> dict[str, Callable]:
    native = dict(sizes=case.sizes, groups=case.groups, compute_dtype=case.torch_dtype, normalize=case.normalize)
    op = functools.partial(ddet_ops.multi_dynconv, sizes=case.sizes, groups=case.groups)
    # Every case compiles the same Python function anew (two graphs: with and without autograd);
    # without a reset, the cases together pass dynamo's recompile limit and fullgraph fails.
    torch._dynamo.reset()
    # The backward is timed by calling it again on a retained graph, which a compiled backward that
    # donates its saved buffers refuses (it is compiled at its first call, so the setting stays on).
    torch._functorch.config.donated_buffer = False
    compiled = torch.compile(
        functools.partial(reference.multi_dynconv, formulation="shift_add", **native),
        fullgraph=True,
        dynamic=False,
        backend=backend,
    )
    impls = {"ddet_ops": functools.partial(op, normalize=case.normalize)}
    if case.kernel_dtype not in (None, case.dtype):
        impls[CAST_PEER] = lambda x, kernels: impls["ddet_ops"](x, kernels.to(x.dtype))
    if case.normalize is not None:
        impls[SOFTMAX_PEER] = lambda x, kernels: op(x, softmax_then(kernels, case))
    return {**impls, "unfold": functools.partial(reference.multi_dynconv, **native), "compiled": compiled}


CAST_PEER = "kernels cast, then ddet_ops"
SOFTMAX_PEER = "torch.softmax, then ddet_ops"


def softmax_then(kernels: torch.Tensor, case: Case) -> torch.Tensor:
    """The packed kernels through torch.softmax as ``normalize=case.normalize`` does inside the op."""
    per_size = reference.normalized_kernels([kernels], case.sizes, case.groups, case.normalize, kernels.dtype)
    return torch.cat(per_size, dim=1)


# Largest difference from ddet_ops' outputs a peer may show, as a fraction of each output's largest
# |value|: the peers compute in the case's dtype, so half types round every partial sum (with
# kernels of another dtype, the looser of the two: their gradients are rounded to it).
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
CACHE_OFF = "ddet_ops, cache off"


def measure_case(case: Case, device: torch.device, bandwidth: float, skip: Sequence[str] = ()) -> dict[str, object]:
    """Times every implementation on one case, after checking that each gives ddet_ops' outputs."""
    x, kernels, grad_y = case_inputs(case, device)
    x.requires_grad_(True)
    kernels.requires_grad_(True)
    floor_fwd, floor_bwd = (b / bandwidth for b in case.floor_bytes())
    results: dict[str, object] = {
        "case": asdict(case),
        "floor_fwd_s": floor_fwd,
        "floor_bwd_s": floor_bwd,
        "output_bytes": case.output_bytes(),
        "impls": {},
    }
    expected = None
    for name, fn in implementations(case).items():
        if name in skip:
            continue
        outputs = forward_and_gradients(fn, x, kernels, grad_y)
        if expected is None:
            expected = outputs
        difference = largest_difference(outputs, expected)
        tolerance = max(TOLERANCE[case.dtype], TOLERANCE[case.kernel_dtype or case.dtype])
        if difference > tolerance:
            raise RuntimeError(
                f"{case.name}: {name} differs from ddet_ops by {difference:.1e} of the largest value "
                f"(tolerance {tolerance:.0e}); its timings would compare different results"
            )
        results["impls"][name] = {**time_implementation(fn, x, kernels, grad_y, device), "difference": difference}
        if name == "ddet_ops" and device.type == "cpu":
            results["impls"][CACHE_OFF] = time_without_cpu_cache(case)
    return results


def forward_and_gradients(fn: Callable, x: torch.Tensor, kernels: torch.Tensor, grad_y: torch.Tensor) -> tuple:
    y = fn(x, kernels)
    return (y.detach(), *torch.autograd.grad(y, (x, kernels), grad_y))


def largest_difference(outputs: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """The largest |difference| of any output from its expected value, as a fraction of the expected
    output's largest |value|."""
    return max(
        ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max().clamp_min(1e-30)).item()
        for ours, theirs in zip(outputs, expected, strict=True)
    )


def time_implementation(
    fn: Callable, x: torch.Tensor, kernels: torch.Tensor, grad_y: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """Median times of the forward (without autograd, and as in training) and the backward, and
    the peak extra memory of one forward + backward."""
    # torch.compile builds a different graph with and without autograd, and they need not run alike.
    with torch.no_grad():
        forward = median_time(functools.partial(fn, x, kernels), device)
    training_forward = median_time(functools.partial(fn, x, kernels), device)
    y = fn(x, kernels)
    backward = median_time(functools.partial(torch.autograd.grad, y, (x, kernels), grad_y, retain_graph=True), device)
    del y
    peak = peak_extra_memory(lambda: torch.autograd.grad(fn(x, kernels), (x, kernels), grad_y), device)
    return {
        "forward_s": forward,
        "training_forward_s": training_forward,
        "backward_s": backward,
        "peak_extra_bytes": peak,
    }


def time_without_cpu_cache(case: Case) -> dict[str, float]:
    """ddet_ops timed as above in a child process with its CPU block cache off
    (DDET_OPS_CPU_CACHE_MB=0, read once per process), so that its outputs are fresh memory
    every call, as the peers' are."""
    code = (
        "import json, sys, torch; sys.path.append(sys.argv[1]); from benchmarks import ops; "
        "torch.set_num_threads(int(sys.argv[3])); "
        "print(json.dumps(ops.time_case_in_this_process(ops.Case(**json.loads(sys.argv[2])))))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), json.dumps(asdict(case)), str(torch.get_num_threads())],
        env={**os.environ, "DDET_OPS_CPU_CACHE_MB": "0"},
        cwd=Path(__file__).parent,  # as for the benchmark scripts: the installed ddet_ops, not the source folder
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case.name}: timing ddet_ops with its CPU cache off failed: {done.stderr.strip()}")
    return {**json.loads(done.stdout.splitlines()[-1]), "difference": 0.0}


def time_case_in_this_process(case: Case) -> dict[str, float]:
    """ddet_ops' timings on the CPU (see :func:`time_without_cpu_cache`)."""
    x, kernels, grad_y = case_inputs(case, torch.device("cpu"))
    fn = implementations(case)["ddet_ops"]
    return time_implementation(fn, x.requires_grad_(True), kernels.requires_grad_(True), grad_y, torch.device("cpu"))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def summary_rows(all_results: list[dict[str, object]]) -> list[list[object]]:
    rows = []
    for res in all_results:
        ours = res["impls"].get("ddet_ops")
        for name, r in res["impls"].items():
            peak = r["peak_extra_bytes"]
            rows.append(
                [
                    res["case"]["name"],
                    name,
                    _ms(r["forward_s"]),
                    f"{r['forward_s'] / res['floor_fwd_s']:.2f}",
                    _ms(r["training_forward_s"]),
                    _ms(r["backward_s"]),
                    f"{r['backward_s'] / res['floor_bwd_s']:.2f}",
                    "n/a" if peak is None else f"{peak / 1e6:.0f}",
                    f"{r['forward_s'] / ours['forward_s']:.1f}x" if ours else "",
                    f"{r['training_forward_s'] / ours['training_forward_s']:.1f}x" if ours else "",
                    f"{r['backward_s'] / ours['backward_s']:.1f}x" if ours else "",
                    f"{r['difference']:.0e}",
                ]
            )
    return rows


HEADERS = [
    "case",
    "impl",
    "fwd ms",
    "fwd / floor",
    "train-fwd ms",
    "bwd ms",
    "bwd / floor",
    "peak extra MB",
    "fwd vs ddet_ops",
    "train-fwd vs ddet_ops",
    "bwd vs ddet_ops",
    "max diff",
]


def report(info: dict[str, object], bandwidth: float, all_results: list[dict[str, object]]) -> str:
    who = info.get("gpu", info["cpu"])
    header = (
        f"ddet_ops operator benchmark on {who} ({info['device']}, {info['torch_threads']} threads), "
        f"torch {info['torch']}, commit {info['commit']}, {info['date']}.\n"
        f"Copy bandwidth B = {bandwidth / 1e9:.1f} GB/s (read + write). Floors: bytes / B. "
        f"Times are medians; fwd: no autograd (inference), train-fwd: inputs require grad; "
        f"'vs ddet_ops' = that implementation's time / ddet_ops' time. Max diff: the largest difference of "
        f"its output, grad_x or kernel gradients from ddet_ops', as a fraction of that output's largest "
        f"|value|, checked before timing (at most {TOLERANCE['float32']:.0e} in float32).\n"
    )
    if info["device"] == "cpu":
        header += (
            f"'{CACHE_OFF}': ddet_ops with DDET_OPS_CPU_CACHE_MB=0 (its outputs in fresh memory every call, "
            f"as the peers' are), timed in a child process during the same run.\n"
        )
    return header + "\n" + markdown_table(HEADERS, summary_rows(all_results))


def run(
    device: torch.device,
    cases: list[Case] | None = None,
    skip: Sequence[str] = (),
    out_dir: str | None = None,
    json_path: str | None = None,
    markdown_path: str | None = None,
) -> str:
    """Runs the cases, prints the results and writes them where asked; returns the markdown table.

    The files are rewritten after every case, so a run stopped by a time limit keeps what it measured."""
    if cases is None:
        cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    info = machine(device)
    bandwidth = copy_bandwidth(device)
    all_results: list[dict[str, object]] = []
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


# Op-only kernel timings (tools/gpu_check.sh): the raw ops, no autograd, CUDA events, on the
# cases of the GPU targets. grad_x and the kernel gradients are timed apart and together.
KERNEL_CASES = [
    Case(f"{shape_name} {dtype}", shape, groups=groups, dtype=dtype)
    for dtype in ("float32", "bfloat16", "float16")
    for shape_name, shape, groups in [
        ("1x3x1024x1024 g1", (1, 3, 1024, 1024), 1),
        ("1x64x256x256 g64", (1, 64, 256, 256), 64),
        ("1x64x256x256 g1", (1, 64, 256, 256), 1),
    ]
]
# The v2-only features on the headline shape: kernels read in another dtype than x, and the fused
# softmax (the v1 timings leave these out).
KERNEL_CASES += [
    Case("1x3x1024x1024 g1 float32, bfloat16 kernels", (1, 3, 1024, 1024), kernel_dtype="bfloat16"),
    Case("1x3x1024x1024 g1 float32 softmax", (1, 3, 1024, 1024), normalize="softmax"),
    Case("1x3x1024x1024 g1 float32 softmax per size", (1, 3, 1024, 1024), normalize="softmax_per_size"),
    Case("1x3x1024x1024 g1 bfloat16 softmax", (1, 3, 1024, 1024), dtype="bfloat16", normalize="softmax"),
]
DRY_RUN_CASES = [
    Case("dry 1x3x16x20 float32", (1, 3, 16, 20)),
    Case("dry 1x4x8x8 g4 bfloat16", (1, 4, 8, 8), 4, "bfloat16"),
    Case("dry 1x3x16x20 float32 softmax per size", (1, 3, 16, 20), normalize="softmax_per_size"),
]


def v1_has(case: Case) -> bool:
    """Whether the v1 kernels time this case: they read neither mixed dtypes nor a softmax."""
    return case.normalize is None and case.kernel_dtype is None


PASSES = {"forward": (None, None), "grad_x": (True, False), "grad_k": (False, True), "grad_both": (True, True)}


def read_bandwidth(device: torch.device, nbytes: int = 512 * 2**20) -> float:
    """Bytes per second of a reduction over a large tensor: what reading alone can reach."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    return nbytes / median_time(lambda: src.sum(), device, min_repeats=7, budget_s=2.0, warmup=2)


def case_inputs(case: Case, device: torch.device):
    gen = torch.Generator(device=device).manual_seed(0)
    n, c, h, w = case.shape
    x = torch.randn(case.shape, device=device, generator=gen).to(case.torch_dtype)
    kernels = torch.randn((n, case.kernel_channels(), h, w), device=device, generator=gen) / 10
    kernels = kernels.to(case.torch_kernel_dtype)
    grad_y = torch.randn(case.shape, device=device, generator=gen).to(case.torch_dtype)
    return x, kernels, grad_y


def _pass_functions(case: Case, x, kernels, grad_y) -> dict[str, object]:
    """Each pass of the raw ops (no autograd) as a function of nothing: the softmax ops, with the
    forward's log-normalisers, for a case with a softmax."""
    args = ([kernels], list(case.sizes), case.groups, 1)
    op = torch.ops.ddet_ops
    if case.normalize is None:
        forward = functools.partial(op.multi_dynconv, x, *args)
        backward = functools.partial(op.multi_dynconv_backward, grad_y, x, *args)
    else:
        per_size = case.normalize == "softmax_per_size"
        forward = functools.partial(op.multi_dynconv_softmax, x, *args, per_size)
        lse = forward()[1]
        backward = functools.partial(op.multi_dynconv_softmax_backward, grad_y, x, [kernels], lse, *args[1:], per_size)
    return {
        name: forward if need_x is None else functools.partial(backward, need_x, need_k)
        for name, (need_x, need_k) in PASSES.items()
    }


def time_kernels(case: Case, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each pass of the raw ops on one case."""
    functions = _pass_functions(case, *case_inputs(case, device))
    return {
        name: median_time(fn, device, min_repeats=repeats, max_repeats=repeats, budget_s=0.0, warmup=3)
        for name, fn in functions.items()
    }


def kernel_bytes(case: Case) -> dict[str, int]:
    """The fewest bytes each pass must move (Case.floor_bytes): grad_x and the kernel gradients
    alone each move what the forward does."""
    forward, backward = case.floor_bytes()
    return {"forward": forward, "grad_x": forward, "grad_k": forward, "grad_both": backward}


def run_kernel_timings(device: torch.device, cases: list[Case], repeats: int, json_path: str, variant: str) -> None:
    """Times every case, rewriting json_path after each so a stopped run keeps what it measured."""
    payload: dict[str, object] = {
        "machine": machine(device),
        "variant": variant,
        "copy_bytes_per_s": copy_bandwidth(device),
        "read_bytes_per_s": read_bandwidth(device),
        "repeats": repeats,
        "results": [],
    }
    for case in cases:
        times = time_kernels(case, device, repeats)
        payload["results"].append({"case": asdict(case), "seconds": times, "bytes": kernel_bytes(case)})
        write_json(json_path, payload)
        print(f"  {variant} {case.name}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in times.items()), flush=True)


def time_peers(case: Case, device: torch.device, repeats: int, backend: str) -> dict[str, dict[str, float]]:
    """Forward and backward (grads of x and the kernels) of ddet_ops and the two peers, inputs
    requiring grad throughout so that torch.compile compiles one graph pair per dtype."""
    x, kernels, grad_y = case_inputs(case, device)
    x.requires_grad_(True)
    kernels.requires_grad_(True)
    out = {}
    for name, fn in implementations(case, backend).items():
        forward = median_time(
            functools.partial(fn, x, kernels), device, min_repeats=repeats, max_repeats=repeats, budget_s=0.0
        )
        y = fn(x, kernels)
        backward = median_time(
            functools.partial(torch.autograd.grad, y, (x, kernels), grad_y, retain_graph=True),
            device,
            min_repeats=repeats,
            max_repeats=repeats,
            budget_s=0.0,
        )
        del y
        out[name] = {"forward": forward, "backward": backward}
        print(
            f"  peers {case.name} {name}: forward {forward * 1e3:.3f} ms, backward {backward * 1e3:.3f} ms", flush=True
        )
    return out


def run_peers(device: torch.device, cases: list[Case], repeats: int, json_path: str, backend: str = "inductor") -> None:
    payload: dict[str, object] = {"machine": machine(device), "compile_backend": backend, "results": []}
    for case in cases:
        payload["results"].append({"case": asdict(case), "seconds": time_peers(case, device, repeats, backend)})
        write_json(json_path, payload)


def write_json(path: str, payload: dict[str, object]) -> None:
    """Atomic: a reader (or a run stopped mid-write) never sees half a file."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(target)


def _efficiency(result: dict[str, object], name: str, copy: float) -> float:
    """The pass's floor bytes per second as a fraction of the copy bandwidth."""
    return result["bytes"][name] / result["seconds"][name] / copy


def _by_name(timings: dict[str, object] | None) -> dict[str, dict[str, object]]:
    return {result["case"]["name"]: result for result in (timings or {}).get("results", [])}


def kernel_table(v1: dict[str, object], v2: dict[str, object] | None) -> str:
    """One row per case and pass; cases only v2 times have empty v1 cells."""
    copy = (v2 or v1)["copy_bytes_per_s"]
    old_results, new_results = _by_name(v1), _by_name(v2)
    rows = []
    for case_name in list(old_results) + [name for name in new_results if name not in old_results]:
        old, new = old_results.get(case_name), new_results.get(case_name)
        for name in PASSES:
            cells = [case_name, name]
            cells += [_ms(old["seconds"][name]), f"{_efficiency(old, name, copy):.0%}"] if old else ["", ""]
            if v2:
                cells += [_ms(new["seconds"][name]), f"{_efficiency(new, name, copy):.0%}"] if new else ["", ""]
                cells.append(f"{old['seconds'][name] / new['seconds'][name]:.2f}x" if old and new else "")
            rows.append(cells)
    headers = ["case", "pass", "v1 ms", "v1 % of copy", "v2 ms", "v2 % of copy", "v2 speed-up"]
    return markdown_table(headers[: len(rows[0])] if rows else headers, rows)


def _raw_counterpart(results: dict[str, dict[str, object]], case: dict[str, object], **raw) -> dict[str, object] | None:
    """The result of the same shape, groups and dtype as `case` with the fields in `raw` changed."""
    fields = ("shape", "groups", "dtype", "kernel_dtype", "normalize")
    want = {field: case.get(field) for field in fields} | raw
    for result in results.values():
        if {field: result["case"].get(field) for field in fields} == want:
            return result
    return None


def targets(v1: dict[str, object], v2: dict[str, object], peers: dict[str, object] | None) -> list[list[str]]:
    """The GPU targets, each with what was measured and PASS or FAIL."""
    copy, checks = v2["copy_bytes_per_s"], []

    def check(what: str, value: float, goal: float, text: str, at_most: bool = False) -> None:
        checks.append([what, text, "PASS" if (value <= goal if at_most else value >= goal) else "FAIL"])

    old_results, new_results = _by_name(v1), _by_name(v2)
    for name, new in new_results.items():
        dtype, old = new["case"]["dtype"], old_results.get(name)
        if new["case"].get("normalize") or new["case"].get("kernel_dtype"):
            checks += _feature_targets(new_results, new)
            continue
        if new["case"]["groups"] == 1 and new["case"]["shape"][1] >= 8:
            ratio = new["seconds"]["forward"] / (new["bytes"]["forward"] / copy)
            check(f"{name}: forward <= 2x floor", ratio, 2.0, f"{ratio:.2f}x", at_most=True)
            continue
        fwd, bwd = _efficiency(new, "forward", copy), _efficiency(new, "grad_both", copy)
        check(f"{name}: forward >= 80% of copy", fwd, 0.80, f"{fwd:.0%}")
        goal = 0.65 if dtype in ("float32", "float64") else 0.60
        check(f"{name}: backward >= {goal:.0%} of copy", bwd, goal, f"{bwd:.0%}")
        if old:
            speedup = old["seconds"]["forward"] / new["seconds"]["forward"]
            check(f"{name}: v2 forward >= 1.5x v1", speedup, 1.5, f"{speedup:.2f}x")
    for entry in (peers or {}).get("results", []):
        ours = entry["seconds"]["ddet_ops"]
        for peer, goal in (("compiled", 1.5), ("unfold", 8.0)):
            for pass_name in ("forward", "backward"):
                if peer in entry["seconds"]:
                    ratio = entry["seconds"][peer][pass_name] / ours[pass_name]
                    check(f"{entry['case']['name']}: {pass_name} >= {goal}x {peer}", ratio, goal, f"{ratio:.1f}x")
    return checks


def _feature_targets(results: dict[str, dict[str, object]], new: dict[str, object]) -> list[list[str]]:
    """A fused softmax against the raw op of its dtypes (forward and both backward halves within
    1.4x), kernels of a half type under float32 x against float32 kernels (0.65x forward, 0.7x
    backward): the operator issue's targets, judged on this GPU's timings."""
    case, name, checks = new["case"], new["case"]["name"], []
    if case.get("normalize"):
        raw, goals, label = _raw_counterpart(results, case, normalize=None), (1.4, 1.4), "the raw op"
    else:
        raw, goals, label = _raw_counterpart(results, case, kernel_dtype=None), (0.65, 0.7), "float32 kernels"
    for pass_name, goal in zip(("forward", "grad_both"), goals, strict=True):
        if raw is None:
            checks.append([f"{name}: {pass_name} <= {goal}x {label}", "no timing of it", "FAIL"])
            continue
        ratio = new["seconds"][pass_name] / raw["seconds"][pass_name]
        checks.append([f"{name}: {pass_name} <= {goal}x {label}", f"{ratio:.2f}x", "PASS" if ratio <= goal else "FAIL"])
    return checks


def kernel_report(v1: dict[str, object], v2: dict[str, object] | None, peers: dict[str, object] | None) -> str:
    info = (v2 or v1)["machine"]
    text = (
        f"ddet_ops kernels on {info.get('gpu', info['cpu'])}, torch {info['torch']}, commit {info['commit']}, "
        f"{info['date']}. Copy {(v2 or v1)['copy_bytes_per_s'] / 1e9:.0f} GB/s, read "
        f"{(v2 or v1)['read_bytes_per_s'] / 1e9:.0f} GB/s; medians of {v1['repeats']} "
        f"{'CUDA-event' if info['device'].startswith('cuda') else 'wall-clock'} timings of the raw ops; "
        f"% of copy = the pass's floor bytes / time / copy bandwidth.\n\n"
    )
    text += kernel_table(v1, v2) + "\n"
    if v2:
        text += "\n" + markdown_table(["target", "measured", "result"], targets(v1, v2, peers)) + "\n"
    return text


def kernel_variant(device: torch.device) -> str:
    """Which CUDA kernels this process runs (DDET_OPS_CUDA_KERNELS, read once by the extension)."""
    return ddet_ops.cuda_kernels() if device.type == "cuda" else "cpu"
