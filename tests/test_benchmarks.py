"""Tests of benchmarks/bench_dynconv.py: Table III, the DDet breakdown and the operator benchmark
run end to end with --quick on the CPU, and the pieces they are built from."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddet_ops
from ddet import models

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_dynconv.py"
# benchmarks/ is a folder of the repository, not an installed package; appended (as the script
# does) so that the installed ddet_ops still wins over the source folder of that name.
sys.path.append(str(ROOT))

from benchmarks import bench_dynconv, breakdown, paper, reproduce, table3  # noqa: E402


def bench(*args: str) -> subprocess.CompletedProcess:
    """The script as a user runs it, from its own path."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def quick_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("table3")
    done = bench("--quick", "--json", str(out / "t.json"), "--markdown", str(out / "t.md"))
    assert done.returncode == 0, done.stderr
    return done, json.loads((out / "t.json").read_text()), (out / "t.md").read_text()


def test_quick_table_has_every_model_of_the_paper(quick_table):
    done, payload, markdown = quick_table
    assert [row["model"] for row in payload["rows"]] == list(table3.PAPER_TABLE3)
    for row in payload["rows"]:
        assert row["seconds_per_frame"] > 0
        assert row["mb"] == pytest.approx(models.size_mb(models.create(row["model"])))
        assert f"(`{row['model']}`)" in markdown
    assert set(payload["machine"]) >= {"cpu", "cpu_cores", "torch", "commit", "date", "device"}
    # The markdown table is the last thing printed.
    assert done.stdout.rstrip().splitlines()[-1] == markdown.rstrip().splitlines()[-1]


def test_sizes_within_3_percent_of_table_iii_where_the_architecture_is_the_papers(quick_table):
    _, payload, _ = quick_table
    checked = {row["model"]: row["mb_deviation"] for row in payload["rows"] if row["paper_architecture"]}
    assert set(checked) == set(table3.PAPER_ARCHITECTURES)
    assert all(abs(deviation) <= table3.MB_TOLERANCE for deviation in checked.values()), checked


def test_paper_figures_are_only_those_of_a_source():
    for name, row in table3.PAPER_TABLE3.items():
        assert name in models.names()
        assert row.mb > 0
        # Figures left out are None, never a placeholder number.
        assert (row.seconds_per_frame is None) == (row.psnr_x3 is None) == (name not in paper.TABLE3)


def test_the_papers_tables_agree_with_each_other():
    """Table III's x3 PSNR column is Table I's, and Table II's last rung is DDet of Table I: a figure
    mistyped in one place shows up against the other."""
    assert set(paper.TABLE3) == set(paper.TABLE1) and set(paper.TABLE2_X2_PSNR) <= set(models.names())
    for name, row in paper.TABLE3.items():
        assert row.psnr_x3 == paper.TABLE1[name][3].psnr, name
    assert paper.TABLE2_X2_PSNR["ddet"] == paper.TABLE1["ddet"][2].psnr
    assert list(paper.TABLE2_X2_PSNR.values()) == sorted(paper.TABLE2_X2_PSNR.values())  # each rung adds


def test_frame_within_budget():
    assert table3.frame_within_budget((256, 256), (32, 32), 0.01, 4, 10.0) == (256, 256)
    reduced = table3.frame_within_budget((256, 512), (32, 32), 0.1, 4, 10.0)
    assert reduced[0] < 256 and reduced[1] < 512
    assert all(side % table3.FRAME_MULTIPLE == 0 for side in reduced)
    assert 0.1 / 32**2 * reduced[0] * reduced[1] * 4 <= 10.0
    assert table3.frame_within_budget((20, 20), (20, 20), 100.0, 4, 1.0) == (16, 16)


def test_a_model_over_budget_runs_on_a_reduced_frame_and_is_marked(tmp_path):
    done = bench("--quick", "--models", "kpn5", "--frame", "64x64", "--budget", "1e-6")
    assert done.returncode == 0, done.stderr
    row = done.stdout.rstrip().splitlines()[-1]
    assert row.startswith("| KPN, K = 5") and "16x16 (reduced)" in row


def test_autocast_and_channels_last_on_the_cpu_are_saved_under_their_own_name(tmp_path):
    json_path = tmp_path / "t.json"
    done = bench(
        "--quick",
        "--models",
        "ddet",
        "--dtype",
        "bf16",
        "--channels-last",
        "--json",
        str(json_path),
        "--markdown",
        str(tmp_path / "t.md"),
    )
    assert done.returncode == 0, done.stderr
    assert "bf16, channels_last" in done.stdout and done.stdout.rstrip().splitlines()[-1].startswith("| DDet")
    payload = json.loads(json_path.read_text())
    assert table3.stem(torch.device("cpu"), payload).startswith("table3-cpu-bf16-channels-last-")


