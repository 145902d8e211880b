// The Python module ddet_ops._C: importing it loads this shared library, whose static
// initialisers register the ops with the dispatcher. It exposes nothing itself.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "ddet_ops compiled kernels", -1, nullptr};
  return PyModule_Create(&module);
}
