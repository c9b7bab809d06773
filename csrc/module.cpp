// The Python module cnnkit._C. Importing it runs the static TORCH_LIBRARY registrations of
// every op, which then appear as torch.ops.cnnkit.*; its only attributes say how it was
// built (the op registrations need no Python bindings).
#include <Python.h>

#ifndef CNNKIT_CPU_CAPABILITY
#define CNNKIT_CPU_CAPABILITY "DEFAULT"
#endif
#ifndef CNNKIT_CUDA_ARCHS
#define CNNKIT_CUDA_ARCHS ""
#endif

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddStringConstant(m, "cpu_capability", CNNKIT_CPU_CAPABILITY) < 0 ||
      PyModule_AddStringConstant(m, "cuda_archs", CNNKIT_CUDA_ARCHS) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
