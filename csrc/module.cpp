// pyns._core: the C++ core. Every part registers itself here; none of them touches libtorch.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_cost(py::module_& m);
void register_solver(py::module_& m);
void register_gate(py::module_& m);
void register_batchnorm(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyns C++ core: cost programs, budget solvers, fused gate and BatchNorm kernels";
  register_cost(m);
  register_solver(m);
  register_gate(m);
  register_batchnorm(m);
#ifdef PYNS_WITH_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
#ifdef PYNS_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
