import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ddet import models
from ddet.config import load_config, lr_factor, model_overrides
from ddet.data import TrainingPatches, make_sources
from ddet.run import Objective
from ddet.train import train
from ddet.weights import read_weights

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "ddet": {"width": 16, "blocks": 1, "feature_width": 16, "branch_width": 8},
    "kpn5": {"width": 16, "blocks": 1, "feature_width": 16},
    "lpkpn": {"width": 16, "blocks": 1, "feature_width": 16},
}


def _texture(rng, height, width):
    """A photo-like image: smooth random blobs with sharp-ish edges."""
    small = rng.random((height // 8, width // 8, 3))
    image = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC))
    return np.where(image > 128, np.minimum(image + 40, 255), image).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        (root / split).mkdir()
        for index in range(count):
            Image.fromarray(_texture(rng, 48, 56)).save(root / split / f"photo{index}.png")
    return root


@pytest.fixture(scope="module")
def darkened_pairs(tmp_path_factory):
    """A paired folder whose LR images are the HR ones at 70 % brightness: quick to learn."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(1)
    for folder in ("hr", "lr"):
        (root / folder).mkdir()
    for index in range(3):
        hr = _texture(rng, 40, 40)
        Image.fromarray(hr).save(root / "hr" / f"{index}.png")
        Image.fromarray(np.round(hr * 0.7).astype(np.uint8)).save(root / "lr" / f"{index}.png")
    return root


def _config(photos, out, **overrides):
    values = dict(
        model="kpn5",
        model_args=TINY["kpn5"],
        data="synthetic",
        data_root=str(photos / "train"),
        val_root=str(photos / "val"),
        scale=2,
        patch=16,
        batch=4,
        iterations=4,
        lr=1e-3,
        warmup=0,
        ema=0.0,
        workers=0,
        threads=1,
        log_every=1,
        validate_every=1000,
        checkpoint_every=2,
        out=str(out),
    )
    values.update(overrides)
    return load_config(**values)


def _darkened_config(photos, darkened_pairs, out, model, **overrides):
    """Ten steps of a tiny ``model`` on the darkened pairs, validated on them."""
    data = dict(data="folder", data_root=str(darkened_pairs), val_root=str(darkened_pairs))
    return _config(photos, out, model=model, model_args=TINY[model], **data, iterations=10, lr=1e-3, **overrides)


def _weights(path):
    return read_weights(path)[0]


def _batch_loss(config, weights=None):
    """The objective on a fixed batch of the run's first samples, for the initial or given weights."""
    torch.manual_seed(config.seed)
    model = models.create(config.model, **model_overrides(config))
    if weights is not None:
        model.load_state_dict(weights)
    source = make_sources(config.data, config.scale, config.data_root, config.val_root)[0]
    patches = TrainingPatches(source, config.patch, config.channels, config.seed, num_samples=config.batch)
    lr, hr = (torch.stack(t) for t in zip(*[patches[i] for i in range(config.batch)], strict=True))
    with torch.no_grad():
        return Objective(model, config.loss)(lr, hr).item()


@pytest.mark.parametrize("name", ["ddet", "kpn5", "lpkpn"])
def test_a_few_steps_reduce_the_loss(darkened_pairs, photos, tmp_path, name):
    config = _darkened_config(photos, darkened_pairs, tmp_path / name, name, checkpoint_every=100)
    result = train(config)
    assert set(result) == {"psnr", "ssim"}
    before = _batch_loss(config)
    after = _batch_loss(config, _weights(tmp_path / name / "model.safetensors"))
    assert after < before * 0.8, (before, after)


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_the_objective_is_the_loss_of_the_output(loss):
    torch.manual_seed(0)
    model = models.create("kpn5", **TINY["kpn5"], in_channels=1)
    lr_image, hr_image = torch.rand(2, 2, 1, 16, 16).unbind()
    expected = {"l1": torch.nn.functional.l1_loss, "l2": torch.nn.functional.mse_loss}[loss](model(lr_image), hr_image)
    torch.testing.assert_close(Objective(model, loss)(lr_image, hr_image), expected, rtol=0, atol=0)


