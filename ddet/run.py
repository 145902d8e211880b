"""The live state of a training run — model, weight average, optimiser, schedule, loss scaler, step
and best validation — in one object that builds itself from a configuration, takes optimiser
steps, and saves and loads its checkpoints.

A checkpoint is a folder ``out/checkpoints/step-NNNNNNNNN`` written under a temporary name, fsynced
and renamed, then named in ``checkpoints/latest`` (itself replaced atomically), so a kill never
damages the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ddet import models
from ddet.config import LOSSES, RESUMABLE_CHANGES, TrainConfig, lr_factor, model_overrides
from ddet.files import atomic_write, fsync_directory
from ddet.weights import load_weights_into, save_weights


class Objective(nn.Module):
    """The training loss as a module, so DistributedDataParallel wraps every forward path."""

    def __init__(self, model: nn.Module, loss: str):
        super().__init__()
        self.model, self.loss = model, LOSSES[loss]

    def forward(self, lr_image: torch.Tensor, hr_image: torch.Tensor) -> torch.Tensor:
        pairs = self.model.loss_pairs(lr_image, hr_image)
        return sum(self.loss(prediction.float(), target) for prediction, target in pairs)


@dataclasses.dataclass
class Run:
    """The live objects of a run, built and checked in full before anything under ``out`` changes."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    ema: AveragedModel | None
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step: int = 0
    best: dict = dataclasses.field(default_factory=lambda: {"psnr": -math.inf, "step": 0})
    elapsed_before: float = 0.0  # training seconds of the run before this process resumed it

    @classmethod
    def build(
        cls,
        config: TrainConfig,
        *,
        device: torch.device,
        memory_format: torch.memory_format,
        amp_dtype: torch.dtype | None,
        distributed: bool = False,
    ) -> Run:
        """A fresh run at step 0: the model from ``config.seed`` (or ``config.init``) on ``device``."""
        torch.manual_seed(config.seed)
        try:
            model = models.create(config.model, **model_overrides(config))
        except (RuntimeError, MemoryError) as error:  # e.g. a width whose weights do not fit in memory
            raise ValueError(
                f"model {config.model} with model_args {config.model_args} cannot be built: {error}"
            ) from None
        if config.init:
            load_weights_into(model, config.init)
        model.to(device, memory_format=memory_format)
        average = get_ema_multi_avg_fn(config.ema)
        ema = AveragedModel(model, multi_avg_fn=average, use_buffers=True) if config.ema else None
        objective = Objective(model, config.loss).to(device)
        if distributed:
            objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        return cls(config, device, model, ema, objective, optimizer, scheduler, scaler)

    @property
    def evaluated(self) -> nn.Module:
        """The model that is validated and exported: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, update, and one step on; the schedule advances only with the optimiser (float16's
        loss scaler skips the update when the gradients overflowed)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale_before is None or self.scaler.get_scale() >= scale_before:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1

    def save(self, elapsed_s: float) -> Path:
        """Write the checkpoint of this step under ``config.out``, keeping the newest
        ``config.keep_checkpoints``; returns its folder."""
        root = checkpoint_dir(self.config.out)
        name = f"step-{self.step:09d}"
        staging = root / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_weights(staging / "model.safetensors", self.model.state_dict(), **self.export_metadata())
        if self.ema is not None:
            save_weights(staging / "ema.safetensors", self.ema.module.state_dict(), **self.export_metadata())
        state = self._state(elapsed_s)
        atomic_write(staging / "state.pt", lambda handle: torch.save(state, handle))
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        fsync_directory(root)
        atomic_write(root / "latest", lambda handle: handle.write(name.encode()))
        for old in sorted(root.glob("step-*"))[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)
        return final

    def load(self, folder: Path) -> None:
        """Continue from the checkpoint ``folder``: weights, optimiser, schedule, scaler, random
        state, step, best result and training time so far."""
        state = read_state(folder)
        load_weights_into(self.model, folder / "model.safetensors")
        try:
            if self.ema is not None:
                load_weights_into(self.ema.module, folder / "ema.safetensors")
                self.ema.n_averaged.copy_(state["ema_count"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.step, self.best, self.elapsed_before = state["step"], state["best"], state.get("elapsed_s", 0.0)
        except (KeyError, TypeError, RuntimeError) as error:
            raise ValueError(f"checkpoint {folder} does not belong to this run: {error!r}") from error

    def export_metadata(self) -> dict:
        """The keyword arguments of ``save_weights`` that make a weights file of this step loadable alone."""
        c = self.config
        return dict(
            model=c.model, model_args=model_overrides(c), scale=c.scale, channels=c.channels, extra={"step": self.step}
        )

    def _state(self, elapsed_s: float) -> dict:
        return {
            "step": self.step,
            "config": dataclasses.asdict(self.config),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema_count": None if self.ema is None else self.ema.n_averaged.clone(),
            "best": self.best,
            "elapsed_s": elapsed_s,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The folder ``checkpoints/latest`` names, or None before the first checkpoint."""
    pointer = checkpoint_dir(out) / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if re.fullmatch(r"step-\d{9}", name) is None:
        raise ValueError(f"{pointer} names {name!r}, not a checkpoint of this run (step-NNNNNNNNN)")
    folder = checkpoint_dir(out) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{pointer} names {folder.name}, which does not exist")
    return folder


def read_state(folder: Path) -> dict:
    """The state file of a checkpoint, loaded without unpickling arbitrary objects."""
    path = folder / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"cannot read checkpoint state {path}: {error}") from error


def check_resumable(config: TrainConfig, folder: Path) -> None:
    """Refuse, naming each option, to resume ``folder`` with options that define another run."""
    before = read_state(folder)["config"]
    changed = sorted(
        k for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES and before.get(k) != v
    )
    if changed:
        detail = ", ".join(f"{k}: {before.get(k)!r} → {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"cannot resume {folder} with a different configuration ({detail})")
