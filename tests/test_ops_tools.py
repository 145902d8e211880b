"""The GPU check's pieces that run without a GPU: the ptxas resource report and the summary of
the kernel timings against the GPU targets."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ is a folder of the repository, not an installed package; appended so that the
# installed ddet_ops still wins over the source folder of that name.
sys.path.append(str(REPO))

from benchmarks import ops  # noqa: E402


@pytest.fixture(scope="module")
def ptxas_report(load_tool):
    return load_tool("ptxas_report")


LOG = """\
ptxas info    : Compiling entry function '_ZN8ddet_ops2v213gather_stripsILb0EfEEvNS_8GeometryE' for 'sm_90'
ptxas info    : Function properties for _ZN8ddet_ops2v213gather_stripsILb0EfEEvNS_8GeometryE
    {frame} bytes stack frame, {stores} bytes spill stores, {loads} bytes spill loads
ptxas info    : Used 128 registers, used 0 barriers
ptxas info    : Compiling entry function '_ZN8ddet_ops12_GLOBAL__N_114forward_kernelIfEEvNS_8GeometryE' for 'sm_90'
ptxas info    : Function properties for _ZN8ddet_ops12_GLOBAL__N_114forward_kernelIfEEvNS_8GeometryE
    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""


@pytest.mark.parametrize("frame,stores,loads,code", [(0, 0, 0, 0), (8, 0, 0, 1), (0, 4, 4, 1)])
def test_ptxas_report_fails_only_on_v2_kernels_that_spill(ptxas_report, tmp_path, capsys, frame, stores, loads, code):
    log = tmp_path / "build.log"
    log.write_text(LOG.format(frame=frame, stores=stores, loads=loads))
    assert ptxas_report.main([str(log)]) == code
    out = capsys.readouterr().out
    assert "| sm_90 | 128 |" in out and "| sm_90 | 40 | 16 | 8 | 8 |" in out  # v1's spills are reported, not fatal


def test_ptxas_report_refuses_a_log_without_resource_lines(ptxas_report, tmp_path):
    log = tmp_path / "build.log"
    log.write_text("nvcc -c csrc/cuda/dynconv_v2.cu\n")
    assert ptxas_report.main([str(log)]) == 1


def _timings(variant, seconds, copy=1e12):
    results = []
    for case in ops.KERNEL_CASES[:3]:
        results.append(
            {
                "case": {"name": case.name, "dtype": case.dtype, "groups": case.groups, "shape": list(case.shape)},
                "seconds": dict.fromkeys(ops.PASSES, seconds),
                "bytes": ops.kernel_bytes(case),
            }
        )
    return {
        "machine": {"gpu": "test GPU", "cpu": "", "torch": "x", "commit": "c", "date": "d", "device": "cuda"},
        "variant": variant,
        "copy_bytes_per_s": copy,
        "read_bytes_per_s": copy,
        "repeats": 30,
        "results": results,
    }


def test_targets_are_judged_from_the_floor_bytes_and_the_copy_bandwidth():
    v2 = _timings("v2", 1.0)
    headline = ops.KERNEL_CASES[0]
    floor_s = ops.kernel_bytes(headline)["forward"] / v2["copy_bytes_per_s"]
    v2["results"][0]["seconds"]["forward"] = floor_s / 0.81  # 81% of copy: passes 80%
    v2["results"][0]["seconds"]["grad_both"] = ops.kernel_bytes(headline)["grad_both"] / 1e12 / 0.64  # misses 65%
    v1 = _timings("v1", 1.0)
    v1["results"][0]["seconds"]["forward"] = 1.6 * v2["results"][0]["seconds"]["forward"]
    g1 = v2["results"][2]
    g1["seconds"]["forward"] = 2.5 * ops.kernel_bytes(ops.KERNEL_CASES[2])["forward"] / 1e12
    verdict = {row[0]: row[2] for row in ops.targets(v1, v2, None)}
    assert verdict[f"{headline.name}: forward >= 80% of copy"] == "PASS"
    assert verdict[f"{headline.name}: backward >= 65% of copy"] == "FAIL"
    assert verdict[f"{headline.name}: v2 forward >= 1.5x v1"] == "PASS"
    assert verdict[f"{ops.KERNEL_CASES[2].name}: forward <= 2x floor"] == "FAIL"


def test_report_tool_writes_the_summary_and_copes_with_missing_steps(load_tool, tmp_path, capsys):
    gpu_timings = load_tool("gpu_timings")
    (tmp_path / "v1.json").write_text(json.dumps(_timings("v1", 2e-3)))
    (tmp_path / "v2.json").write_text(json.dumps(_timings("v2", 1e-3)))
    summary = tmp_path / "summary.md"
    args = [
        "report",
        "--v1",
        str(tmp_path / "v1.json"),
        "--v2",
        str(tmp_path / "v2.json"),
        "--peers",
        str(tmp_path / "missing.json"),
        "--markdown",
        str(summary),
    ]
    assert gpu_timings.main(args) == 0
    text = summary.read_text()
    assert "test GPU" in text and "2.00x" in text and "| target | measured | result |" in text
    assert gpu_timings.main(["report", "--v1", str(tmp_path / "none.json"), "--markdown", str(summary)]) == 0
    assert "no kernel timings" in summary.read_text()


def test_softmax_and_mixed_cases_are_judged_against_their_raw_counterparts():
    """Cases only v2 times (a fused softmax, half-type kernels under float32 x) get table rows with
    empty v1 cells and are judged against the raw case of their shape and dtype."""
    v1, v2 = _timings("v1", 1.0), _timings("v2", 1.0)
    headline = v2["results"][0]
    for name, extra, seconds in [
        ("fused softmax", {"normalize": "softmax"}, 1.3),
        ("bf16 kernels", {"kernel_dtype": "bfloat16"}, 0.7),
    ]:
        case = {**headline["case"], "name": name, **extra}
        v2["results"].append({"case": case, "seconds": dict.fromkeys(ops.PASSES, seconds), "bytes": headline["bytes"]})
    verdict = {row[0]: row[2] for row in ops.targets(v1, v2, None)}
    assert verdict["fused softmax: forward <= 1.4x the raw op"] == "PASS"
    assert verdict["fused softmax: grad_both <= 1.4x the raw op"] == "PASS"
    assert verdict["bf16 kernels: forward <= 0.65x float32 kernels"] == "FAIL"
    assert verdict["bf16 kernels: grad_both <= 0.7x float32 kernels"] == "PASS"
    assert not any(target.startswith("fused softmax: v2 forward") for target in verdict)
    rows = [line for line in ops.kernel_table(v1, v2).splitlines() if line.startswith("| fused softmax | forward")]
    assert len(rows) == 1 and rows[0].startswith("| fused softmax | forward |  |  | 1300.00 |")
