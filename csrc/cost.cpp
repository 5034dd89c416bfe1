// Python bindings of the cost program: single, batched and per-layer evaluation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cost_program.h"

namespace py = pybind11;
using pyns::CostProgram;

namespace {

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

std::vector<int32_t> to_vec(const IntArray& a) { return {a.data(), a.data() + a.size()}; }

CostProgram make_program(const IntArray& code, const DoubleArray& constants, int32_t n_inputs,
                         int32_t n_registers, const IntArray& layer_params, const IntArray& layer_macs) {
  CostProgram p;
  p.code = to_vec(code);
  p.constants.assign(constants.data(), constants.data() + constants.size());
  p.n_inputs = n_inputs;
  p.n_registers = n_registers;
  p.layer_params = to_vec(layer_params);
  p.layer_macs = to_vec(layer_macs);
  p.validate();
  return p;
}

void check_inputs(const CostProgram& p, py::ssize_t n) {
  if (n != p.n_inputs)
    throw py::value_error("expected " + std::to_string(p.n_inputs) + " widths, got " + std::to_string(n));
}

// Thread-local scratch registers: evaluation allocates nothing after the first call.
std::vector<double>& scratch(const CostProgram& p) {
  thread_local std::vector<double> regs;
  if (regs.size() < static_cast<size_t>(p.n_registers)) regs.resize(p.n_registers);
  return regs;
}

}  // namespace

void register_cost(py::module_& m) {
  py::class_<CostProgram>(m, "CostProgram", "Compiled per-layer params/MACs formulas (see pyns.cost.program)")
      .def(py::init(&make_program), py::arg("code"), py::arg("constants"), py::arg("n_inputs"),
           py::arg("n_registers"), py::arg("layer_params"), py::arg("layer_macs"))
      .def_property_readonly("n_inputs", [](const CostProgram& p) { return p.n_inputs; })
      .def_property_readonly("n_layers", [](const CostProgram& p) { return p.layer_params.size(); })
      .def_property_readonly("n_instructions", [](const CostProgram& p) { return p.code.size() / pyns::kSlots; })
      .def(
          "evaluate",
          [](const CostProgram& p, const DoubleArray& widths) {
            check_inputs(p, widths.size());
            auto& regs = scratch(p);
            p.run(widths.data(), regs.data());
            double params, macs;
            p.totals(regs.data(), params, macs);
            return py::make_tuple(static_cast<int64_t>(std::llround(params)),
                                  static_cast<int64_t>(std::llround(macs)));
          },
          py::arg("widths"), "Total (params, macs) for one width vector.")
      .def(
          "evaluate_batch",
          [](const CostProgram& p, const DoubleArray& widths) {
            if (widths.ndim() != 2) throw py::value_error("evaluate_batch expects a 2-D array [batch, widths]");
            check_inputs(p, widths.shape(1));
            const py::ssize_t batch = widths.shape(0);
            py::array_t<int64_t> params(batch), macs(batch);
            auto* pp = params.mutable_data();
            auto* mp = macs.mutable_data();
            const double* in = widths.data();
            {
              py::gil_scoped_release release;
              std::vector<double> regs(p.n_registers);
              for (py::ssize_t i = 0; i < batch; ++i) {
                p.run(in + i * p.n_inputs, regs.data());
                double a, b;
                p.totals(regs.data(), a, b);
                pp[i] = std::llround(a);
                mp[i] = std::llround(b);
              }
            }
            return py::make_tuple(params, macs);
          },
          py::arg("widths"), "Totals for many width vectors: arrays (params[batch], macs[batch]).")
      .def(
          "per_layer",
          [](const CostProgram& p, const DoubleArray& widths) {
            check_inputs(p, widths.size());
            auto& regs = scratch(p);
            p.run(widths.data(), regs.data());
            const auto n = static_cast<py::ssize_t>(p.layer_params.size());
            py::array_t<int64_t> params(n), macs(n);
            for (py::ssize_t i = 0; i < n; ++i) {
              params.mutable_data()[i] = std::llround(regs[p.layer_params[i]]);
              macs.mutable_data()[i] = std::llround(regs[p.layer_macs[i]]);
            }
            return py::make_tuple(params, macs);
          },
          py::arg("widths"), "Per-layer (params[L], macs[L]) for one width vector.");
}
