import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddet import models
from ddet.cli import build_parser, main
from ddet.data import read_image
from ddet.weights import bundled_path, save_weights

TINY_DDET = {"width": 16, "blocks": 1, "feature_width": 16, "branch_width": 8, "in_channels": 1}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create("ddet", **TINY_DDET)
    path = tmp_path_factory.mktemp("weights") / "tiny_x2.safetensors"
    save_weights(path, model.state_dict(), "ddet", TINY_DDET, 2, "y")
    return path


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)).save(path)
    return path


def test_upscale_writes_the_right_size_and_skips_existing_outputs(tmp_path, photo, weights, capsys):
    out = tmp_path / "out.png"
    assert main(["upscale", str(photo), "-o", str(out), "--weights", str(weights), "--device", "cpu"]) == 0
    assert read_image(out).shape == (40, 60, 3)
    out.write_bytes(b"kept")
    capsys.readouterr()
    assert main(["upscale", str(photo), "-o", str(out), "--weights", str(weights)]) == 0
    assert "skipping 1 existing output(s)" in capsys.readouterr().out and out.read_bytes() == b"kept"
    assert main(["upscale", str(photo), "-o", str(out), "--weights", str(weights), "--force"]) == 0
    assert read_image(out).shape == (40, 60, 3)


def test_upscale_several_images_into_a_folder_and_jpeg(tmp_path, photo, weights):
    second = tmp_path / "second.jpg"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(second)
    folder = tmp_path / "results"
    folder.mkdir()
    assert (
        main(
            [
                "upscale",
                str(photo),
                str(second),
                "-o",
                str(folder),
                "--weights",
                str(weights),
                "--tile",
                "32",
                "--tile-context",
                "16",
            ]
        )
        == 0
    )
    assert read_image(folder / "photo_x2.png").shape == (40, 60, 3)
    assert read_image(folder / "second_x2.png").shape == (16, 24, 3)
    assert main(["upscale", str(photo), "-o", str(tmp_path / "single.jpg"), "--weights", str(weights)]) == 0
    assert Image.open(tmp_path / "single.jpg").format == "JPEG"


def test_upscale_refuses_two_inputs_with_one_target_before_writing(tmp_path, photo, weights, capsys):
    twin = tmp_path / "other" / photo.name
    twin.parent.mkdir()
    twin.write_bytes(photo.read_bytes())
    folder = tmp_path / "results"
    assert main(["upscale", str(photo), str(twin), "-o", str(folder), "--weights", str(weights)]) == 2
    assert f"would both be written to {folder / 'photo_x2.png'}" in capsys.readouterr().err
    assert not folder.exists()


def test_upscale_whole_image_with_tile_0_and_refuses_unknown_suffixes(tmp_path, photo, weights, capsys):
    assert (
        main(["upscale", str(photo), "-o", str(tmp_path / "whole.png"), "--weights", str(weights), "--tile", "0"]) == 0
    )
    assert read_image(tmp_path / "whole.png").shape == (40, 60, 3)
    assert main(["upscale", str(photo), "-o", str(tmp_path / "out.xyz"), "--weights", str(weights)]) == 2
    assert "out.xyz" in capsys.readouterr().err
    assert not (tmp_path / "out.xyz").exists()


def test_upscale_errors_name_the_input(tmp_path, weights, capsys):
    assert (
        main(["upscale", str(tmp_path / "absent.png"), "-o", str(tmp_path / "o.png"), "--weights", str(weights)]) == 2
    )
    assert "absent.png" in capsys.readouterr().err
    assert (
        main(["upscale", str(tmp_path / "absent.png"), "-o", "o.png", "--weights", str(tmp_path / "none.safetensors")])
        == 2
    )
    assert "none.safetensors" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "x.png"), "-o", "o.png", "--weights", str(weights), "--scale", "4"]) == 2
    assert "×2" in capsys.readouterr().err


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(1)
    for folder in ("hr", "lr"):
        (tmp_path / "pairs" / folder).mkdir(parents=True)
    for name in ("a", "b"):
        hr = rng.integers(0, 256, (24, 28, 3)).astype(np.uint8)
        Image.fromarray(hr).save(tmp_path / "pairs" / "hr" / f"{name}.png")
        Image.fromarray(hr[::2, ::2]).save(tmp_path / "pairs" / "lr" / f"{name}.png")
    return tmp_path / "pairs"


def eval_folder(weights, pairs, report):
    """The ``ddet eval`` arguments that score ``weights`` on a paired folder into the JSON ``report``."""
    return ["eval", "--weights", str(weights), "--data", "folder", "--data-root", str(pairs), "--json", str(report)]


