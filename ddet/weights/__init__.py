"""Model weights as safetensors files that describe themselves, and the weights bundled with ddet.

A weights file holds the model's state dict and, in its metadata, the registry name, the
configuration overrides (JSON), the SR scale and the channels (``y`` or ``rgb``), so that
``load_model(path)`` rebuilds the network with no other input. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ddet.files import PathLike, atomic_write

BUNDLED_DIR = Path(__file__).resolve().parent
METADATA_KEYS = ("model", "model_args", "scale", "channels")
SCALES = ("2", "3", "4")  # as stored: safetensors metadata values are text
CHANNELS = ("y", "rgb")
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def bundled_path(model: str, scale: int) -> Path:
    """Where the weights bundled for the registry name ``model`` at ``scale`` lie (the model registry
    says which exist: a ValueError for any other)."""
    from ddet import models

    return BUNDLED_DIR / models.pretrained_file(model, scale)


def save_weights(
    path: PathLike,
    state_dict: Mapping[str, torch.Tensor],
    model: str,
    model_args: Mapping[str, object],
    scale: int,
    channels: str,
    *,
    dtype: torch.dtype | None = None,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Write ``state_dict`` (optionally cast to ``dtype``, e.g. float16 to ship) atomically."""
    tensors = {
        key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in state_dict.items()
    }
    metadata = {
        "model": model,
        "model_args": json.dumps(model_args, sort_keys=True),
        "scale": str(scale),
        "channels": channels,
    }
    metadata.update({key: str(value) for key, value in (extra or {}).items()})
    payload = save_safetensors(tensors, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(payload))


def read_weights(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a weights file; a clear error naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    payload = path.read_bytes()
    try:
        tensors = load_safetensors(payload)
        metadata = _metadata(payload)
    except (SafetensorError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"corrupt or foreign weights file {path}: {error}") from error
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"weights file {path} lacks ddet metadata {missing} (not written by ddet?)")
    _check_metadata(metadata, path)
    foreign = [f"{key} ({value.dtype})" for key, value in tensors.items() if value.dtype not in WEIGHT_DTYPES]
    if foreign:
        raise ValueError(f"weights file {path} holds tensors of a type ddet does not load: {', '.join(foreign[:3])}")
    broken = [key for key, value in tensors.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise ValueError(f"weights file {path} holds non-finite values (NaN or infinity) in {', '.join(broken[:3])}")
    return tensors, metadata


def _check_metadata(metadata, path):
    """A ValueError naming the file and the field when the metadata cannot describe a ddet model."""
    if metadata["scale"] not in SCALES:
        raise ValueError(f"weights file {path}: scale must be one of {', '.join(SCALES)}, got {metadata['scale']!r}")
    if metadata["channels"] not in CHANNELS:
        raise ValueError(f"weights file {path}: channels must be one of {CHANNELS}, got {metadata['channels']!r}")
    try:
        model_args = json.loads(metadata["model_args"])
    except json.JSONDecodeError:
        model_args = None
    if not isinstance(model_args, dict):
        raise ValueError(f"weights file {path}: model_args must be a JSON mapping, got {metadata['model_args']!r}")


def _metadata(payload):
    header_length = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8 : 8 + header_length]).get("__metadata__", {})


def load_model(path: PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata with typed ``scale`` and ``model_args``) from a weights file."""
    from ddet import models

    tensors, metadata = read_weights(path)
    metadata = dict(metadata, scale=int(metadata["scale"]), model_args=json.loads(metadata["model_args"]))
    model = models.create(metadata["model"], **metadata["model_args"])
    load_state(model, tensors, path)
    return model.to(device).eval(), metadata


def load_weights_into(model: torch.nn.Module, path: PathLike) -> None:
    """Load the weights file ``path`` into ``model`` (e.g. to start training from it)."""
    load_state(model, read_weights(path)[0], path)


def load_state(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """``model.load_state_dict(tensors)``, with a ValueError naming the file they came from when
    they do not fit."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in tensors]
    unexpected = [key for key in tensors if key not in expected]
    misshapen = [
        f"{key} {tuple(tensors[key].shape)} for {tuple(value.shape)}"
        for key, value in expected.items()
        if key in tensors and tensors[key].shape != value.shape
    ]
    problems = [
        f"{len(found)} {what} (first: {found[0]})"
        for what, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", misshapen))
        if found
    ]
    if problems:
        raise ValueError(f"weights file {path} does not fit this {type(model).__name__}: tensors {'; '.join(problems)}")
    model.load_state_dict(tensors)


def load_bundled(model: str, scale: int, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) from the weights bundled for the registry name ``model``."""
    path = bundled_path(model, scale)
    if not path.is_file():
        raise FileNotFoundError(f"no bundled weights for ×{scale} ({path}); pass --weights FILE")
    return load_model(path, device)


def export_bundled(path: PathLike, scale: int) -> None:
    """Store the weights file ``path`` (from ``ddet train``) as the bundled float16 weights of ``scale``."""
    tensors, metadata = read_weights(path)
    if int(metadata["scale"]) != scale:
        raise ValueError(f"{path} holds ×{metadata['scale']} weights, not ×{scale}")
    fields = {key: metadata[key] for key in METADATA_KEYS}
    extra = {key: value for key, value in metadata.items() if key not in METADATA_KEYS}
    fields["model_args"] = json.loads(fields["model_args"])
    save_weights(bundled_path(metadata["model"], scale), tensors, **fields, dtype=torch.float16, extra=extra)


__all__ = ["bundled_path", "export_bundled", "load_bundled", "load_model", "read_weights", "save_weights"]
