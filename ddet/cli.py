"""The ``ddet`` command: ``train``, ``eval``, ``upscale`` and ``export``.

ddet upscale photo.jpg -o photo_x2.png
ddet eval --scale 2 --json results.json
ddet train --config configs/ddet_x2.yaml
ddet export --scale 2 -o ddet_x2.onnx
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a SIGINT
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")  # ddet.inference.PRECISIONS, without importing torch


def yaml_mapping(text: str) -> dict:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"not YAML: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{blocks: 4}}', got {text!r}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from ddet.config import TrainConfig

    parser.add_argument("--config", help="YAML file of training options (flags override it)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (with a larger --iterations: train it longer)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="start over in a non-empty --out (its outputs are cleared once the new settings are checked)",
    )
    for field in dataclasses.fields(TrainConfig):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, dict):
            parser.add_argument(flag, type=yaml_mapping, help=f"YAML mapping (default {default})")
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="+", help=f"default {' '.join(map(str, default))}")
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"default {default}")
        else:
            parser.add_argument(flag, type=type(default), help=f"default {default}")


def command_train(args: argparse.Namespace) -> None:
    from ddet.config import TrainConfig, load_config
    from ddet.train import train

    fields = [field.name for field in dataclasses.fields(TrainConfig)]
    overrides = {name: getattr(args, name) for name in fields}
    config_file = args.config
    if args.resume and not config_file:
        # Resuming needs nothing but --out: the run's own record of its options.
        saved = Path(args.out or TrainConfig.out) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved} not found (is --out the run's folder?)")
        config_file = saved
    result = train(load_config(config_file, **overrides), resume=args.resume, force=args.force)
    if result is not None:
        print(f"final validation: PSNR {result['psnr']:.3f} dB, SSIM {result['ssim']:.4f}")


def command_eval(args: argparse.Namespace) -> None:
    from ddet import metrics
    from ddet.data import REALSR_CAMERAS, DataSpec, WholeImages
    from ddet.device import pick_device
    from ddet.inference import choose_precision, describe_precision, evaluate_images, prepare_model, resolve_model

    if args.border < 0:
        raise ValueError(f"--border must be at least 0, got {args.border}")
    if args.patch not in (None, 0) and args.patch < metrics.SSIM_WINDOW:
        raise ValueError(f"--patch must be at least {metrics.SSIM_WINDOW} (the SSIM window), got {args.patch}")
    device = pick_device(args.device)
    settings = choose_precision(args.precision, device)
    model, scale, channels, name = resolve_model(args.model, args.weights, args.scale, device)
    prepare_model(model)
    cameras = tuple(args.cameras or REALSR_CAMERAS)
    source = DataSpec(args.data, scale, args.realsr_version, cameras).validation(args.data_root, args.split)
    if args.json:
        _refuse_overwrite(Path(args.json), args.force)
    patch = metrics.OFFICIAL_PATCH if args.patch == 0 else args.patch
    print(describe_precision(settings))
    options = dict(tile=args.tile, context=args.tile_context, device=device, border=args.border, patch=patch)
    rows = evaluate_images(
        model, WholeImages(source, channels, cache=False), **options, progress=True, precision=settings.name
    )
    mean, bicubic = metrics.summarize(rows), metrics.summarize(rows, prefix="bicubic_")
    _print_scores(rows, mean, bicubic, name)
    if args.json:
        report = dict(
            model=name,
            weights=str(args.weights) if args.weights else "bundled",
            scale=scale,
            channels=channels,
            precision=settings.name,
            data=args.data,
            protocol=_protocol(args.border, patch),
            images=rows,
            mean=mean,
            bicubic_mean=bicubic,
        )
        _write_json(Path(args.json), report)


def _print_scores(rows, mean, bicubic, name):
    """The per-image table of ``ddet eval`` with its mean row, bicubic beside the model ``name``."""
    print(f"{'image':<24} {'bicubic PSNR':>12} {'SSIM':>7} {name + ' PSNR':>14} {'SSIM':>7}")
    for row in rows:
        print(
            f"{row['name']:<24} {row['bicubic_psnr']:>12.3f} {row['bicubic_ssim']:>7.4f} "
            f"{row['psnr']:>14.3f} {row['ssim']:>7.4f}"
        )
    print(f"{'mean':<24} {bicubic['psnr']:>12.3f} {bicubic['ssim']:>7.4f} {mean['psnr']:>14.3f} {mean['ssim']:>7.4f}")


def _protocol(border, patch):
    """How ``ddet eval`` scored, as its JSON report records it."""
    from ddet import metrics

    return {
        "y": "MATLAB rgb2ycbcr, uint8",
        "multiple": metrics.MULTIPLE,
        "border": border,
        "patch": patch,
        "stride": metrics.OFFICIAL_STRIDE if patch else None,
    }


def _write_json(path, report):
    from ddet.files import atomic_write

    text = json.dumps(_finite_or_null(report), indent=2, allow_nan=False)
    atomic_write(path, lambda handle: handle.write(text.encode()))


def _finite_or_null(value):
    """The report with infinite scores (PSNR of identical images) as null: JSON has no Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value


