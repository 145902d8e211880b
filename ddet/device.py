"""The torch device a ``--device`` choice names, refused by name when this machine cannot give it."""

from __future__ import annotations

import re

import torch

CHOICES = "auto, cpu, cuda or cuda:N"


def pick_device(choice: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; a bare ``cuda`` is this process's GPU
    (``local_rank`` under torchrun)."""
    choice = str(choice)
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", choice)
    if match is None:
        raise ValueError(f"--device must be {CHOICES}, got {choice!r}")
    if match.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {choice}: CUDA is not available here")
    index = local_rank if match.group(2) is None else int(match.group(2))
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {choice}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)
