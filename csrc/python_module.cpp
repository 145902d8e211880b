// The Python module ddet_ops._C: importing it loads this shared library, whose static
// initialisers register the ops with the dispatcher. It exposes nothing itself.
#include <Python.h>

#ifndef DDET_OPS_TORCH_VERSION
#error "setup.py defines DDET_OPS_TORCH_VERSION, the torch this build compiles against"
#endif

// Found by ddet_ops in the file's bytes before loading it: a library built against another torch
// fails to load with undefined symbols, so the version must be readable without loading.
extern "C" const char ddet_ops_built_against[] = "ddet_ops built against torch " DDET_OPS_TORCH_VERSION;

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "ddet_ops compiled kernels", -1, nullptr};
  return PyModule_Create(&module);
}
