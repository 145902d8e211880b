"""ddet export / ddet.export and ddet_ops.onnx: the exported graphs compute what the model does.

ONNX tests need the ``export`` extra (onnx, onnxscript, onnxruntime) and skip without it.
"""

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import ddet
import ddet_ops
from ddet import models
from ddet.cli import main
from ddet.weights import save_weights

TINY = {
    "ddet": {"width": 16, "blocks": 1, "feature_width": 16, "branch_width": 8},
    "kpn7": {"width": 16, "blocks": 1, "feature_width": 16},
    "lpkpn": {"width": 16, "blocks": 1, "feature_width": 16},
    "srresnet": {"width": 16, "blocks": 1},
}
ODD_SIZE = (97, 131)
REPOSITORY = Path(__file__).resolve().parents[1]
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs the export extra: pip install 'ddet[export]'")


def trained_like(name, **config):
    """A model whose every weight is moved off its initialisation: the identity-like starts of
    the networks would hide a wrong graph (a zero tail passes the input through)."""
    torch.manual_seed(0)
    model = models.create(name, **config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def run_onnx(path, *inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: value.numpy() for arg, value in zip(session.get_inputs(), inputs, strict=True)}
    return session.run(None, feeds)[0]


class MultiDynConv(torch.nn.Module):
    def __init__(self, sizes, groups, dilation, packed):
        super().__init__()
        self.sizes, self.groups, self.dilation, self.packed = sizes, groups, dilation, packed

    def forward(self, x, kernels):
        sizes = self.sizes if self.packed else None
        return ddet_ops.multi_dynconv(x, kernels, sizes, groups=self.groups, dilation=self.dilation)


@needs_onnx
@pytest.mark.parametrize(
    "sizes, groups, dilation, packed",
    [
        ((3, 5, 7), 1, 1, True),
        ((3, 5, 7), 2, 2, True),
        ((1, 3), 4, 1, False),
        ((9,), 1, 3, False),
        ((7, 5), 2, 1, False),
    ],
)
def test_onnx_decomposition_matches_the_op(tmp_path, sizes, groups, dilation, packed):
    import onnx

    import ddet_ops.onnx

    def inputs(n, h, w, channels=4):
        kernels = [torch.randn(n, groups * s * s, h, w) for s in sizes]
        return torch.randn(n, channels, h, w), torch.cat(kernels, 1) if packed else kernels

    torch.manual_seed(0)
    dynamic = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    x, kernels = inputs(2, 12, 16)
    module = MultiDynConv(sizes, groups, dilation, packed).eval()
    program = torch.onnx.export(
        module,
        (x, kernels),
        dynamo=True,
        custom_translation_table=ddet_ops.onnx.TRANSLATION_TABLE,
        dynamic_shapes=(dynamic, dynamic if packed else [dynamic] * len(sizes)),
        verbose=False,
    )
    onnx.checker.check_model(program.model_proto, full_check=True)
    program.save(str(tmp_path / "op.onnx"))
    x, kernels = inputs(3, 9, 21)  # another batch and an odd size: nothing of the example is baked in
    flat = [kernels] if packed else kernels
    expected = ddet_ops.reference.multi_dynconv(x, kernels, sizes if packed else None, groups=groups, dilation=dilation)
    np.testing.assert_allclose(run_onnx(tmp_path / "op.onnx", x, *flat), expected.numpy(), atol=1e-5, rtol=1e-5)


@needs_onnx
@pytest.mark.parametrize("per_size", [False, True], ids=["softmax", "softmax_per_size"])
def test_onnx_decomposition_of_the_fused_softmax_matches_the_op(tmp_path, per_size):
    """The softmax op's translation: y and lse, two groups, dilation 2, packed kernels."""
    import onnx

    import ddet_ops.onnx

    groups = 2
    softmax_op = _SoftmaxOp((3, 5), groups, per_size).eval()

    def inputs(n, h, w):
        return torch.randn(n, 4, h, w), 3 * torch.randn(n, groups * 34, h, w)

    torch.manual_seed(0)
    dynamic = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    program = torch.onnx.export(
        softmax_op,
        inputs(2, 12, 16),
        dynamo=True,
        custom_translation_table=ddet_ops.onnx.TRANSLATION_TABLE,
        dynamic_shapes=(dynamic, dynamic),
        verbose=False,
    )
    onnx.checker.check_model(program.model_proto, full_check=True)
    program.save(str(tmp_path / "softmax.onnx"))
    x, kernels = inputs(3, 9, 21)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "softmax.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    y, lse = session.run(None, dict(zip(names, (x.numpy(), kernels.numpy()), strict=True)))
    want_y, want_lse = softmax_op(x, kernels)
    np.testing.assert_allclose(y, want_y.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(lse, want_lse.numpy(), atol=1e-5, rtol=1e-5)


class _SoftmaxOp(torch.nn.Module):
    def __init__(self, sizes, groups, per_size):
        super().__init__()
        self.sizes, self.groups, self.per_size = list(sizes), groups, per_size

    def forward(self, x, kernels):
        return torch.ops.ddet_ops.multi_dynconv_softmax(x, [kernels], self.sizes, self.groups, 2, self.per_size)


def test_one_hot_taps_put_each_packed_tap_at_its_offset():
    onnx_module = pytest.importorskip("ddet_ops.onnx", reason="needs onnxscript")
    bank = onnx_module.one_hot_taps((3, 5))
    assert bank.shape == (9 + 25, 1, 5, 5) and (bank.sum(axis=(1, 2, 3)) == 1).all()
    assert bank[0, 0, 1, 1] == 1  # 3x3 tap (0, 0) sits one pixel in from the 5x5 corner
    assert bank[9 + 24, 0, 4, 4] == 1  # last 5x5 tap: the window's corner


@needs_onnx
@pytest.mark.slow  # a few seconds of export per model
@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_export_matches_eager_on_an_odd_size_and_batch(tmp_path, name):
    model = trained_like(name, **TINY[name])
    path = ddet.export(tmp_path / f"{name}.onnx", model=model)
    x = torch.rand(2, 1, *ODD_SIZE)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x), expected, atol=1e-4, rtol=0)