def test_eval_writes_a_table_and_json_with_the_bicubic_row(tmp_path, pairs, weights, capsys):
    report = tmp_path / "report.json"
    args = eval_folder(weights, pairs, report)
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "bicubic" in table and "mean" in table
    result = json.loads(report.read_text())
    assert [row["name"] for row in result["images"]] == ["a", "b"]
    assert result["scale"] == 2 and result["model"] == "ddet" and result["protocol"]["border"] == 0
    # the fresh network starts at the identity: the model row equals the bicubic row
    assert result["mean"]["psnr"] == pytest.approx(result["bicubic_mean"]["psnr"], abs=0.01)
    assert main(args) == 2 and "report.json" in capsys.readouterr().err
    assert main([*args, "--force", "--patch", "16", "--border", "2"]) == 0
    assert json.loads(report.read_text())["protocol"]["patch"] == 16


def test_eval_json_stays_standard_when_a_psnr_is_infinite(tmp_path, weights):
    for folder in ("hr", "lr"):
        (tmp_path / "pairs" / folder).mkdir(parents=True)
        Image.fromarray(np.full((24, 28, 3), 90, np.uint8)).save(tmp_path / "pairs" / folder / "flat.png")
    report = tmp_path / "report.json"
    assert main(eval_folder(weights, tmp_path / "pairs", report)) == 0

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    result = json.loads(report.read_text(), parse_constant=refuse)
    assert result["images"][0]["bicubic_psnr"] is None and result["images"][0]["bicubic_ssim"] == pytest.approx(1.0)


def test_train_flags_reach_the_config(tmp_path, capsys):
    assert main(["train", "--model", "nonexistent", "--out", str(tmp_path / "r"), "--iterations", "1"]) == 2
    assert "nonexistent" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "config.yaml" in capsys.readouterr().err


# PSNR gains over bicubic that docs/MODEL_CARD.md states for the bundled weights, less 0.01 dB.
BUNDLED_GAINS_DB = {2: 0.74, 3: 0.78, 4: 0.87}


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bundled_weights_beat_bicubic_on_the_held_out_photos(scale):
    if not bundled_path("ddet", scale).is_file():
        pytest.skip(f"bundled ×{scale} weights not trained yet")
    from ddet import metrics, upscale
    from ddet.data import DataSpec, WholeImages
    from ddet.inference import evaluate_images, resolve_model

    model, model_scale, channels, name = resolve_model(scale=scale)
    assert (model_scale, channels, name) == (scale, "y", "ddet")
    rows = evaluate_images(model, WholeImages(DataSpec("synthetic", scale).validation(), "y"))
    ours = metrics.summarize(rows)
    bicubic = metrics.summarize(rows, prefix="bicubic_")
    assert ours["psnr"] - bicubic["psnr"] > BUNDLED_GAINS_DB[scale] and ours["ssim"] > bicubic["ssim"], (ours, bicubic)
    assert upscale(np.zeros((20, 30, 3), np.uint8), scale=scale).shape == (20 * scale, 30 * scale, 3)


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, size in enumerate([(20, 30), (24, 16), (12, 12)]):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (*size, 3)).astype(np.uint8)).save(
            folder / f"p{index}.png"
        )
    return folder


def test_eval_on_synthetic_pairs_of_a_photo_folder_builds_no_training_data(
    tmp_path, photo_folder, weights, monkeypatch
):
    import ddet.data

    def refuse(*args, **kwargs):
        pytest.fail("eval built training data")

    monkeypatch.setattr(ddet.data.DataSpec, "training", refuse)
    monkeypatch.setattr(ddet.data, "skimage_photos", refuse)
    report = tmp_path / "report.json"
    args = ["eval", "--weights", str(weights), "--data-root", str(photo_folder), "--json", str(report)]
    assert main(args) == 0
    assert [row["name"] for row in json.loads(report.read_text())["images"]] == ["p0", "p1", "p2"]


