"""Train DDet or any registered baseline: one process, or many through torchrun.

    ddet train --config configs/ddet_x2.yaml --out runs/ddet_x2
    torchrun --nproc_per_node 4 -m ddet.cli train --config configs/ddet_x2.yaml --out runs/ddet_x2
    ddet train --out runs/ddet_x2 --resume            # continues exactly where it stopped

The run is a function of its configuration: training sample k is drawn from (seed, k) alone, so a
resumed run and a run on N processes with the same global batch see the same data as one
uninterrupted process. Rank 0 logs, validates and writes checkpoints, so on several nodes ``out``
must be a folder every node sees (each rank reads the checkpoint on ``--resume``). A checkpoint is
a folder written under a temporary name, fsynced and renamed, then named in ``checkpoints/latest``
(itself replaced atomically), so a kill never damages the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ddet import metrics, models
from ddet.data import DATA_KINDS, REALSR_CAMERAS, TrainingPatches, WholeImages, make_sources, training_loader
from ddet.device import CHOICES as DEVICE_CHOICES
from ddet.device import pick_device
from ddet.files import atomic_write, fsync_directory
from ddet.inference import evaluate_images
from ddet.weights import load_weights_into, save_weights


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
# What a run writes under `out`; --force clears exactly these.
OUTPUTS = ("checkpoints", "tensorboard", "log.jsonl", "config.yaml", "best.safetensors", "model.safetensors")
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}
MAX_WHOLE_NUMBER = 2**62  # beyond it seeds and step counts overflow the 64-bit integers of numpy and torch
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def load_config(path=None, **overrides):
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


def model_overrides(config):
    """Arguments of ``models.create``: the configured overrides plus the input channels."""
    in_channels = 1 if config.channels == "y" else 3
    given = config.model_args.get("in_channels", in_channels)
    if given != in_channels:
        raise ValueError(f"model_args in_channels={given} contradicts channels={config.channels!r}")
    return {**config.model_args, "in_channels": in_channels}


def lr_factor(config, step):
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "cosine":
        progress = (step - config.warmup) / max(1, config.iterations - config.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.step_gamma ** (step // config.step_size)
    return 1.0


class Objective(nn.Module):
    """The training loss as a module, so DistributedDataParallel wraps every forward path."""

    def __init__(self, model, loss):
        super().__init__()
        self.model, self.loss = model, LOSSES[loss]

    def forward(self, lr_image, hr_image):
        pairs = self.model.loss_pairs(lr_image, hr_image)
        return sum(self.loss(prediction.float(), target) for prediction, target in pairs)


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self):
        return self.rank == 0


def setup_distributed(device_choice):
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    env = Distributed(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    use_cuda = torch.cuda.is_available() and device_choice in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return env


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_dir(out):
    return Path(out) / "checkpoints"


def latest_checkpoint(out):
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


def write_checkpoint(config, run, elapsed_s):
    root = checkpoint_dir(config.out)
    name = f"step-{run.step:09d}"
    staging = root / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    export = dict(
        model=config.model,
        model_args=model_overrides(config),
        scale=config.scale,
        channels=config.channels,
        extra={"step": run.step},
    )
    save_weights(staging / "model.safetensors", run.model.state_dict(), **export)
    if run.ema is not None:
        save_weights(staging / "ema.safetensors", run.ema.module.state_dict(), **export)
    state = {
        "step": run.step,
        "config": dataclasses.asdict(config),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "ema_count": None if run.ema is None else run.ema.n_averaged.clone(),
        "best": run.best,
        "elapsed_s": elapsed_s,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    atomic_write(staging / "state.pt", lambda handle: torch.save(state, handle))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    fsync_directory(root)
    atomic_write(root / "latest", lambda handle: handle.write(name.encode()))
    for old in sorted(root.glob("step-*"))[: -config.keep_checkpoints]:
        shutil.rmtree(old)


def read_checkpoint(folder, run):
    """Load a checkpoint folder into the live objects of ``run``; returns (step, best, training seconds so far)."""
    state = read_state(folder)
    load_weights_into(run.model, folder / "model.safetensors")
    try:
        if run.ema is not None:
            load_weights_into(run.ema.module, folder / "ema.safetensors")
            run.ema.n_averaged.copy_(state["ema_count"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state["step"], state["best"], state.get("elapsed_s", 0.0)
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"checkpoint {folder} does not belong to this run: {error!r}") from error


def read_state(folder):
    """The state file of a checkpoint, loaded without unpickling arbitrary objects."""
    path = folder / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"cannot read checkpoint state {path}: {error}") from error


def check_resumable(config, folder):
    before = read_state(folder)["config"]
    changed = sorted(
        k for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES and before.get(k) != v
    )
    if changed:
        detail = ", ".join(f"{k}: {before.get(k)!r} → {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"cannot resume {folder} with a different configuration ({detail})")


# ---------------------------------------------------------------------------------------------
# Validation


def validate(model, images, device):
    """Mean PSNR/SSIM (RealSR protocol) of ``model`` on whole images, and of the bicubic input."""
    model.eval()
    rows = evaluate_images(model, images, device=device)
    model.train()
    return metrics.summarize(rows), metrics.summarize(rows, prefix="bicubic_")


# ---------------------------------------------------------------------------------------------
# The run


def train(config, resume=False, force=False):
    """Train to ``config.iterations``; returns the last validation result (rank 0) or None."""
    env = setup_distributed(config.device)
    try:
        return _train(config, env, resume, force)
    finally:
        if env.world_size > 1:
            dist.destroy_process_group()


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with a message saying what was kept and how to go on."""


