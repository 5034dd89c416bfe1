// Python bindings of the cost program: single, batched and per-layer evaluation, and the fast path of
// Arch.count (a Counter reads a {symbol: width} dict directly, so a count allocates no numpy array).
//
// Every entry point checks its arguments: widths must be whole numbers in [0, 2^53) (NaN, negative and
// fractional widths raise ValueError), and a run whose counts are not exact raises OverflowError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

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

// Index of the first width that is not a whole number in [0, 2^53), or -1.
int32_t bad_width(const double* w, int32_t n) {
  for (int32_t i = 0; i < n; ++i)
    if (!pyns::valid_width(w[i])) return i;
  return -1;
}

void check_widths(const double* w, int32_t n, const char* where = "") {
  const int32_t i = bad_width(w, n);
  if (i >= 0)
    throw py::value_error("width " + std::to_string(i) + where + " is " +
                          py::str(py::float_(w[i])).cast<std::string>() +
                          "; widths must be whole numbers >= 0 and below 2^53");
}

void raise_status(int status) {
  if (status == pyns::kInexact || status == pyns::kOverflow)
    throw std::overflow_error(pyns::cost_status_message(status));
}

// Thread-local scratch registers: evaluation allocates nothing after the first call.
std::vector<double>& scratch(const CostProgram& p) {
  thread_local std::vector<double> regs;
  if (regs.size() < static_cast<size_t>(p.n_registers)) regs.resize(p.n_registers);
  return regs;
}

py::tuple evaluate_one(const CostProgram& p, const double* widths) {
  check_widths(widths, p.n_inputs);
  auto& regs = scratch(p);
  p.run(widths, regs.data());
  int64_t params = 0, macs = 0;
  raise_status(p.totals(regs.data(), params, macs));
  return py::make_tuple(params, macs);
}

// Arch.count's fast path: defaults, minimum widths and the identity-add ties of one compiled program.
// Anything it cannot accept raises ValueError, and the Python caller re-validates to say exactly why.
class Counter {
 public:
  Counter(const CostProgram& program, const py::list& names, const DoubleArray& defaults,
          const DoubleArray& minimum, const IntArray& ties)
      : program_(program) {
    const auto n = static_cast<size_t>(program.n_inputs);
    if (py::len(names) != n || static_cast<size_t>(defaults.size()) != n ||
        static_cast<size_t>(minimum.size()) != n)
      throw py::value_error("counter: expected " + std::to_string(n) + " names, defaults and minimums");
    if (ties.size() % 2) throw py::value_error("counter: ties must be index pairs");
    for (size_t i = 0; i < n; ++i) {
      py::object name = names[i];
      if (!py::isinstance<py::str>(name)) throw py::value_error("counter: symbol names must be strings");
      index_[name] = py::int_(i);
    }
    if (py::len(index_) != n) throw py::value_error("counter: duplicate symbol names");
    defaults_.assign(defaults.data(), defaults.data() + n);
    minimum_.assign(minimum.data(), minimum.data() + n);
    check_widths(defaults_.data(), static_cast<int32_t>(n), " (a default)");
    for (py::ssize_t i = 0; i < ties.size(); ++i) {
      const int32_t v = ties.data()[i];
      if (v < 0 || static_cast<size_t>(v) >= n) throw py::value_error("counter: tie index out of range");
      ties_.push_back(v);
    }
  }

  py::tuple count(const py::object& widths) const {
    thread_local std::vector<double> w;
    w = defaults_;
    if (!widths.is_none()) {
      if (!PyDict_Check(widths.ptr())) throw py::value_error("counter: widths must be a dict");
      PyObject *key, *value;
      Py_ssize_t pos = 0;
      while (PyDict_Next(widths.ptr(), &pos, &key, &value)) {
        PyObject* slot = PyDict_GetItemWithError(index_.ptr(), key);
        if (!slot) {
          if (PyErr_Occurred()) throw py::error_already_set();
          throw py::value_error("counter: unknown symbol");
        }
        const size_t i = PyLong_AsSize_t(slot);
        double v;
        if (PyLong_CheckExact(value)) {
          int overflow = 0;
          const long long x = PyLong_AsLongLongAndOverflow(value, &overflow);
          if (overflow) throw py::value_error("counter: width out of range");
          v = static_cast<double>(x);
          if (static_cast<long long>(v) != x) throw py::value_error("counter: width out of range");
        } else if (PyFloat_CheckExact(value)) {
          v = PyFloat_AS_DOUBLE(value);
        } else {
          throw py::value_error("counter: not a plain int or float");  // numpy ints etc.: Python path
        }
        if (!pyns::valid_width(v) || v < minimum_[i]) throw py::value_error("counter: bad width");
        w[i] = v;
      }
    }
    for (size_t k = 0; k < ties_.size(); k += 2)
      if (w[ties_[k]] != w[ties_[k + 1]]) throw py::value_error("counter: tied widths differ");
    auto& regs = scratch(program_);
    program_.run(w.data(), regs.data());
    int64_t params = 0, macs = 0;
    raise_status(program_.totals(regs.data(), params, macs));
    return py::make_tuple(params, macs);
  }

