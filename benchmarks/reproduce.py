"""Do the paper's comparisons hold on the synthetic cross-camera pairs? Tables I and II at one budget.

    python benchmarks/reproduce.py --runs runs/reproduce --out benchmarks/results   # the full run, 2.5 h
    python benchmarks/reproduce.py --runs /tmp/r --quick                            # a smoke test

Every model of the paper's Table II ablation (plain KPN K = 7, + post-refinement, + CDM, + MDA =
DDet) and of its Table I real-SR rows (KPN K = 5/7/13/19, LP-KPN, DDet) plus SRResNet is trained
with the same budget (data, patches, steps, optimiser, schedule, seed), each as an ordinary
``ddet train`` run in ``RUNS/<model>``: a stopped reproduction resumes where it stopped, and a
finished model is not trained again. Each run ends with its validation on the held-out photos
(RealSR protocol, EMA weights), and each model is timed forward on one frame; and the tables are
printed beside the paper's, with the gaps between rows and whether each of the paper's orderings holds here.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

# Appended, not prepended: an installed ddet_ops (with its compiled kernels) must win over the
# source folder of the same name in the repository root.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks import paper, table3  # noqa: E402
from benchmarks.common import machine, markdown_table, write_results  # noqa: E402
from ddet import models  # noqa: E402
from ddet.config import load_config  # noqa: E402
from ddet.data import SKIMAGE_VALIDATION_PHOTOS, DataSpec, skimage_photos, write_image  # noqa: E402
from ddet.inference import bf16_matrix_units  # noqa: E402
from ddet.run import Objective, check_resumable, latest_checkpoint  # noqa: E402
from ddet.train import train  # noqa: E402

TABLE2_RUNGS = ("ddet-plain", "ddet-pr", "ddet-cdm", "ddet")
TABLE1_ROWS = ("kpn5", "kpn7", "kpn13", "kpn19", "lpkpn", "srresnet", "ddet")
MODELS = TABLE2_RUNGS[:-1] + TABLE1_ROWS


@dataclasses.dataclass(frozen=True)
class Budget:
    """What every model gets: the same data stream (seed), patches, steps, optimiser and schedule."""

    steps: int
    batch: int = 16
    patch: int = 64
    lr: float = 2e-4
    warmup: int = 200
    ema: float = 0.999
    amp: str = "bf16"
    channels_last: bool = True
    seed: int = 0
    frame: tuple = (256, 256)  # forward timing
    val_crop: int | None = None  # validate on central crops of this side (default: whole photos)


FAST_CPU_PRECISION = (
    {"amp": "bf16", "channels_last": True} if bf16_matrix_units() else {"amp": "none", "channels_last": False}
)
FULL = Budget(steps=0, **FAST_CPU_PRECISION)  # steps: from --steps, or calibrated to --hours
QUICK = Budget(
    steps=2, batch=2, patch=32, warmup=0, ema=0.0, amp="none", channels_last=False, frame=(32, 32), val_crop=64
)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One of the paper's orderings: ``better`` scores higher than ``worse``."""

    text: str
    better: str
    worse: str


CLAIMS = (
    Claim("Table II: post-refinement adds PSNR to plain KPN (K = 7)", "ddet-pr", "ddet-plain"),
    Claim("Table II: CDM adds PSNR", "ddet-cdm", "ddet-pr"),
    Claim("Table II: MDA adds PSNR (= DDet)", "ddet", "ddet-cdm"),
    Claim("Table I: DDet beats LP-KPN", "ddet", "lpkpn"),
    Claim("Table I: DDet beats the best KPN (K = 19)", "ddet", "kpn19"),
    Claim("Table I: DDet beats SRResNet", "ddet", "srresnet"),
    Claim("Table I: LP-KPN beats KPN (K = 5)", "lpkpn", "kpn5"),
    Claim("Table I: KPN K = 7 beats K = 5", "kpn7", "kpn5"),
    Claim("Table I: KPN K = 13 beats K = 7", "kpn13", "kpn7"),
    Claim("Table I: KPN K = 19 beats K = 13", "kpn19", "kpn13"),
)


