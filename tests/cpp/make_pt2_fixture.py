"""Writes what the C++ example's ctest runs: a small DDet exported as an AOTInductor package, an
odd-sized input and the model's eager output on it, as .tensor files.

    python tests/cpp/make_pt2_fixture.py OUT_FOLDER
"""

import sys
from pathlib import Path

import torch

import ddet
from ddet import models
from ddet.deploy import write_tensor

SMALL_DDET = {"width": 16, "blocks": 1, "feature_width": 16, "branch_width": 8}


def main(folder):
    folder = Path(folder)
    torch.manual_seed(0)
    model = models.create("ddet", **SMALL_DDET).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # off the identity-like start, so a wrong graph shows
            parameter.add_(0.05 * torch.randn_like(parameter))
        x = torch.rand(2, 1, 97, 131)
        write_tensor(folder / "input.tensor", x)
        write_tensor(folder / "reference.tensor", model(x))
    ddet.export(folder / "model.pt2", model=model, force=True)
    print(f"wrote {folder / 'model.pt2'}, input.tensor and reference.tensor")


if __name__ == "__main__":
    main(sys.argv[1])