def test_the_lpkpn_objective_sums_the_loss_of_every_pyramid_level():
    torch.manual_seed(0)
    model = models.create("lpkpn", **TINY["lpkpn"], in_channels=1)
    for parameter in model.parameters():  # away from the identity start, where every level is exact
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    lr_image, hr_image = torch.rand(2, 2, 1, 16, 16).unbind()
    _, levels = model.forward_levels(lr_image)
    targets = model.pyramid(hr_image)
    expected = sum((level - target).abs().mean() for level, target in zip(levels, targets, strict=True))
    assert len(levels) == 3
    assert not torch.allclose(expected, (model(lr_image) - hr_image).abs().mean())
    torch.testing.assert_close(Objective(model, "l1")(lr_image, hr_image), expected)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_and_channels_last_train_on_the_cpu(darkened_pairs, photos, tmp_path, amp):
    config = _darkened_config(
        photos, darkened_pairs, tmp_path / amp, "ddet", checkpoint_every=5, amp=amp, channels_last=True
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]  # the schedule follows real steps
    weights = _weights(tmp_path / amp / "model.safetensors")
    assert all(value.dtype == torch.float32 for value in weights.values())
    assert _batch_loss(config, weights) < _batch_loss(config) * 0.8


def test_run_writes_checkpoints_logs_and_weights(photos, tmp_path):
    out = tmp_path / "run"
    train(_config(photos, out, iterations=6, checkpoint_every=2, keep_checkpoints=2, validate_every=3, ema=0.9))
    assert (out / "checkpoints" / "latest").read_text() == "step-000000006"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000000004", "step-000000006"]
    assert {"model.safetensors", "ema.safetensors", "state.pt"} <= {
        p.name for p in (out / "checkpoints" / "step-000000006").iterdir()
    }
    metadata = read_weights(out / "model.safetensors")[1]
    assert metadata["model"] == "kpn5" and metadata["scale"] == "2" and metadata["channels"] == "y"
    assert (out / "best.safetensors").is_file()
    records = [yaml.safe_load(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_psnr" in r] == [3, 6]
    assert not list(out.rglob("*.tmp"))


def _run_cli(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "ddet.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


def _cli_args(config_path, out, *extra):
    return ["train", "--config", str(config_path), "--out", str(out), *extra]


def _write_config(config, path):
    from dataclasses import asdict

    path.write_text(yaml.safe_dump(asdict(config)))
    return path


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(photos, tmp_path):
    # Slow enough per step (larger patches) that the kill lands mid-run.
    config = _config(
        photos, tmp_path / "unused", iterations=30, checkpoint_every=1, patch=32, batch=8, ema=0.9, lr=1e-3
    )
    config_path = _write_config(config, tmp_path / "config.yaml")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _run_cli(_cli_args(config_path, straight)).wait(timeout=300) == 0

    process = _run_cli(_cli_args(config_path, killed))
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.is_file() and latest.read_text() >= "step-000000005"):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = int(latest.read_text().split("-")[1])
    assert 5 <= stopped_at < 30, "the kill came too late to test resuming"
    assert not (killed / "model.safetensors").exists()
    before_kill = [
        line for line in (killed / "log.jsonl").read_text().splitlines() if yaml.safe_load(line)["step"] <= stopped_at
    ]

    resumed = _run_cli(_cli_args(config_path, killed, "--resume"))
    output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, output
    for name in (
        "checkpoints/step-000000030/model.safetensors",
        "checkpoints/step-000000030/ema.safetensors",
        "model.safetensors",
    ):
        expected, actual = _weights(straight / name), _weights(killed / name)
        assert all(torch.equal(expected[k], actual[k]) for k in expected), name
    records = [yaml.safe_load(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 31))  # work after the checkpoint is redone once
    # The steps up to the checkpoint were not run again: their records (with their timings) stand as written.
    assert (killed / "log.jsonl").read_text().splitlines()[: len(before_kill)] == before_kill
    assert f"| {stopped_at}/30 " in output and "| 0/30 " not in output


@pytest.mark.slow
def test_torchrun_two_processes_match_one(photos, tmp_path):
    config = _config(photos, tmp_path / "unused", iterations=3, batch=4, checkpoint_every=3)
    config_path = _write_config(config, tmp_path / "config.yaml")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    single = subprocess.run(
        [sys.executable, "-m", "ddet.cli", *_cli_args(config_path, tmp_path / "one")],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr.decode()[-2000:]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ddet.cli",
    ]
    double = subprocess.run(
        [*launcher, *_cli_args(config_path, tmp_path / "two")], cwd=REPO, env=env, capture_output=True, timeout=300
    )
    assert double.returncode == 0, double.stderr.decode()[-4000:]
    one, two = _weights(tmp_path / "one" / "model.safetensors"), _weights(tmp_path / "two" / "model.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)


def test_refusals_name_the_problem(photos, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(photos, out), resume=True)
    train(_config(photos, out, iterations=2))
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(photos, out, iterations=2))
    with pytest.raises(ValueError, match="lr"):
        train(_config(photos, out, iterations=2, lr=5e-4), resume=True)
    state = out / "checkpoints" / "step-000000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match="state.pt"):
        train(_config(photos, out, iterations=4), resume=True)
    train(_config(photos, out, iterations=2), force=True)  # --force starts over
    assert (out / "checkpoints" / "latest").read_text() == "step-000000002"


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: kpn7\nscale: 3\nbatch: 8\n")
    config = load_config(path, batch=2, lr=None)
    assert (config.model, config.scale, config.batch, config.lr) == ("kpn7", 3, 2, 1e-4)
    path.write_text("modle: kpn7\n")
    with pytest.raises(ValueError, match="modle.*c.yaml"):
        load_config(path)
    with pytest.raises(ValueError, match="loss"):
        load_config(loss="l3")
    with pytest.raises(ValueError, match="channels_last"):
        load_config(channels_last="no")
    with pytest.raises(ValueError, match="in_channels"):
        model_overrides(load_config(channels="y", model_args={"in_channels": 3}))


def test_yaml_values_are_typed_or_refused_by_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nbatch: 8.0\nema: 0\n")  # YAML 1.1 reads 1e-4 as text
    config = load_config(path)
    assert (config.lr, config.batch, config.ema) == (1e-4, 8, 0.0)
    assert (type(config.lr), type(config.batch), type(config.ema)) == (float, int, float)
    for text, option in (
        ("lr: fast\n", "lr must be a number"),
        ("batch: 2.5\n", "batch must be a whole number"),
        ("init:\n", "init must be text"),
        ("amp: true\n", "amp must be text"),
        ("cameras: Canon\n", "cameras must be a list"),
        ("iterations: true\n", "iterations must be a whole"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=option):
            load_config(path)


def test_weights_and_checkpoints_that_do_not_fit_name_the_file(photos, tmp_path):
    foreign = tmp_path / "foreign"
    train(_config(photos, foreign, model="ddet", model_args=TINY["ddet"], iterations=2))
    with pytest.raises(ValueError, match="foreign/model.safetensors does not fit"):
        train(_config(photos, tmp_path / "init", init=str(foreign / "model.safetensors")))
    out = tmp_path / "run"
    train(_config(photos, out, iterations=2))
    state_path = out / "checkpoints" / "step-000000002" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["optimizer"]
    torch.save(state, state_path)
    with pytest.raises(ValueError, match="step-000000002 does not belong to this run.*optimizer"):
        train(_config(photos, out, iterations=2), resume=True)


def test_learning_rate_schedules():
    cosine = load_config(iterations=100, warmup=10)
    assert lr_factor(cosine, 0) == pytest.approx(0.1) and lr_factor(cosine, 9) == pytest.approx(1.0)
    assert lr_factor(cosine, 10) == pytest.approx(1.0) and lr_factor(cosine, 55) == pytest.approx(0.5)
    assert lr_factor(cosine, 100) == pytest.approx(0.0, abs=1e-12)
    step = load_config(schedule="step", step_size=10, step_gamma=0.5)
    assert [lr_factor(step, s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert math.isclose(lr_factor(load_config(schedule="constant"), 1234), 1.0)


def test_boolean_options_have_on_and_off_flags():
    from ddet.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--channels-last"]).channels_last is True
    assert parser.parse_args(["train", "--no-channels-last"]).channels_last is False
    assert parser.parse_args(["train"]).channels_last is None  # the config file decides


@pytest.mark.parametrize(
    "bad",
    [
        ["--model", "nope"],
        ["--lr", "-1"],
        ["--lr", "nan"],
        ["--ema", "2.0"],
        ["--grad-clip", "-1"],
        ["--model-args", "{width: 16, blocks: -1, feature_width: 16}"],
        ["--init", "missing.safetensors"],
        ["--data-root", "missing-folder"],
        ["--workers", "-1"],
        ["--schedule", "step", "--step-size", "0"],
        ["--device", "meta"],
        ["--device", "tpu"],
        ["--iterations", str(10**30)],
        ["--model-args", "{width: 100000000000, blocks: 1, feature_width: 16}"],
    ],
)
def test_force_keeps_the_old_run_when_the_new_settings_are_bad(photos, tmp_path, capsys, bad):
    out = tmp_path / "run"
    config_path = _write_config(_config(photos, out, iterations=2), tmp_path / "config.yaml")
    from ddet.cli import main

    assert main(_cli_args(config_path, out)) == 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    capsys.readouterr()
    assert main([*_cli_args(config_path, out, "--force"), *bad]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_a_loss_that_turns_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(photos, tmp_path):
    out = tmp_path / "run"
    # Adam's first update moves every weight by ~lr: the second loss overflows float32.
    config = _config(photos, out, iterations=6, lr=1e30, loss="l2", checkpoint_every=1, log_every=2)
    with pytest.raises(ValueError, match=r"NaN or infinite at step 2.*step-000000001, is kept"):
        train(config)
    assert (out / "checkpoints" / "latest").read_text() == "step-000000001"
    assert not (out / "model.safetensors").exists()


def test_resume_extends_a_finished_run(photos, tmp_path, capsys):
    out = tmp_path / "run"
    train(_config(photos, out, iterations=2))
    capsys.readouterr()
    assert train(_config(photos, out, iterations=2), resume=True) is None
    assert "complete at step 2" in capsys.readouterr().out
    train(_config(photos, out, iterations=4), resume=True)
    assert (out / "checkpoints" / "latest").read_text() == "step-000000004"
    records = [yaml.safe_load(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert read_weights(out / "model.safetensors")[1]["step"] == "4"


def test_ctrl_c_says_what_was_kept_and_how_to_resume(photos, tmp_path, capsys, monkeypatch):
    from ddet.cli import main
    from ddet.run import Run

    real_step, calls = Run.optimizer_step, []

    def interrupted_at_third_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_step(*args)

    monkeypatch.setattr(Run, "optimizer_step", interrupted_at_third_step)
    out = tmp_path / "run"
    config_path = _write_config(_config(photos, out, iterations=6, checkpoint_every=2), tmp_path / "config.yaml")
    assert main(_cli_args(config_path, out)) == 130
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.endswith("\n")
    assert error.splitlines()[-1] == (
        "ddet train: interrupted at step 2; checkpoint step-000000002 is kept: "
        f"continue with ddet train --out {out} --resume"
    )


def test_a_broken_config_file_is_named_in_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch: 8\npatch: [unclosed\n")
    with pytest.raises(ValueError, match=r"c.yaml: .* at line 3, column 1$") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_a_latest_pointer_outside_the_run_is_refused(photos, tmp_path):
    out = tmp_path / "run"
    train(_config(photos, out, iterations=2))
    (out / "checkpoints" / "latest").write_text("../../elsewhere/step-000000002")
    with pytest.raises(ValueError, match="not a checkpoint of this run"):
        train(_config(photos, out, iterations=4), resume=True)
