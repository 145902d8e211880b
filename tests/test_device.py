import pytest
import torch

from ddet.cli import main
from ddet.device import pick_device


def test_auto_and_cpu():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("choice", ["tpu", "meta", "cuda:x", "cpu cuda", ""])
def test_unknown_devices_are_refused_by_name(choice):
    with pytest.raises(ValueError, match=f"--device must be auto, cpu, cuda or cuda:N, got {choice!r}"):
        pick_device(choice)


def test_a_missing_gpu_is_refused_in_one_line(capsys):
    choice = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or any GPU on a machine without
    with pytest.raises(ValueError, match=f"--device {choice}: "):
        pick_device(choice)
    assert main(["upscale", "in.png", "-o", "out.png", "--device", choice]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"ddet upscale: error: --device {choice}: ") and error.count("\n") == 1