 private:
  CostProgram program_;
  py::dict index_;
  std::vector<double> defaults_, minimum_;
  std::vector<int32_t> ties_;
};

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
            if (widths.ndim() != 1) throw py::value_error("evaluate expects a 1-D array of widths");
            check_inputs(p, widths.size());
            return evaluate_one(p, widths.data());
          },
          py::arg("widths"), "Total (params, macs) for one width vector (exact int64).")
      .def(
          "evaluate_batch",
          [](const CostProgram& p, const DoubleArray& widths) {
            if (widths.ndim() != 2) throw py::value_error("evaluate_batch expects a 2-D array [batch, widths]");
            check_inputs(p, widths.shape(1));
            const py::ssize_t batch = widths.shape(0);
            const double* in = widths.data();
            for (py::ssize_t i = 0; i < batch; ++i)
              if (bad_width(in + i * p.n_inputs, p.n_inputs) >= 0)
                check_widths(in + i * p.n_inputs, p.n_inputs, (" of row " + std::to_string(i)).c_str());
            py::array_t<int64_t> params(batch), macs(batch);
            auto* pp = params.mutable_data();
            auto* mp = macs.mutable_data();
            py::ssize_t failed = -1;
            int status = pyns::kOk;
            {
              py::gil_scoped_release release;
              std::vector<double> regs(p.n_registers);
              for (py::ssize_t i = 0; i < batch; ++i) {
                p.run(in + i * p.n_inputs, regs.data());
                status = p.totals(regs.data(), pp[i], mp[i]);
                if (status != pyns::kOk) { failed = i; break; }
              }
            }
            if (failed >= 0)
              throw std::overflow_error("row " + std::to_string(failed) + ": " + pyns::cost_status_message(status));
            return py::make_tuple(params, macs);
          },
          py::arg("widths"), "Totals for many width vectors: arrays (params[batch], macs[batch]).")
      .def(
          "per_layer",
          [](const CostProgram& p, const DoubleArray& widths) {
            if (widths.ndim() != 1) throw py::value_error("per_layer expects a 1-D array of widths");
            check_inputs(p, widths.size());
            check_widths(widths.data(), p.n_inputs);
            auto& regs = scratch(p);
            p.run(widths.data(), regs.data());
            if (!p.exact(regs.data())) raise_status(pyns::kInexact);
            const auto n = static_cast<py::ssize_t>(p.layer_params.size());
            py::array_t<int64_t> params(n), macs(n);
            for (py::ssize_t i = 0; i < n; ++i) {
              params.mutable_data()[i] = std::llround(regs[p.layer_params[i]]);
              macs.mutable_data()[i] = std::llround(regs[p.layer_macs[i]]);
            }
            return py::make_tuple(params, macs);
          },
          py::arg("widths"), "Per-layer (params[L], macs[L]) for one width vector.");

  py::class_<Counter>(m, "Counter", "Arch.count's fast path over one compiled program (see pyns.arch)")
      .def(py::init<const CostProgram&, const py::list&, const DoubleArray&, const DoubleArray&, const IntArray&>(),
           py::arg("program"), py::arg("names"), py::arg("defaults"), py::arg("minimum"), py::arg("ties"))
      .def("count", &Counter::count, py::arg("widths"),
           "(params, macs) for a {symbol: width} dict (None: the defaults); ValueError for anything it "
           "does not accept as is, OverflowError when the counts are not exact.");
}