def _refuse_overwrite(path, force):
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file to write")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (pass --force to overwrite)")


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files named, with each folder replaced by the images in it (sorted)."""
    from ddet.data.io import list_images

    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += list_images(item)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input image not found: {item}")
    return files


def output_paths(
    inputs: Sequence[str | Path], out: str | Path, scale: int, suffix: str, into_folder: bool = False
) -> list[Path]:
    """Where each input goes: ``out`` itself for one input (unless it is or must be a folder), else
    ``out/<stem>_x<scale><suffix>``."""
    out = Path(out)
    if len(inputs) == 1 and not into_folder and not out.is_dir() and not str(out).endswith(("/", "\\")):
        return [out]
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: several inputs or a folder need an output folder")
    targets = [out / f"{Path(path).stem}_x{scale}{suffix}" for path in inputs]
    claimed = {}
    for path, target in zip(inputs, targets, strict=True):
        if target in claimed:
            raise ValueError(
                f"{claimed[target]} and {path} would both be written to {target}; upscale them into different folders"
            )
        claimed[target] = path
    return targets


def output_size(path: str | Path, scale: int) -> tuple[int, int]:
    """(height, width) of the upscaled ``path``, read from its header."""
    from PIL import Image

    with Image.open(path) as image:
        return image.height * scale, image.width * scale


def command_upscale(args: argparse.Namespace) -> None:
    from ddet.data.io import writable_format
    from ddet.device import pick_device
    from ddet.inference import (
        choose_precision,
        default_context,
        describe_precision,
        plan_tiles,
        prepare_model,
        resolve_model,
        window_pixels,
    )

    device = pick_device(args.device)
    settings = choose_precision(args.precision, device)
    model, scale, channels, _ = resolve_model(args.model, args.weights, args.scale, device)
    inputs = expand_inputs(args.inputs)
    targets = output_paths(
        inputs, args.output, scale, args.suffix, into_folder=any(Path(item).is_dir() for item in args.inputs)
    )
    for source, target in zip(inputs, targets, strict=True):
        writable_format(target)
        if target.exists() and target.resolve() == Path(source).resolve():
            raise ValueError(f"{target} is an input too: write the result elsewhere")
    jobs = [
        (source, target) for source, target in zip(inputs, targets, strict=True) if args.force or not target.exists()
    ]
    skipped = len(targets) - len(jobs)
    if skipped:
        print(
            f"skipping {skipped} existing output(s), e.g. {next(t for t in targets if t.exists())} "
            "(pass --force to overwrite)"
        )
    print(describe_precision(settings))
    if not jobs:
        return
    prepare_model(model)
    context = default_context(model) if args.tile_context is None else args.tile_context
    max_pixels = None
    if args.tile is None:
        max_pixels = window_pixels(model, 3 if channels == "rgb" else 1, settings, device, _bytes(args.max_memory))

    def tile_for(height: int, width: int) -> int | tuple[int, int]:
        """--tile, or each image's tiling that computes the fewest pixels within the memory budget."""
        return args.tile if max_pixels is None else plan_tiles(height, width, context, max_pixels)

    options = dict(scale=scale, model=model, tile_context=context, precision=settings.name, device=device)
    _upscale_all(args, jobs, options, tile_for)


def _bytes(gigabytes):
    return None if gigabytes is None else int(gigabytes * 2**30)


