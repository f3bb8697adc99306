// The Python module `fastat._C`. It exports nothing: importing it loads this shared library, whose static
// TORCH_LIBRARY_IMPL(fastat, CPU|CUDA, m) blocks register the kernels for the schemas defined in Python
// (python/fastat/ops/_schemas.py). No pybind11 and the limited API, as in pytorch/extension-cpp.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "fastat compiled kernels (registered as torch.ops.fastat.*)",
      -1,  // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
