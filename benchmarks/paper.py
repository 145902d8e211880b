"""The DDet paper's Tables I–III as printed: the one place benchmarks and docs read them from.

Source (SOURCE): all figures are on RealSR version 2, Y channel. Keys are this project's registry
names; a row the paper has no registry model for is absent. Nothing here is measured.
"""

from __future__ import annotations

from typing import NamedTuple

SOURCE = (
    "Shi, Zhong, Yang, Yang, Lin, 'DDet: Dual-path Dynamic Enhancement Network for Real-World Image "
    "Super-Resolution', IEEE Signal Processing Letters 2020 (arXiv 2002.11079)"
)


class Scores(NamedTuple):
    psnr: float
    ssim: float


# Table I: PSNR (dB) / SSIM on RealSR, by scale.
TABLE1: dict[str, dict[int, Scores]] = {
    "srresnet": {2: Scores(33.79, 0.918), 3: Scores(30.52, 0.858), 4: Scores(29.03, 0.821)},
    "edsr": {2: Scores(33.57, 0.916), 3: Scores(30.13, 0.847), 4: Scores(28.77, 0.812)},
    "rcan": {2: Scores(33.76, 0.917), 3: Scores(30.36, 0.861), 4: Scores(28.89, 0.820)},
    "edrn": {2: Scores(33.72, 0.920), 3: Scores(30.21, 0.852), 4: Scores(28.79, 0.809)},
    "kpn5": {2: Scores(33.41, 0.913), 3: Scores(30.47, 0.860), 4: Scores(28.80, 0.826)},
    "kpn7": {2: Scores(33.42, 0.913), 3: Scores(30.49, 0.861), 4: Scores(28.84, 0.826)},
    "kpn13": {2: Scores(33.44, 0.913), 3: Scores(30.52, 0.863), 4: Scores(28.92, 0.829)},
    "kpn19": {2: Scores(33.45, 0.914), 3: Scores(30.57, 0.864), 4: Scores(28.99, 0.832)},
    "lpkpn": {2: Scores(33.49, 0.917), 3: Scores(30.60, 0.865), 4: Scores(29.05, 0.834)},
    "ddet": {2: Scores(34.37, 0.932), 3: Scores(31.08, 0.880), 4: Scores(29.23, 0.837)},
}

# Table II: the ablation at x2, PSNR (dB); each rung adds one component to the one before
# (plain = KPN with K = 7, + post-refinement, + CDM, + MDA = DDet).
TABLE2_X2_PSNR: dict[str, float] = {"ddet-plain": 33.43, "ddet-pr": 33.80, "ddet-cdm": 34.28, "ddet": 34.37}


class EfficiencyRow(NamedTuple):
    label: str
    seconds_per_frame: float  # the paper names neither the GPU nor the frame size
    mb: float  # parameters as float32 bytes / 10^6
    psnr_x3: float


# Table III: efficiency and parameters at x3.
TABLE3: dict[str, EfficiencyRow] = {
    "srresnet": EfficiencyRow("SRResNet", 2.1, 4.9, 30.52),
    "edsr": EfficiencyRow("EDSR", 8.7, 153.5, 30.13),
    "rcan": EfficiencyRow("RCAN", 3.61, 54.8, 30.36),
    "edrn": EfficiencyRow("EDRN", 0.29, 131.9, 30.21),
    "kpn5": EfficiencyRow("KPN, K = 5", 0.042, 5.1, 30.47),
    "kpn7": EfficiencyRow("KPN, K = 7", 0.047, 5.2, 30.49),
    "kpn13": EfficiencyRow("KPN, K = 13", 0.065, 5.5, 30.52),
    "kpn19": EfficiencyRow("KPN, K = 19", 0.087, 5.9, 30.57),
    "lpkpn": EfficiencyRow("LP-KPN", 0.138, 5.7, 30.60),
    "ddet": EfficiencyRow("DDet", 0.123, 5.7, 31.08),
}
