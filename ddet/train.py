"""Train DDet or any registered baseline: one process, or many through torchrun.

    ddet train --config configs/ddet_x2.yaml --out runs/ddet_x2
    torchrun --nproc_per_node 4 -m ddet.cli train --config configs/ddet_x2.yaml --out runs/ddet_x2
    ddet train --out runs/ddet_x2 --resume            # continues exactly where it stopped

The run is a function of its configuration: training sample k is drawn from (seed, k) alone, so a
resumed run and a run on N processes with the same global batch see the same data as one
uninterrupted process. Rank 0 logs, validates and writes checkpoints (see :mod:`ddet.run`), so on
several nodes ``out`` must be a folder every node sees (each rank reads the checkpoint on
``--resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from ddet import metrics
from ddet.config import AMP_DTYPES, TrainConfig
from ddet.data import TrainingPatches, WholeImages, make_sources, training_loader
from ddet.device import pick_device
from ddet.files import atomic_write
from ddet.inference import evaluate_images
from ddet.run import Run, check_resumable, checkpoint_dir, latest_checkpoint
from ddet.weights import save_weights

# What a run writes under `out`; --force clears exactly these.
OUTPUTS = ("checkpoints", "tensorboard", "log.jsonl", "config.yaml", "best.safetensors", "model.safetensors")


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_choice: str) -> Distributed:
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
# Validation


def validate(model: nn.Module, images: WholeImages, device: torch.device) -> tuple[dict, dict]:
    """Mean PSNR/SSIM (RealSR protocol) of ``model`` on whole images, and of the bicubic input."""
    model.eval()
    rows = evaluate_images(model, images, device=device)
    model.train()
    return metrics.summarize(rows), metrics.summarize(rows, prefix="bicubic_")


# ---------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, resume: bool = False, force: bool = False) -> dict | None:
    """Train to ``config.iterations``; returns the last validation result (rank 0) or None."""
    env = setup_distributed(config.device)
    try:
        return _train(config, env, resume, force)
    finally:
        if env.world_size > 1:
            dist.destroy_process_group()


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with a message saying what was kept and how to go on."""


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
    run = Run.build(
        config, device=device, memory_format=memory_format, amp_dtype=amp_dtype, distributed=env.world_size > 1
    )
    if resume:
        run.load(latest)
        if run.step >= config.iterations:
            print(
                f"{out}: the run is complete at step {run.step} (iterations {config.iterations}); "
                f"to train longer, resume with --iterations N greater than {run.step}"
            )
            return None
    batches, val_images = _data(config, env, run.step)

    # Everything above is what --force needs to know is good before the old run's outputs go.
    if env.world_size > 1:
        dist.barrier()  # every rank has inspected `out` before rank 0 changes it
    if env.main and not resume:
        _clear_outputs(out)
    amp_context = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    try:
        return _loop(
            run, env, batches=batches, val_images=val_images, memory_format=memory_format, amp_context=amp_context
        )
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted_message(out, run.step)) from None


def _data(config, env, first_step):
    """This rank's training batches from ``first_step`` on, and the validation images (rank 0)."""
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
        num_samples=(config.iterations - first_step) * config.batch,
        first_sample=first_step * config.batch,
    )
    batches = iter(training_loader(patches, config.batch, config.workers, env.rank, env.world_size))
    val_images = WholeImages(val_source, config.channels) if val_source is not None and env.main else None
    return batches, val_images


def _interrupted_message(out, step):
    latest = latest_checkpoint(out)
    if latest is None:
        return f"interrupted at step {step}, before the first checkpoint: nothing to resume in {out}"
    return (
        f"interrupted at step {step}; checkpoint {latest.name} is kept: continue with ddet train --out {out} --resume"
    )


def _loop(run, env, *, batches, val_images, memory_format, amp_context):
    config, device, out = run.config, run.device, Path(run.config.out)
    logger = RunLogger(out, config, env.main, run.step)
    with tqdm(
        total=config.iterations,
        initial=run.step,
        desc=f"train {config.model} ×{config.scale}",
        disable=not env.main,
        dynamic_ncols=True,
    ) as progress:
        result = None
        started = time.perf_counter() - run.elapsed_before
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # read at logs and checkpoints only
        checked_step = run.step
        while run.step < config.iterations:
            lr_batch, hr_batch = (t.to(device, non_blocking=True, memory_format=memory_format) for t in next(batches))
            with amp_context():
                loss = run.objective(lr_batch, hr_batch)
            nonfinite |= ~torch.isfinite(loss.detach())
            run.optimizer_step(loss)
            progress.update()

            at_end = run.step == config.iterations
            logging = run.step % config.log_every == 0 or at_end
            validating = val_images is not None and (run.step % config.validate_every == 0 or at_end)
            checkpointing = run.step % config.checkpoint_every == 0 or at_end
            if not (logging or validating or checkpointing):
                continue
            _refuse_nonfinite_loss(env, nonfinite, checked_step, run.step, out)
            checked_step = run.step
            if logging:
                _log_loss(env, run, loss, logger, progress, time.perf_counter() - started)
            if validating:
                result = _validate_and_keep_best(run, val_images, logger=logger, progress=progress)
            if env.main and checkpointing:
                run.save(time.perf_counter() - started)
            if env.world_size > 1 and (validating or checkpointing):
                dist.barrier()  # the others wait while rank 0 validates and writes
        logger.export(out / "model.safetensors", run)
        logger.close()
        return result


def _validate_and_keep_best(run, val_images, *, logger, progress):
    """Validate, log and print the result, and export the weights when they are the best yet."""
    result, bicubic = validate(run.evaluated, val_images, run.device)
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
        logger.export(logger.out / "best.safetensors", run)
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

    def __init__(self, out: str | Path, config: TrainConfig, main: bool, step: int):
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

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.main:
            return
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def export(self, path: Path, run: Run) -> None:
        """The weights ``run`` validates (its average when it keeps one), as a file loadable alone."""
        if self.main:
            save_weights(path, run.evaluated.state_dict(), **run.export_metadata())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
