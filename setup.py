"""Builds ddet_ops._C against the torch installed in this environment.

Install with ``pip install --no-build-isolation .`` so the extension is compiled against the
torch you run (an isolated build would compile against a different torch). CUDA kernels are
added when a CUDA toolkit and a CUDA build of torch are present, or when FORCE_CUDA=1.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "ddet: torch must be installed before building, and the build must see it: "
        "pip install torch && pip install --no-build-isolation ."
    )

ROOT = Path(__file__).parent
CSRC = "csrc"


def extension():
    # csrc/ by job: the schemas and checks at the top, one folder per device, the test harness apart.
    sources = sorted(
        str(path) for pattern in ("*.cpp", "cpu/*.cpp", "testing/*.cpp") for path in Path(CSRC).glob(pattern)
    )
    # The torch this build compiles against, kept inside the built library (see python_module.cpp).
    built_against = [("DDET_OPS_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = ["-O3", "-fno-math-errno"]
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline OpenMP in torch's headers: without -fopenmp it runs on one
        # thread. Linking -fopenmp records libgomp.so.1, which resolves to the copy torch loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    with_cuda = os.environ.get("FORCE_CUDA") == "1" or (torch.cuda.is_available() and CUDA_HOME is not None)
    if not with_cuda:
        return CppExtension(
            "ddet_ops._C",
            sources,
            define_macros=built_against,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
            py_limited_api=False,
        )
    sources += sorted(str(path) for path in Path(CSRC).glob("cuda/*.cu"))
    return CUDAExtension(
        "ddet_ops._C",
        sources,
        define_macros=[*built_against, ("DDET_WITH_CUDA", None)],
        # -Xptxas -v: every build log shows each kernel's registers, stack frame and spills.
        # DDET_OPS_NVCC_FLAGS adds flags for a tuning build (tools/gpu_sweep.sh).
        extra_compile_args={
            "cxx": cxx,
            "nvcc": ["-O3", "-lineinfo", "-Xptxas=-v", *os.environ.get("DDET_OPS_NVCC_FLAGS", "").split()],
        },
        extra_link_args=link,
    )


setup(
    packages=find_packages(include=["ddet_ops", "ddet_ops.*", "ddet", "ddet.*"]),
    package_data={"ddet.weights": ["*.safetensors"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