def test_upscale_a_folder_skips_existing_outputs_and_sums_up(tmp_path, photo_folder, weights, capsys):
    out = tmp_path / "out"
    assert main(["upscale", str(photo_folder), "-o", str(out), "--weights", str(weights), "--precision", "fp32"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["p0_x2.png", "p1_x2.png", "p2_x2.png"]
    assert read_image(out / "p1_x2.png").shape == (48, 32, 3)
    printed = capsys.readouterr().out
    megapixels = (40 * 60 + 48 * 32 + 24 * 24) / 1e6
    assert printed.count("precision: float32") == 1
    assert f"upscaled 3 file(s), {megapixels:.2f} megapixels in " in printed and "MP/s)" in printed
    (out / "p0_x2.png").write_bytes(b"kept")
    (out / "p2_x2.png").unlink()
    assert main(["upscale", str(photo_folder), "-o", str(out), "--weights", str(weights)]) == 0
    printed = capsys.readouterr().out
    assert "skipping 2 existing output(s)" in printed and "--force" in printed
    assert f"upscaled 1 file(s), {24 * 24 / 1e6:.2f} megapixels" in printed
    assert (out / "p0_x2.png").read_bytes() == b"kept" and read_image(out / "p2_x2.png").shape == (24, 24, 3)


def _interrupt_on_call(monkeypatch, target, name, call):
    """Make ``target.name`` raise KeyboardInterrupt on its ``call``-th use (counting from 1)."""
    original, calls = getattr(target, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, interrupted)


def test_ctrl_c_mid_image_leaves_the_finished_files_only_and_says_so(
    tmp_path, photo_folder, weights, capsys, monkeypatch
):
    from ddet import inference

    _interrupt_on_call(monkeypatch, inference, "run_network", 2)  # the second image's first tile
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        main(["upscale", str(photo_folder), "-o", str(out), "--weights", str(weights), "--tile", "0"])
    assert stopped.value.code == 130
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted while upscaling" in error and "p1.png" in error and "1 of 3 file(s) finished" in error
    assert sorted(p.name for p in out.iterdir()) == ["p0_x2.png"]
    assert read_image(out / "p0_x2.png").shape == (40, 60, 3)


def test_ctrl_c_while_writing_leaves_no_partial_file(tmp_path, photo, weights, monkeypatch):
    _interrupt_on_call(monkeypatch, Image.Image, "save", 1)
    with pytest.raises(SystemExit):
        main(["upscale", str(photo), "-o", str(tmp_path / "out" / "photo_x2.png"), "--weights", str(weights)])
    assert list((tmp_path / "out").iterdir()) == []


def test_eval_at_reduced_precision_says_so(tmp_path, pairs, weights, capsys):
    report = tmp_path / "bf16.json"
    assert main([*eval_folder(weights, pairs, report), "--precision", "bf16"]) == 0
    assert "precision: bf16 autocast" in capsys.readouterr().out
    assert json.loads(report.read_text())["precision"] == "bf16"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--border", "-5"], "--border must be at least 0"),
        (["--patch", "3"], "--patch must be at least 11"),
        (["--json", "."], ". is a folder"),
        (["--data", "realsr"], "needs the RealSR folder (--data-root)"),
    ],
)
def test_eval_refuses_bad_flags_before_any_work(weights, capsys, monkeypatch, flags, message):
    import ddet.inference

    monkeypatch.setattr(ddet.inference, "evaluate_images", lambda *a, **k: pytest.fail("evaluated before refusing"))
    assert main(["eval", "--weights", str(weights), *flags]) == 2
    assert message in capsys.readouterr().err


def test_upscale_never_writes_over_its_input_and_names_unknown_models(tmp_path, photo, weights, capsys):
    assert main(["upscale", str(photo), "-o", str(photo), "--weights", str(weights), "--force"]) == 2
    assert "is an input too" in capsys.readouterr().err
    assert main(["upscale", str(photo), "-o", str(tmp_path / "x.png"), "--model", "nosuch"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err


def test_weights_that_make_no_finite_image_are_refused(tmp_path, photo, capsys):
    torch.manual_seed(0)
    model = models.create("ddet", **TINY_DDET)
    huge = {key: value * 1e30 if value.is_floating_point() else value for key, value in model.state_dict().items()}
    save_weights(tmp_path / "huge.safetensors", huge, "ddet", TINY_DDET, 2, "y")
    assert (
        main(["upscale", str(photo), "-o", str(tmp_path / "out.png"), "--weights", str(tmp_path / "huge.safetensors")])
        == 2
    )
    assert "NaN or infinity" in capsys.readouterr().err and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    "command, precision",
    [(["eval"], "fp32"), (["upscale", "in.png", "-o", "out.png"], "auto"), (["export", "-o", "m.onnx"], None)],
)
def test_commands_share_the_model_and_running_options(command, precision):
    model = ["--model", "kpn5", "--weights", "w.safetensors", "--scale", "3"]
    args = build_parser().parse_args([*command, *model])
    assert (args.model, args.weights, args.scale) == ("kpn5", "w.safetensors", 3)
    if precision is None:
        return
    assert (args.precision, args.device, args.tile, args.tile_context) == (precision, "auto", None, None)
    running = ["--tile", "64", "--tile-context", "8", "--precision", "bf16", "--device", "cpu"]
    args = build_parser().parse_args([*command, *running])
    assert (args.tile, args.tile_context, args.precision, args.device) == (64, 8, "bf16", "cpu")