def validation_folder(budget: Budget, runs: Path) -> str:
    """Central crops of the held-out photos, for a validation that costs little; "" for the photos whole."""
    if budget.val_crop is None:
        return ""
    folder = runs / f"validation-crops-{budget.val_crop}"
    if not folder.is_dir():
        side = budget.val_crop
        for name, photo in skimage_photos(SKIMAGE_VALIDATION_PHOTOS).items():
            top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
            write_image(folder / f"{name}.png", photo[top : top + side, left : left + side], force=True)
    return str(folder)


def config_for(name: str, budget: Budget, scale: int, runs: Path, threads: int):
    """The ``ddet train`` configuration of one model: identical for every model but its name."""
    return load_config(
        model=name,
        scale=scale,
        data="synthetic",
        val_root=validation_folder(budget, runs),
        patch=budget.patch,
        batch=budget.batch,
        iterations=budget.steps,
        lr=budget.lr,
        schedule="cosine",
        warmup=budget.warmup,
        loss="l1",
        ema=budget.ema,
        amp=budget.amp,
        channels_last=budget.channels_last,
        seed=budget.seed,
        workers=0,
        threads=threads,
        log_every=max(1, budget.steps // 20),
        validate_every=budget.steps,
        checkpoint_every=max(1, budget.steps // 4),
        out=str(runs / name),
    )


def train_or_resume(config) -> None:
    """Train the model of ``config`` to its end, continuing a stopped run and skipping a finished one."""
    out = Path(config.out)
    latest = latest_checkpoint(out) if out.exists() else None
    if latest is None:  # nothing of value yet: the folder, if any, holds only this run's start
        train(config, force=True)
        return
    check_resumable(config, latest)  # a folder trained at another budget is refused by name
    if not (out / "model.safetensors").is_file():
        train(config, resume=True)


def scores_of(config, budget: Budget, device: torch.device) -> dict[str, object]:
    """The run's final validation (EMA weights, RealSR protocol, from its log) and the model's
    forward time on one frame."""
    records = [json.loads(line) for line in (Path(config.out) / "log.jsonl").read_text().splitlines()]
    final = next(r for r in reversed(records) if "val_psnr" in r and r["step"] == config.iterations)
    dtype = budget.amp if budget.amp != "none" else "float32"
    timing = table3.measure_model(
        config.model, device, budget.frame, dtype=dtype, channels_last=budget.channels_last, repeats=3
    )
    return {
        "psnr": final["val_psnr"],
        "ssim": final["val_ssim"],
        "bicubic_psnr": final["bicubic_psnr"],
        "seconds_per_frame": timing["seconds_per_frame"],
        "frame": timing["frame"],
    }


def claim_rows(scores: dict[str, dict[str, object]], scale: int) -> list[dict[str, object]]:
    rows = []
    for claim in CLAIMS:
        ours = scores[claim.better]["psnr"] - scores[claim.worse]["psnr"]
        theirs = _paper_psnr(claim.better, scale) - _paper_psnr(claim.worse, scale)
        rows.append({"claim": claim.text, "paper_gap_db": theirs, "our_gap_db": ours, "holds": ours > 0})
    return rows


def _paper_psnr(name: str, scale: int) -> float:
    """Table II for its rungs at ×2 (where Tables I and II differ for plain KPN), else Table I."""
    if scale == 2 and name in paper.TABLE2_X2_PSNR:
        return paper.TABLE2_X2_PSNR[name]
    return paper.TABLE1[name][scale].psnr if name in paper.TABLE1 else float("nan")


def report(payload: dict[str, object]) -> str:
    scale, scores = payload["scale"], payload["scores"]
    bicubic = next(iter(scores.values()))["bicubic_psnr"]
    table1 = [
        [
            name,
            f"{scores[name]['psnr']:.3f}",
            f"{scores[name]['psnr'] - bicubic:+.3f}",
            f"{scores[name]['ssim']:.4f}",
            f"{scores[name]['seconds_per_frame'] * 1e3:.1f}",
            _paper_cell(name, scale),
        ]
        for name in TABLE1_ROWS
    ]
    table2 = [
        [
            name,
            f"{scores[name]['psnr']:.3f}",
            f"{scores[name]['psnr'] - scores[TABLE2_RUNGS[0]]['psnr']:+.3f}",
            f"{paper.TABLE2_X2_PSNR[name]:.2f}",
            f"{paper.TABLE2_X2_PSNR[name] - paper.TABLE2_X2_PSNR[TABLE2_RUNGS[0]]:+.2f}",
        ]
        for name in TABLE2_RUNGS
    ]
    claims = [
        [row["claim"], f"{row['paper_gap_db']:+.2f}", f"{row['our_gap_db']:+.3f}", "yes" if row["holds"] else "**no**"]
        for row in payload["claims"]
    ]
    held = sum(row["holds"] for row in payload["claims"])
    budget, info = payload["budget"], payload["machine"]
    frame = "x".join(map(str, budget["frame"]))
    return "\n".join(
        [
            f"# The paper's comparisons on the synthetic cross-camera pairs, ×{scale}",
            "",
            f"Every model: {budget['steps']} steps of {budget['batch']} patches of {budget['patch']}² (HR), Adam lr "
            f"{budget['lr']:g} cosine with {budget['warmup']} warm-up steps, L1, EMA {budget['ema']}, "
            f"{budget['amp']} autocast"
            f"{' + channels_last' if budget['channels_last'] else ''}, seed {budget['seed']}; "
            "evaluated (EMA weights) on the "
            f"{payload['validation_images']} held-out photos, Y PSNR/SSIM by the RealSR protocol "
            f"(bicubic {bicubic:.3f} dB). "
            f"Time: forward of one {frame} Y frame, median of 3. {info['cpu']}, {info['torch_threads']} threads, "
            f"torch {info['torch']}, commit {info['commit']}, {info['date']}; "
            f"whole run {payload['wall_seconds'] / 60:.0f} min.",
            f"Paper: {paper.SOURCE}, on RealSR (Table I at ×{scale}; Table II at ×2).",
            "",
            "## Table I rows",
            "",
            markdown_table(
                ["model", "PSNR (dB)", "vs bicubic", "SSIM", f"ms / {frame} frame", f"paper ×{scale} PSNR / SSIM"],
                table1,
            ),
            "",
            "## Table II ablation",
            "",
            markdown_table(["rung", "PSNR (dB)", "gain over plain", "paper ×2 PSNR", "paper gain"], table2),
            "",
            "## The paper's orderings",
            "",
            markdown_table(["claim", "paper gap (dB)", "our gap (dB)", "holds here"], claims),
            "",
            f"{held} of {len(payload['claims'])} orderings hold on the proxy data.",
        ]
    )


def _paper_cell(name: str, scale: int) -> str:
    scores = paper.TABLE1.get(name, {}).get(scale)
    return "n/a" if scores is None else f"{scores.psnr:.2f} / {scores.ssim:.3f}"


def plot(payload: dict[str, object], path: str) -> None:
    """PSNR against time per frame, ours beside the paper's Table III: the trade-off the paper argues."""
    table3.require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = payload["scores"]
    fig, (ours_ax, paper_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, points, title in (
        (
            ours_ax,
            {name: (s["seconds_per_frame"], s["psnr"]) for name, s in scores.items()},
            f"ours: proxy data ×{payload['scale']}, {payload['machine']['cpu'][:40]}",
        ),
        (
            paper_ax,
            {name: (row.seconds_per_frame, row.psnr_x3) for name, row in paper.TABLE3.items() if name in scores},
            "paper: RealSR ×3, Table III",
        ),
    ):
        ax.scatter([t for t, _ in points.values()], [p for _, p in points.values()], color="tab:blue")
        for name, (seconds, psnr) in points.items():
            ax.annotate(
                name,
                (seconds, psnr),
                fontsize=8,
                xytext=(4, 3),
                textcoords="offset points",
                color="tab:red" if name == "ddet" else "black",
            )
        ax.set(xscale="log", xlabel="seconds per frame (log)", ylabel="PSNR (dB)", title=title)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, metavar="DIR", help="one training run per model under this folder")
    parser.add_argument("--out", metavar="DIR", help="write the tables (markdown, JSON) and the figure (PNG) here")
    parser.add_argument("--scale", type=int, choices=(2, 3, 4), default=2)
    parser.add_argument(
        "--hours",
        type=float,
        default=2.5,
        help="wall-clock budget of the whole run: sets the steps per model from a short timing of each (default 2.5)",
    )
    parser.add_argument("--steps", type=int, help="training steps per model, instead of --hours")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.steps} tiny steps per model: a smoke test")
    args = parser.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or args.hours <= 0:
        parser.error("--steps and --hours must be positive")
    if args.out:
        table3.require_matplotlib()  # before hours of training, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    budget = settled_budget(runs, QUICK if args.quick else FULL, args.steps, args.hours, args.scale)
    payload = reproduce(budget, args.scale, runs, args.threads)
    markdown = report(payload)
    stem = f"reproduce-x{args.scale}-{'quick-' if args.quick else ''}{_dt.date.today().isoformat()}"
    for path in write_results(stem, payload, markdown, args.out):
        print(f"  wrote {path}")
    if args.out:
        plot(payload, str(Path(args.out) / f"{stem}.png"))
        print(f"  wrote {Path(args.out) / f'{stem}.png'}")
    print(markdown)
    return 0


def settled_budget(runs: Path, base: Budget, steps: int | None, hours: float, scale: int) -> Budget:
    """The budget of ``runs``: the one it was started with (kept in budget.json, so that a resumed
    reproduction continues the same runs), else ``base`` with the steps given or calibrated."""
    record = runs / "budget.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        budget = Budget(**{**saved, "frame": tuple(saved["frame"])})
        if steps is not None and steps != budget.steps:
            raise SystemExit(
                f"reproduce: {runs} was started with {budget.steps} steps per model; use another --runs for {steps}"
            )
        print(f"reproduce: continuing {runs} at its budget of {budget.steps} steps per model")
        return budget
    if steps is None and base.steps == 0:
        steps = calibrated_steps(base, hours, scale)
    budget = dataclasses.replace(base, steps=steps or base.steps)
    runs.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(dataclasses.asdict(budget), indent=2) + "\n")
    return budget


