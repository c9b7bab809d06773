// The Python module cnnkit._C. Importing it runs the static TORCH_LIBRARY registrations of
// every op, which then appear as torch.ops.cnnkit.*; its only attributes say how it was
// built and which CPU kernels it registered (the ops need no Python bindings).
#include <Python.h>

#include <string>

#include "cpu/capability.h"

#ifndef CNNKIT_CUDA_ARCHS
#define CNNKIT_CUDA_ARCHS ""
#endif

namespace {

std::string compiled_cpu_capabilities() {
  std::string names;
  for (const auto capability : cnnkit::cpu::compiled_capabilities()) {
    names += (names.empty() ? "" : ",") + std::string(cnnkit::cpu::capability_name(capability));
  }
  return names;
}

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  const char* active = cnnkit::cpu::capability_name(cnnkit::cpu::active_capability());
  if (PyModule_AddStringConstant(m, "cpu_capability", active) < 0 ||
      PyModule_AddStringConstant(m, "cpu_capabilities", compiled_cpu_capabilities().c_str()) < 0 ||
      PyModule_AddStringConstant(m, "cuda_archs", CNNKIT_CUDA_ARCHS) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