@needs_onnx
def test_cli_export_onnx_from_weights_and_refuse_overwrite(tmp_path, capsys):
    import onnx

    model = trained_like("ddet", **TINY["ddet"])
    weights = tmp_path / "tiny.safetensors"
    save_weights(weights, model.state_dict(), "ddet", TINY["ddet"], 2, "y")
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--weights", str(weights), "-o", str(out)]) == 0
    onnx.checker.check_model(str(out))
    x = torch.rand(1, 1, *ODD_SIZE)
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(out, x), model(x).numpy(), atol=1e-4, rtol=0)
    before = out.read_bytes()
    assert main(["export", "--weights", str(weights), "-o", str(out)]) == 2
    assert "tiny.onnx exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", "--weights", str(weights), "-o", str(out), "--force", "--dtype", "float16"]) == 0
    half = run_onnx(out, x.half())
    assert half.dtype == np.float16
    with torch.no_grad():
        np.testing.assert_allclose(half.astype(np.float32), model(x).numpy(), atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["-o", "{tmp}/model.txt"], "model.txt from its suffix"),
        (["-o", "{tmp}/model.onnx", "--format", "pt2"], "must be named *.pt2"),
        (["-o", "{tmp}/model.pt2", "--model", "kpn5"], "no bundled weights for model 'kpn5'"),
        (["-o", "{tmp}/model.pt2", "--weights", "{tmp}/missing.safetensors"], "missing.safetensors"),
        (["-o", "{tmp}", "--format", "onnx"], "is a folder"),
    ],
)
def test_cli_export_errors_name_the_bad_input(tmp_path, capsys, arguments, message):
    assert main(["export", *(a.format(tmp=tmp_path) for a in arguments)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert [p.name for p in tmp_path.iterdir()] == []


def test_cli_export_onnx_without_the_extra_says_which_to_install(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a)
    )
    assert main(["export", "-o", str(tmp_path / "model.onnx")]) == 2
    assert "onnxscript" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow  # tens of seconds of AOTInductor compilation per model
@pytest.mark.parametrize("name", ["ddet", "lpkpn"])  # lpkpn: strided and transposed depthwise convs
def test_pt2_package_runs_without_the_model_code(tmp_path, name):
    model = trained_like(name, **TINY[name])
    package = ddet.export(tmp_path / "tiny.pt2", model=model)
    x = torch.rand(2, 1, *ODD_SIZE)
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    # A fresh interpreter that imports ddet_ops (the op) but nothing of ddet (the model).
    script = textwrap.dedent(
        f"""
        import sys, torch, ddet_ops
        io = torch.load({str(tmp_path / "io.pt")!r})
        y = torch._inductor.aoti_load_package({str(package)!r})(io["x"])
        assert not any(name == "ddet" or name.startswith("ddet.") for name in sys.modules)
        print((y - io["y"]).abs().max().item())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPOSITORY)
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-4


def test_tensor_files_round_trip_with_their_shape(tmp_path):
    from ddet.deploy import read_tensor, write_tensor

    tensor = torch.randn(2, 1, 5, 3)
    write_tensor(tmp_path / "x.tensor", tensor)
    assert (tmp_path / "x.tensor").stat().st_size == 8 * 5 + 4 * tensor.numel()
    assert torch.equal(read_tensor(tmp_path / "x.tensor"), tensor)