def _upscale_all(args, jobs, options, tile_for):
    """Upscale and write every (source, target) under one progress bar over all their pixels;
    Ctrl-C stops with one line, leaving only complete files (each is written atomically)."""
    import time

    import numpy as np
    from tqdm import tqdm

    from ddet.data.io import write_image
    from ddet.inference import upscale

    sizes = [output_size(source, options["scale"]) for source, _ in jobs]
    megapixels = [height * width / 1e6 for height, width in sizes]
    started, done = time.perf_counter(), 0
    bar = tqdm(
        total=round(sum(megapixels), 2),
        unit="MP",
        desc="upscale",
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} MP [{elapsed}<{remaining}]",
    )
    try:
        for (source, target), size in zip(jobs, sizes, strict=True):
            bar.set_postfix_str(f"{done + 1}/{len(jobs)} {source.name}")
            image = upscale(
                source,
                **options,
                tile=tile_for(*size),
                dtype=np.uint8,
                on_pixels=lambda pixels: bar.update(pixels / 1e6),
            )
            write_image(target, image, force=True)
            done += 1
    except KeyboardInterrupt:
        bar.close()
        print(
            f"ddet upscale: interrupted while upscaling {source}; {done} of {len(jobs)} file(s) finished and written, "
            "no partial output",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    bar.close()
    seconds = time.perf_counter() - started
    total = sum(megapixels)
    print(
        f"upscaled {done} file(s), {total:.2f} megapixels in {seconds:.1f} s ({total / seconds:.2f} MP/s) "
        f"→ {Path(args.output)}"
    )


def command_export(args: argparse.Namespace) -> None:
    import logging
    import warnings

    from ddet.deploy import export

    # torch's exporter logs the optional torchvision ops it skips and warns about its own internals;
    # neither is news to someone exporting a ddet model.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        path = export(
            args.output,
            model=args.model,
            weights=args.weights,
            scale=args.scale,
            format=args.format,
            dtype=args.dtype,
            force=args.force,
        )
    except ImportError as error:  # a missing optional package: say which extra to install
        raise ValueError(str(error)) from None
    except RuntimeError as error:  # the exporter or AOTInductor cannot handle this model: its first line says why
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot export to {args.output}: {first_line}") from None
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --weights and --scale: which network a command runs."""
    parser.add_argument("--model", help="registry name (default: ddet with bundled weights)")
    parser.add_argument("--weights", help="safetensors file from ddet train")
    parser.add_argument("--scale", type=int, choices=(2, 3, 4), help="default 2, or the scale of --weights")


def add_running_arguments(
    parser: argparse.ArgumentParser, *, tile_help: str, precision: str, precision_help: str
) -> None:
    """--tile, --tile-context, --precision and --device: how a command runs the network on images."""
    parser.add_argument("--tile", type=int, default=None, help=tile_help)
    parser.add_argument(
        "--tile-context",
        type=int,
        help="pixels each tile reads beyond its edges (default: the model's receptive radius, at most 32)",
    )
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=precision, help=precision_help)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", choices=("synthetic", "realsr", "folder"), default="synthetic")
    parser.add_argument("--data-root", help="RealSR folder, paired folder (hr/, lr/), or photos for synthetic pairs")
    parser.add_argument("--split", default="Test", help="RealSR split (default Test)")
    parser.add_argument("--cameras", nargs="+", help="RealSR cameras (default: both, Canon and Nikon)")
    parser.add_argument("--realsr-version", type=int, choices=(2, 3), default=2)
    parser.add_argument("--border", type=int, default=0, help="pixels shaved from each side (default 0)")
    parser.add_argument(
        "--patch",
        type=int,
        nargs="?",
        const=0,
        default=None,
        help="average over patches of this size, stride 800 (bare flag: 1200 as the official script)",
    )
    add_running_arguments(
        parser,
        tile_help="run the model in tiles of this size",
        precision="fp32",
        precision_help="fp32 (default), bf16, fp16 or auto, as ddet upscale",
    )
    parser.add_argument("--json", help="write the per-image table and means here")
    parser.add_argument("--force", action="store_true", help="overwrite --json")


def add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN", help="PNG (8/16-bit) or JPEG images, or folders of images")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output file, or folder for several inputs or a folder"
    )
    add_model_arguments(parser)
    add_running_arguments(
        parser,
        tile_help="tile side in output pixels (default: the whole image when it fits --max-memory, else the "
        "tiling that computes the fewest pixels within it; 0: the whole image)",
        precision="auto",
        precision_help="auto (default): bf16 autocast where the CPU or GPU has bfloat16 units, else fp32",
    )
    parser.add_argument(
        "--max-memory",
        type=float,
        metavar="GB",
        help="memory for the network's working set, in GiB (default 1.25, at most half the free memory)",
    )
    parser.add_argument("--suffix", default=".png", help="file type of outputs written into a folder")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs (default: skip them)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write: *.onnx or *.pt2")
    parser.add_argument("--format", choices=("onnx", "pt2"), help="default: from the suffix of OUT")
    add_model_arguments(parser)
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="precision of the exported network (default float32)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddet", description="DDet real-world super-resolution")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, summary, add_arguments, run in (
        ("train", "train a model (also under torchrun)", add_train_arguments, command_train),
        ("eval", "PSNR/SSIM under the RealSR protocol, with the bicubic baseline", add_eval_arguments, command_eval),
        ("upscale", "upscale photographs", add_upscale_arguments, command_upscale),
        ("export", "export a model to ONNX or a compiled PyTorch package (pt2)", add_export_arguments, command_export),
    ):
        command = commands.add_parser(name, help=summary)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, OSError) as error:  # OSError: missing, existing, unreadable files
        print(f"ddet {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as interrupt:  # files are written atomically: finished ones stay, none is torn
        print(f"ddet {args.command}: {str(interrupt) or 'interrupted; no partial file was written'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
