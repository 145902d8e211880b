// The Python module ddet_ops._C: importing it loads this shared library, whose static
// initialisers register the ops with the dispatcher. It exposes nothing itself.
#include <Python.h>
#include <torch/headeronly/version.h>

#ifndef DDET_OPS_MIN_TORCH
#error "setup.py defines DDET_OPS_MIN_TORCH, the oldest torch this build runs under (its TORCH_TARGET_VERSION)"
#endif

// Found by ddet_ops in the file's bytes before loading it: under a torch older than the minimum
// the library would fail to load with undefined symbols, so the versions must be readable first.
extern "C" const char ddet_ops_built_against[] =
    "ddet_ops built against torch " TORCH_VERSION " for torch >= " DDET_OPS_MIN_TORCH;

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "ddet_ops compiled kernels", -1, nullptr};
  return PyModule_Create(&module);
}
