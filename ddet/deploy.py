"""Export a model for deployment: to ONNX, or to an AOTInductor package (pt2) for PyTorch without
the model's code, both with a dynamic batch, height and width.

>>> import ddet
>>> ddet.export("ddet_x2.onnx", scale=2)                             # the bundled ×2 weights
>>> ddet.export("kpn.pt2", weights="runs/kpn/best.safetensors")      # any trained model

The ONNX graph holds only standard operators: ``ddet_ops.onnx`` writes the dynamic-filtering op
as a one-hot ``Conv``, ``Mul`` and ``ReduceSum``, so any ONNX runtime runs it. The pt2 package
calls the op itself, so it needs ``ddet_ops`` loaded (``import ddet_ops`` in Python,
``libddet_ops.so`` from the CMake build in C++) but no model code:

>>> import ddet_ops, torch
>>> restore = torch._inductor.aoti_load_package("kpn.pt2")
>>> y = restore(x)                                                    # x: (N, C, H, W) float32
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch

from ddet.files import PathLike, atomic_write
from ddet.inference import resolve_model

__all__ = ["export", "export_format", "read_tensor", "write_tensor", "FORMATS", "EXPORT_EXTRA"]

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
EXPORT_EXTRA = "pip install 'ddet[export]'"
ONNX_PACKAGES = ("onnx", "onnxscript")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
# The example the graph is traced with. Its size is not baked in (batch, height and width are
# dynamic); it only has to avoid 0 and 1, which torch.export specialises on.
EXAMPLE_SHAPE = (2, 64, 64)


def export_format(path: PathLike, format: str | None = None) -> str:
    """``"onnx"`` or ``"pt2"``: ``format`` if given, else from the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if format is None:
        if suffix not in FORMATS:
            raise ValueError(
                f"cannot tell the format of {path} from its suffix: name it *.onnx or *.pt2, or pass --format"
            )
        return FORMATS[suffix]
    if format not in FORMATS.values():
        raise ValueError(f"unknown export format {format!r}: choose onnx or pt2")
    if format == "pt2" and suffix != ".pt2":
        raise ValueError(f"{path}: an AOTInductor package must be named *.pt2")
    return format


def _check_onnx_packages():
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs the {' and '.join(missing)} package(s): {EXPORT_EXTRA}")


def export(
    output: PathLike,
    *,
    model: str | torch.nn.Module | None = None,
    weights: PathLike | None = None,
    scale: int | None = None,
    format: str | None = None,
    dtype: str = "float32",
    force: bool = False,
) -> Path:
    """Write ``model`` to ``output`` as ONNX or pt2 (from the suffix, or ``format``); return its path.

    The network is the bundled DDet of ``scale`` (default ×2), the weights file ``weights`` (from
    ``ddet train``), or ``model``: a registry name with ``weights``, or an ``nn.Module``.
    ``dtype`` "float16" exports the network in half precision. An existing ``output`` is only
    replaced with ``force``; the file appears whole or not at all.
    """
    path = Path(output)
    kind = export_format(path, format)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose {' or '.join(DTYPES)}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; name the file to write")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (pass --force to overwrite)")
    if kind == "onnx":
        _check_onnx_packages()
    if isinstance(model, torch.nn.Module) and weights is not None:
        raise ValueError("pass weights= or a model object, not both")
    if isinstance(model, torch.nn.Module):
        network = copy.deepcopy(model)  # eval() and the dtype cast must not change the caller's model
    else:
        network = resolve_model(model, weights, scale, "cpu").model
    network = network.eval().to(DTYPES[dtype])
    example = torch.rand(EXAMPLE_SHAPE[0], network.in_channels, *EXAMPLE_SHAPE[1:], dtype=DTYPES[dtype])
    with torch.no_grad():
        (_write_onnx if kind == "onnx" else _write_pt2)(network, example, path)
    return path


def _dynamic_shapes():
    dynamic = torch.export.Dim.DYNAMIC
    return ({0: dynamic, 2: dynamic, 3: dynamic},)


def _write_onnx(network, example, path):
    import onnx

    import ddet_ops.onnx

    program = torch.onnx.export(
        network,
        (example,),
        dynamo=True,
        custom_translation_table=ddet_ops.onnx.TRANSLATION_TABLE,
        dynamic_shapes=_dynamic_shapes(),
        input_names=["image"],
        output_names=["restored"],
        verbose=False,
    )
    proto = program.model_proto
    onnx.checker.check_model(proto)
    atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))


def _write_pt2(network, example, path):
    program = torch.export.export(network, (example,), dynamic_shapes=_dynamic_shapes())
    with tempfile.TemporaryDirectory(prefix="ddet-export-") as folder:
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(folder) / "model.pt2"))
        atomic_write(path, lambda handle: handle.write(Path(package).read_bytes()))


def write_tensor(path: PathLike, tensor: torch.Tensor) -> None:
    """Write ``tensor`` as a .tensor file, the format of the C++ example (examples/cpp/run_pt2.cpp):
    int64 rank, int64 sizes, float32 values, little-endian; atomically."""
    values = tensor.detach().to(torch.float32).contiguous().numpy()
    header = np.array([values.ndim, *values.shape], dtype="<i8").tobytes()
    atomic_write(path, lambda handle: handle.write(header + values.astype("<f4").tobytes()))


def read_tensor(path: PathLike) -> torch.Tensor:
    """The float32 tensor of a .tensor file (see :func:`write_tensor`)."""
    payload = Path(path).read_bytes()
    rank = int(np.frombuffer(payload[:8], dtype="<i8")[0])
    shape = tuple(int(size) for size in np.frombuffer(payload[8 : 8 * (rank + 1)], dtype="<i8"))
    return torch.from_numpy(np.frombuffer(payload[8 * (rank + 1) :], dtype="<f4").reshape(shape).copy())