def test_plot(tmp_path):
    png = tmp_path / "t.png"
    done = bench("--quick", "--models", "kpn5", "ddet", "--plot", str(png))
    if importlib.util.find_spec("matplotlib") is None:
        assert done.returncode != 0 and "pip install matplotlib" in done.stderr
        assert not png.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--dtype", "int8"], "invalid choice"),
    (["--frame", "64"], "HxW"),
    (["--models", "nonet"], "invalid choice"),
    (["--breakdown", "--ops"], "not allowed with"),
])  # fmt: skip
def test_bad_arguments_are_refused_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit):
        bench_dynconv.parse_args(args)
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_fails_clearly():
    done = bench("--quick", "--device", "cuda")
    assert done.returncode != 0 and "no CUDA device" in done.stderr


def test_quick_breakdown(tmp_path):
    done = bench("--quick", "--breakdown", "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md"))
    assert done.returncode == 0, done.stderr
    payload = json.loads((tmp_path / "b.json").read_text())
    for shares in payload["shares"].values():
        assert shares["multi_dynconv"] > 0 and shares["convolution"] > 0
        assert sum(shares[group] for group in breakdown.GROUPS) == pytest.approx(shares["total"])
    for impl in ("ddet_ops", "unfold reference"):
        assert set(payload["impls"][impl]) == {"forward", "training step", breakdown.MDA_STAGE}
        assert all(r["seconds"] > 0 for r in payload["impls"][impl].values())
    assert done.stdout.rstrip().splitlines()[-1].startswith(f"| {breakdown.MDA_STAGE}")


