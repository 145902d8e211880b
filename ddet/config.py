"""A training run's configuration: the options of ``ddet train`` (YAML file and command line), each
checked by name before anything is built, and the learning-rate schedule they define."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from ddet import models
from ddet.data import DATA_KINDS, REALSR_CAMERAS
from ddet.device import CHOICES as DEVICE_CHOICES


@dataclasses.dataclass
class TrainConfig:
    model: str = "ddet"
    model_args: dict = dataclasses.field(default_factory=dict)  # overrides of the model's configuration
    scale: int = 2
    channels: str = "y"  # y (MATLAB BT.601 luminance) or rgb
    data: str = "synthetic"  # synthetic | realsr | folder
    data_root: str = ""
    val_root: str = ""
    realsr_version: int = 2
    # realsr/folder data: keep the training images decoded here (memory-mapped .npy files), so a
    # patch reads its window instead of decoding two whole images; "" decodes for every patch
    decode_cache: str = ""
    cameras: list = dataclasses.field(default_factory=lambda: list(REALSR_CAMERAS))
    patch: int = 64  # HR patch side
    batch: int = 16  # global batch, split over the processes
    iterations: int = 100_000
    lr: float = 1e-4  # Adam, as LP-KPN
    schedule: str = "cosine"  # cosine | step | constant
    warmup: int = 0
    step_size: int = 200_000  # step schedule: lr × step_gamma every step_size iterations
    step_gamma: float = 0.5
    loss: str = "l1"  # l1 | l2, summed over the model's loss_pairs (LP-KPN: one on every pyramid level)
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    ema: float = 0.999  # decay of the weight average used for validation and export, 0 = off
    # none | bf16 | fp16 autocast, on CUDA and on the CPU (bf16 runs several times faster on CPUs
    # with AVX-512 BF16 or AMX; weights, optimizer and validation stay float32)
    amp: str = "none"
    channels_last: bool = False  # NHWC model and batches: faster convolutions in oneDNN and cuDNN
    seed: int = 0
    init: str = ""  # start from these weights (safetensors), e.g. fine-tune ×3 from ×2
    workers: int = 2
    threads: int = 0  # torch CPU threads per process, 0 = torch's default
    device: str = "auto"
    log_every: int = 50
    validate_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    out: str = "runs/ddet"


# Fields that may change when a run is resumed; every other one defines the run.
# A longer `iterations` extends a run (a finished one too); the schedule stretches to the new length.
RESUMABLE_CHANGES = {"iterations", "workers", "threads", "channels_last", "device", "log_every", "out"}
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}
MAX_WHOLE_NUMBER = 2**62  # beyond it seeds and step counts overflow the 64-bit integers of numpy and torch
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def load_config(path: str | Path | None = None, **overrides: object) -> TrainConfig:
    """TrainConfig from an optional YAML file, then keyword overrides (None values are ignored)."""
    values = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read config {path}: {_one_line(error)}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config {path} must be a mapping of option: value")
    values.update({key: value for key, value in overrides.items() if value is not None})
    defaults = {
        field.name: field.default if field.default is not dataclasses.MISSING else field.default_factory()
        for field in dataclasses.fields(TrainConfig)
    }
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown training option(s) {unknown}" + (f" in {path}" if path else "") + f"; known: {sorted(defaults)}"
        )
    config = TrainConfig(**{name: _typed(name, value, type(defaults[name])) for name, value in values.items()})
    _check(config)
    return config


def _one_line(error):
    """A YAML parser's message (several lines with a source excerpt) as one line with its position."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return " ".join(str(error).split())
    return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"


def _typed(name, value, kind):
    """``value`` as the option's type, or a ValueError naming the option. Numbers may come as
    text: YAML 1.1 reads ``1e-4`` (no dot) as a string."""
    if isinstance(value, bool) != (kind is bool):
        pass  # true/false is no number, and only a switch is true/false
    elif kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif kind is int and isinstance(value, (int, float, str)):
        try:
            number = float(value)
            if number.is_integer():
                return int(number)
        except ValueError:
            pass
    elif isinstance(value, kind):
        return value
    expected = {
        bool: "true or false",
        float: "a number",
        int: "a whole number",
        str: "text",
        list: "a list",
        dict: "a mapping",
    }[kind]
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check(config):
    choices = {
        "channels": ("y", "rgb"),
        "schedule": ("cosine", "step", "constant"),
        "loss": tuple(LOSSES),
        "amp": ("none", *AMP_DTYPES),
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(config, name)!r}")
    if config.decode_cache and config.data == "synthetic":
        raise ValueError(
            "decode_cache is for realsr and folder data (synthetic pairs decode their photos once already)"
        )
    if config.scale not in (2, 3, 4):
        raise ValueError(f"scale must be 2, 3 or 4, got {config.scale}")
    if config.model not in models.names():
        raise ValueError(f"model must be a registered name ({', '.join(models.names())}), got {config.model!r}")
    if config.data not in DATA_KINDS:
        raise ValueError(f"data must be one of {DATA_KINDS}, got {config.data!r}")
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device) is None:
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {config.device!r}")
    if config.realsr_version not in (2, 3):
        raise ValueError(f"realsr_version must be 2 or 3, got {config.realsr_version}")
    for name in (
        "patch",
        "batch",
        "iterations",
        "step_size",
        "log_every",
        "validate_every",
        "checkpoint_every",
        "keep_checkpoints",
    ):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in ("warmup", "workers", "threads", "seed"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be at least 0, got {getattr(config, name)}")
    for field in dataclasses.fields(TrainConfig):
        if type(getattr(config, field.name)) is int and getattr(config, field.name) > MAX_WHOLE_NUMBER:
            raise ValueError(f"{field.name} must be at most 2**62, got {getattr(config, field.name)}")
    if config.decode_cache and Path(config.decode_cache).exists() and not Path(config.decode_cache).is_dir():
        raise ValueError(f"decode_cache {config.decode_cache} is a file, not a folder")
    _check_range("lr", config.lr, low=0.0, low_open=True)
    _check_range("step_gamma", config.step_gamma, low=0.0, low_open=True)
    _check_range("grad_clip", config.grad_clip, low=0.0)
    _check_range("ema", config.ema, low=0.0, high=1.0)
    for name in ("init", "data_root", "val_root"):
        if getattr(config, name) and not Path(getattr(config, name)).exists():
            raise ValueError(f"{name} {getattr(config, name)} does not exist")


def _check_range(name, value, low, high=math.inf, low_open=False):
    """A ValueError naming the option unless ``value`` is finite and in [low, high) (or (low, high))."""
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or value >= high:
        bounds = f"{'above' if low_open else 'at least'} {low:g}" + (f" and below {high:g}" if high < math.inf else "")
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")


def model_overrides(config: TrainConfig) -> dict:
    """Arguments of ``models.create``: the configured overrides plus the input channels."""
    in_channels = 1 if config.channels == "y" else 3
    given = config.model_args.get("in_channels", in_channels)
    if given != in_channels:
        raise ValueError(f"model_args in_channels={given} contradicts channels={config.channels!r}")
    return {**config.model_args, "in_channels": in_channels}


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "cosine":
        progress = (step - config.warmup) / max(1, config.iterations - config.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.step_gamma ** (step // config.step_size)
    return 1.0