@dataclasses.dataclass
class Run:
    """The live objects of a run, built and checked in full before anything under ``out`` changes."""

    model: nn.Module
    ema: AveragedModel | None
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step: int = 0
    best: dict = dataclasses.field(default_factory=lambda: {"psnr": -math.inf, "step": 0})
    elapsed_before: float = 0.0


def _refuse_unsafe_start(out, resume, force):
    """The checkpoint to resume from (or None), refusing before anything is built or changed."""
    latest = latest_checkpoint(out) if out.exists() else None
    if resume and latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {checkpoint_dir(out)}")
    if not resume and out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(
            f"output folder {out} is not empty: pass --resume to continue it or --force to start over"
        )
    return latest


def _build_run(config, env, device, memory_format, amp_dtype):
    torch.manual_seed(config.seed)
    try:
        model = models.create(config.model, **model_overrides(config))
    except (RuntimeError, MemoryError) as error:  # e.g. a width whose weights do not fit in memory
        raise ValueError(f"model {config.model} with model_args {config.model_args} cannot be built: {error}") from None
    if config.init:
        load_weights_into(model, config.init)
    model.to(device, memory_format=memory_format)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema else None
    objective = Objective(model, config.loss).to(device)
    if env.world_size > 1:
        objective = DistributedDataParallel(objective, device_ids=[env.local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Run(model, ema, objective, optimizer, scheduler, scaler)


def _clear_outputs(out):
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _train(config, env, resume, force):
    out = Path(config.out)
    device = pick_device(config.device, env.local_rank)
    latest = _refuse_unsafe_start(out, resume, force)
    if resume:
        check_resumable(config, latest)
    if config.threads:
        torch.set_num_threads(config.threads)
    amp_dtype = AMP_DTYPES.get(config.amp)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    run = _build_run(config, env, device, memory_format, amp_dtype)
    if resume:
        run.step, run.best, run.elapsed_before = read_checkpoint(latest, run)
        if run.step >= config.iterations:
            print(
                f"{out}: the run is complete at step {run.step} (iterations {config.iterations}); "
                f"to train longer, resume with --iterations N greater than {run.step}"
            )
            return None

    train_source, val_source = make_sources(
        config.data,
        config.scale,
        config.data_root or None,
        config.val_root or None,
        realsr_version=config.realsr_version,
        cameras=tuple(config.cameras),
        decode_cache=config.decode_cache or None,
    )
    patches = TrainingPatches(
        train_source,
        config.patch,
        config.channels,
        config.seed,
        num_samples=(config.iterations - run.step) * config.batch,
        first_sample=run.step * config.batch,
    )
    batches = iter(training_loader(patches, config.batch, config.workers, env.rank, env.world_size))
    val_images = WholeImages(val_source, config.channels) if val_source is not None and env.main else None

    # Everything above is what --force needs to know is good before the old run's outputs go.
    if env.world_size > 1:
        dist.barrier()  # every rank has inspected `out` before rank 0 changes it
    if env.main and not resume:
        _clear_outputs(out)
    amp_context = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    try:
        return _loop(
            config,
            env,
            run,
            batches=batches,
            val_images=val_images,
            device=device,
            memory_format=memory_format,
            amp_context=amp_context,
        )
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted_message(out, run.step)) from None


def _interrupted_message(out, step):
    latest = latest_checkpoint(out)
    if latest is None:
        return f"interrupted at step {step}, before the first checkpoint: nothing to resume in {out}"
    return (
        f"interrupted at step {step}; checkpoint {latest.name} is kept: continue with ddet train --out {out} --resume"
    )


def _optimizer_step(config, run, loss):
    """Backward and update; the schedule advances only with the optimiser (float16's loss scaler
    skips the update when the gradients overflowed)."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if config.grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    scale_before = run.scaler.get_scale() if run.scaler.is_enabled() else None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if scale_before is None or run.scaler.get_scale() >= scale_before:
        run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)


def _loop(config, env, run, *, batches, val_images, device, memory_format, amp_context):
    out = Path(config.out)
    logger = RunLogger(out, config, env.main, run.step)
    with tqdm(
        total=config.iterations,
        initial=run.step,
        desc=f"train {config.model} ×{config.scale}",
        disable=not env.main,
        dynamic_ncols=True,
    ) as progress:
        evaluated = run.ema.module if run.ema is not None else run.model
        result = None
        started = time.perf_counter() - run.elapsed_before
        nonfinite = torch.zeros(
            (), dtype=torch.bool, device=device
        )  # read only at logs and checkpoints: no sync per step
        checked_step = run.step
        while run.step < config.iterations:
            lr_batch, hr_batch = (t.to(device, non_blocking=True, memory_format=memory_format) for t in next(batches))
            with amp_context():
                loss = run.objective(lr_batch, hr_batch)
            nonfinite |= ~torch.isfinite(loss.detach())
            _optimizer_step(config, run, loss)
            run.step += 1
            progress.update()

            at_end = run.step == config.iterations
            logging, validating = (
                run.step % config.log_every == 0 or at_end,
                val_images is not None and (run.step % config.validate_every == 0 or at_end),
            )
            checkpointing = run.step % config.checkpoint_every == 0 or at_end
            if not (logging or validating or checkpointing):
                continue
            _refuse_nonfinite_loss(env, nonfinite, checked_step, run.step, out)
            checked_step = run.step
            if logging:
                _log_loss(env, run, loss, logger, progress, time.perf_counter() - started)
            if validating:
                result = _validate_and_keep_best(run, evaluated, val_images, device, logger=logger, progress=progress)
            if env.main and checkpointing:
                write_checkpoint(config, run, time.perf_counter() - started)
            if env.world_size > 1 and (validating or checkpointing):
                dist.barrier()  # the others wait while rank 0 validates and writes
        logger.export(out / "model.safetensors", evaluated, run.step)
        logger.close()
        return result


def _validate_and_keep_best(run, evaluated, val_images, device, *, logger, progress):
    """Validate, log and print the result, and export the weights when they are the best yet."""
    result, bicubic = validate(evaluated, val_images, device)
    logger.log(
        run.step,
        {
            "val_psnr": result["psnr"],
            "val_ssim": result["ssim"],
            "bicubic_psnr": bicubic["psnr"],
            "bicubic_ssim": bicubic["ssim"],
        },
    )
    progress.write(
        f"step {run.step}: val PSNR {result['psnr']:.3f} dB SSIM {result['ssim']:.4f} "
        f"(bicubic {bicubic['psnr']:.3f} dB {bicubic['ssim']:.4f})"
    )
    if result["psnr"] > run.best["psnr"]:
        run.best = {"psnr": result["psnr"], "ssim": result["ssim"], "step": run.step}
        logger.export(logger.out / "best.safetensors", evaluated, run.step)
    return result


def _refuse_nonfinite_loss(env, nonfinite, since, step, out):
    if env.world_size > 1:  # every rank stops together, or the others would wait at the next barrier
        nonfinite = nonfinite.to(torch.int32)
        dist.all_reduce(nonfinite)
    if not nonfinite.item():
        return
    latest = latest_checkpoint(out)
    kept = (
        f"the last good checkpoint, {latest.name}, is kept" if latest is not None else "no checkpoint had been written"
    )
    when = f"at step {step}" if since + 1 == step else f"between steps {since + 1} and {step}"
    raise ValueError(f"the training loss became NaN or infinite {when}; stopped ({kept}). Lower lr, or set grad_clip")


def _log_loss(env, run, loss, logger, progress, elapsed_s):
    loss_value = loss.detach().float()
    if env.world_size > 1:  # the loss of the global batch, not of rank 0's share
        dist.all_reduce(loss_value)
        loss_value /= env.world_size
    loss_value = loss_value.item()
    lr = run.scheduler.get_last_lr()[0]
    progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
    logger.log(run.step, {"loss": loss_value, "lr": lr, "elapsed_s": elapsed_s})


def _logged_step(line):
    """Step of a log.jsonl record; a line torn by a kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class RunLogger:
    """Rank 0's records: log.jsonl, TensorBoard scalars when tensorboard is installed, exports.

    A resumed run first drops the records of steps after its checkpoint (lost work, redone)."""

    def __init__(self, out, config, main, step):
        self.main, self.config, self.out = main, config, Path(out)
        self.writer = None
        if not main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / "log.jsonl"
        if log.exists():
            kept = [line for line in log.read_text().splitlines() if _logged_step(line) <= step]
            atomic_write(log, lambda handle: handle.write("".join(line + "\n" for line in kept).encode()))
        atomic_write(
            self.out / "config.yaml",
            lambda handle: handle.write(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False).encode()),
        )
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def log(self, step, values):
        if not self.main:
            return
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def export(self, path, model, step):
        if self.main:
            c = self.config
            save_weights(
                path, model.state_dict(), c.model, model_overrides(c), c.scale, c.channels, extra={"step": step}
            )

    def close(self):
        if self.writer is not None:
            self.writer.close()