@pytest.mark.parametrize("name, group", [
    ("ddet_ops::multi_dynconv", "multi_dynconv"),
    ("ddet_ops::multi_dynconv_backward", "multi_dynconv"),
    ("GeneratedBackwardFor_ddet_ops_multi_dynconv_default", "multi_dynconv"),
    ("aten::mkldnn_convolution", "convolution"),
    ("aten::cudnn_convolution", "convolution"),
    ("aten::convolution_backward", "convolution"),
    ("aten::_slow_conv2d_forward", "convolution"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolution"),
    ("aten::_convert_element_type", "rest"),
    ("aten::pixel_shuffle", "rest"),
])  # fmt: skip
def test_op_groups(name, group):
    assert breakdown.op_group(name) == group


def test_unfold_reference_swaps_the_op_the_model_calls():
    torch.manual_seed(0)
    model = models.create("ddet", width=16, blocks=1, feature_width=16, branch_width=8).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        ours = model(x)
        with breakdown.unfold_reference():
            with torch.profiler.profile() as prof:
                theirs = model(x)
    assert not any("multi_dynconv" in event.key for event in prof.key_averages())
    torch.testing.assert_close(theirs, ours)
    assert ddet_ops.multi_dynconv is ddet_ops.ops.multi_dynconv  # restored on leaving


def test_unfold_reference_refuses_a_measurement_that_never_reached_it():
    with pytest.raises(RuntimeError, match="never called"):
        with breakdown.unfold_reference():
            pass


def test_quick_ops_benchmark_runs_with_the_op_cache_off_beside_it():
    committed = sorted((ROOT / "benchmarks" / "results").iterdir())
    done = bench("--ops", "--quick", "--skip", "compiled")
    assert done.returncode == 0, done.stderr
    assert "wrote" not in done.stdout and sorted((ROOT / "benchmarks" / "results").iterdir()) == committed
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| quick 1x3x64x64 |")]
    by_impl = {row[2].strip(): row for row in rows}
    assert set(by_impl) == {"ddet_ops", "ddet_ops, cache off", "unfold"}
    assert float(by_impl["unfold"][-2]) <= 1e-4  # the max-diff column, checked during the run
    peers = {line.split("|")[2].strip() for line in done.stdout.splitlines() if line.startswith("| quick ")}
    assert {"kernels cast, then ddet_ops", "torch.softmax, then ddet_ops"} <= peers


def test_autocast_step_benchmark_runs_and_writes_where_asked(tmp_path):
    script = str(ROOT / "benchmarks" / "bench_autocast.py")
    args = ["--model", "kpn5", "--batch", "2", "--patch", "16", "--repeats", "1", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| bf16 autocast, kernels read as they are |" in done.stdout
    assert "| bf16 autocast, kernels cast to float32 first |" in done.stdout
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]


def test_ops_benchmark_refuses_to_time_a_peer_with_other_results(monkeypatch):
    from benchmarks import ops

    right = ops.implementations

    def with_a_wrong_peer(case, backend="inductor"):
        impls = right(case, backend)
        return {"ddet_ops": impls["ddet_ops"], "off by 1%": lambda x, k: impls["ddet_ops"](x, k) * 1.01}

    monkeypatch.setattr(ops, "implementations", with_a_wrong_peer)
    with pytest.raises(RuntimeError, match=r"off by 1% differs from ddet_ops by 1\.0e-02"):
        ops.measure_case(ops.QUICK_CASES[0], torch.device("cpu"), 1e10)


def test_upscale_benchmark_runs_quick():
    script = str(ROOT / "benchmarks" / "bench_upscale.py")
    done = subprocess.run([sys.executable, script, "--quick"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Default vs previous default" in done.stdout and "| default: auto precision" in done.stdout


def test_data_benchmark_runs_quick_and_writes_where_asked(tmp_path):
    script = str(ROOT / "benchmarks" / "bench_data.py")
    done = subprocess.run(
        [sys.executable, script, "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "DecodedCache, warm" in done.stdout
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]
    assert sorted(line.strip() for line in done.stdout.splitlines() if "wrote" in line) == [
        f"wrote {path}" for path in sorted(tmp_path.iterdir())
    ]


def test_reproduction_quick_run_writes_tables_and_figure_and_resumes(tmp_path):
    script = str(ROOT / "benchmarks" / "reproduce.py")
    command = [
        sys.executable,
        script,
        "--runs",
        str(tmp_path / "runs"),
        "--quick",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(next((tmp_path / "out").glob("reproduce-*.json")).read_text())
    assert set(payload["scores"]) == set(reproduce.MODELS) and len(payload["claims"]) == len(reproduce.CLAIMS)
    for claim in payload["claims"]:
        assert claim["holds"] == (claim["our_gap_db"] > 0)
    assert next((tmp_path / "out").glob("reproduce-*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = next((tmp_path / "out").glob("reproduce-*.md")).read_text()
    assert "34.37" in markdown and "33.43" in markdown  # the paper's Table I and II figures beside ours
    logs = {name: (tmp_path / "runs" / name / "log.jsonl").read_text() for name in reproduce.MODELS}
    again = subprocess.run(command[:-2], capture_output=True, text=True, timeout=300)  # finished runs are not retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert {name: (tmp_path / "runs" / name / "log.jsonl").read_text() for name in reproduce.MODELS} == logs


def test_reproduction_budget_is_calibrated_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "seconds_per_step", lambda name, budget, scale: 0.5)
    base = dataclasses.replace(reproduce.QUICK, steps=0)
    budget = reproduce.settled_budget(tmp_path, base, None, hours=1.0, scale=2)
    assert budget.steps == int(3600 * (1 - reproduce.NON_TRAINING_SHARE) / (0.5 * len(reproduce.MODELS)))
    monkeypatch.setattr(reproduce, "seconds_per_step", lambda name, budget, scale: 5.0)
    assert reproduce.settled_budget(tmp_path, base, None, hours=1.0, scale=2) == budget  # a resumed run keeps it
    with pytest.raises(SystemExit, match=f"started with {budget.steps} steps"):
        reproduce.settled_budget(tmp_path, base, budget.steps + 1, hours=1.0, scale=2)


def test_one_training_step_is_timed():
    assert 0 < reproduce.seconds_per_step("kpn5", reproduce.QUICK, 2) < 60


def test_readme_reproduction_tables_match_the_committed_results():
    """The README's reproduction tables are rows of the report of the results file it names, and its
    count of the paper's orderings that hold is that file's."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- reproduce-results: (\S+) -->(.*?)<!-- /reproduce-results -->", readme, re.S)
    assert block, "README.md has no reproduction results block"
    payload = json.loads((ROOT / block.group(1)).read_text())
    report_rows = {line for line in reproduce.report(payload).splitlines() if line.startswith("|")}
    shown_rows = [line for line in block.group(2).splitlines() if line.startswith("|")]
    assert len(shown_rows) > len(reproduce.MODELS) and set(shown_rows) <= report_rows
    held = sum(row["holds"] for row in payload["claims"])
    assert f"{held} of {len(payload['claims'])} of the paper's orderings hold" in block.group(2)
