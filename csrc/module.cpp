// The Python module cnnkit._C. It has no functions of its own: importing it runs the
// static TORCH_LIBRARY registrations of every op, which then appear as torch.ops.cnnkit.*.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
