"""Builds ddet_ops._C against the LibTorch stable ABI, for every torch from MIN_TORCH on.

``pip install .`` builds in an isolated environment with the torch that pyproject.toml names;
the library then runs under any installed torch >= MIN_TORCH, whichever torch compiled it.
CUDA kernels are added when a CUDA toolkit and a CUDA build of torch are present, or when
FORCE_CUDA=1.
"""

import os
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit("ddet: building ddet_ops needs torch (pip install . installs it in the build environment)")

ROOT = Path(__file__).parent
CSRC = "csrc"
# The oldest torch the library runs under: the sources use only the stable ABI of this release
# (TORCH_TARGET_VERSION turns everything newer, and every unstable header, into compile errors).
MIN_TORCH = (2, 11)


def refuse_old_torch() -> None:
    release = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if release < MIN_TORCH:
        sys.exit(
            f"ddet: building ddet_ops needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (its stable ABI), "
            f"but this build sees torch {torch.__version__}"
        )


def extension():
    # csrc/ by job: the schemas and checks at the top, one folder per device, the test harness apart.
    sources = sorted(
        str(path) for pattern in ("*.cpp", "cpu/*.cpp", "testing/*.cpp") for path in Path(CSRC).glob(pattern)
    )
    # TORCH_TARGET_VERSION is [major][minor][patch][ABI tag] in the bytes of a uint64.
    stable_abi = [
        ("TORCH_TARGET_VERSION", f"0x{MIN_TORCH[0]:02x}{MIN_TORCH[1]:02x}000000000000"),
        ("DDET_OPS_MIN_TORCH", f'"{MIN_TORCH[0]}.{MIN_TORCH[1]}"'),
    ]
    # The stable ABI's C++ types are hidden symbols (each library keeps its own copy), so the types
    # holding them must be hidden too; only PyInit__C is exported.
    cxx = ["-O3", "-fno-math-errno", "-fvisibility=hidden"]
    with_cuda = os.environ.get("FORCE_CUDA") == "1" or (torch.cuda.is_available() and CUDA_HOME is not None)
    if not with_cuda:
        return CppExtension(
            "ddet_ops._C",
            sources,
            define_macros=stable_abi,
            extra_compile_args={"cxx": cxx},
            py_limited_api=True,
        )
    sources += sorted(str(path) for path in Path(CSRC).glob("cuda/*.cu"))
    return CUDAExtension(
        "ddet_ops._C",
        sources,
        # USE_CUDA declares the CUDA entry points of torch's C shim (the current stream).
        define_macros=[*stable_abi, ("DDET_WITH_CUDA", None), ("USE_CUDA", None)],
        # -Xptxas -v: every build log shows each kernel's registers, stack frame and spills.
        # DDET_OPS_NVCC_FLAGS adds flags for a tuning build (tools/gpu_sweep.sh).
        extra_compile_args={
            "cxx": cxx,
            "nvcc": [
                "-O3",
                "-lineinfo",
                "-Xptxas=-v",
                "-Xcompiler=-fvisibility=hidden",
                *os.environ.get("DDET_OPS_NVCC_FLAGS", "").split(),
            ],
        },
        py_limited_api=True,
    )


refuse_old_torch()
setup(
    packages=find_packages(include=["ddet_ops", "ddet_ops.*", "ddet", "ddet.*"]),
    package_data={"ddet.weights": ["*.safetensors"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    # Neither torch's C++ ABI nor Python's version-specific one: one wheel per platform.
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