# Share of --hours left for what is not training: validation, checkpoints, timing, start-up.
NON_TRAINING_SHARE = 0.15


def calibrated_steps(budget: Budget, hours: float, scale: int) -> int:
    """Steps per model such that every model's training fits ``hours`` together, from the median of a
    few timed training steps of each (after one warm-up step)."""
    total = 0.0
    for name in tqdm(MODELS, desc="timing a training step", unit="model", dynamic_ncols=True):
        total += seconds_per_step(name, budget, scale)
    steps = int(hours * 3600 * (1 - NON_TRAINING_SHARE) / total)
    print(f"reproduce: one step of every model takes {total:.1f} s here: {steps} steps per model fit {hours:g} h")
    if steps < 1:
        raise SystemExit(f"reproduce: not even one step per model fits {hours:g} h on this machine")
    return steps


def seconds_per_step(name: str, budget: Budget, scale: int, repeats: int = 3) -> float:
    torch.manual_seed(budget.seed)
    model = models.create(name)
    memory_format = torch.channels_last if budget.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    objective, optimizer = Objective(model, "l1"), torch.optim.Adam(model.parameters(), lr=budget.lr)
    lr_batch, hr_batch = (
        torch.rand(budget.batch, 1, budget.patch, budget.patch).contiguous(memory_format=memory_format)
        for _ in range(2)
    )
    autocast_dtype = table3.AUTOCAST_DTYPES["float32" if budget.amp == "none" else budget.amp]
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = objective(lr_batch, hr_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def reproduce(budget: Budget, scale: int, runs: Path, threads: int) -> dict[str, object]:
    started = time.perf_counter()
    device = torch.device("cpu")
    scores = {}
    for name in tqdm(MODELS, desc="models", unit="model", dynamic_ncols=True):
        config = config_for(name, budget, scale, runs, threads)
        train_or_resume(config)
        scores[name] = scores_of(config, budget, device)
    return {
        "machine": machine(device),
        "scale": scale,
        "budget": dataclasses.asdict(budget),
        "validation_images": len(DataSpec("synthetic", scale).validation(validation_folder(budget, runs) or None)),
        "scores": scores,
        "claims": claim_rows(scores, scale),
        "wall_seconds": time.perf_counter() - started,
        "paper_source": paper.SOURCE,
    }


if __name__ == "__main__":
    sys.exit(main())
