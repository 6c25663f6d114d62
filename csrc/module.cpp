// fastep._C: the Python module object and the op library.
//
// The op library is `torch.ops.fastep_C`.  Each kernel family registers its own schemas and
// kernels in its own translation unit with TORCH_LIBRARY_FRAGMENT(fastep_C, m) and
// TORCH_LIBRARY_IMPL(fastep_C, CPU/CUDA, m), so a newcomer finds a family's C++ in one file.
// CUDA kernels live in csrc/*.cu, which include no torch headers (plain CUDA behind a small C++
// API in fastep_cuda.h) so that they compile in seconds rather than minutes.
//
// The module itself is created with the plain CPython API (no pybind11): importing it runs the
// static registrations above, and it exposes WITH_CUDA so Python knows which kernels exist.
#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(fastep_C, m) {
  // Schemas are defined by the per-family fragments.
}

static PyModuleDef fastep_C_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "fastep's compiled C++/CUDA kernels; the ops are registered as torch.ops.fastep_C.*",
    -1, nullptr,
};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&fastep_C_module);
  if (mod == nullptr) return nullptr;
#ifdef FASTEP_WITH_CUDA
  PyModule_AddIntConstant(mod, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(mod, "WITH_CUDA", 0);
#endif
  return mod;
}
