// A flat "cost program": straight-line code over a register file of doubles that computes, for one
// width vector, every layer's parameter count and multiply-accumulates. Compiled in Python from the IR
// (pyns/cost/program.py); evaluated here with no allocation per call.
//
// Registers: [constants | inputs (width symbols) | temporaries]. Doubles represent every integer a real
// network produces exactly (< 2^53), and let make_divisible/round see the same fractional values as Python.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace pyns {

// Keep in sync with OPCODES in pyns/cost/program.py.
enum Op : int32_t {
  ADD = 0, SUB, MUL, TRUEDIV, FLOORDIV, MOD, NEG, ROUND, TRUNC, FLOOR, CEIL, MAKE_DIVISIBLE, MAX, MIN, NE
};

constexpr int kSlots = 6;  // op, dst, a, b, c, d

inline double py_mod(double a, double b) {
  double r = std::fmod(a, b);
  if (r != 0.0 && ((r < 0.0) != (b < 0.0))) r += b;  // Python's sign-of-divisor convention
  return r;
}

inline double make_divisible(double v, double divisor, double min_value, double round_limit) {
  // timm / torchvision: max(min, int(v + d/2) // d * d), bumped by d if that lost more than 10%.
  if (min_value == 0.0) min_value = divisor;
  double nv = std::floor(std::trunc(v + divisor / 2.0) / divisor) * divisor;
  if (nv < min_value) nv = min_value;
  if (nv < round_limit * v) nv += divisor;
  return nv;
}

struct CostProgram {
  std::vector<int32_t> code;       // n_instr * kSlots
  std::vector<double> constants;   // preloaded into registers [0, n_const)
  int32_t n_inputs = 0;
  int32_t n_registers = 0;
  std::vector<int32_t> layer_params;  // register holding each layer's params
  std::vector<int32_t> layer_macs;    // register holding each layer's MACs

  int32_t input_base() const { return static_cast<int32_t>(constants.size()); }

  void validate() const {
    if (code.size() % kSlots) throw std::invalid_argument("cost program: code length is not a multiple of 6");
    if (layer_params.size() != layer_macs.size()) throw std::invalid_argument("cost program: output mismatch");
    auto in_range = [&](int32_t r) { return r >= 0 && r < n_registers; };
    for (size_t i = 0; i < code.size(); i += kSlots) {
      if (code[i] < ADD || code[i] > NE) throw std::invalid_argument("cost program: bad opcode");
      for (int s = 1; s < kSlots; ++s)
        if (!in_range(code[i + s])) throw std::invalid_argument("cost program: register out of range");
    }
    for (auto r : layer_params) if (!in_range(r)) throw std::invalid_argument("cost program: bad output");
    for (auto r : layer_macs) if (!in_range(r)) throw std::invalid_argument("cost program: bad output");
    if (input_base() + n_inputs > n_registers) throw std::invalid_argument("cost program: too few registers");
  }

  // Runs the code; `regs` must hold n_registers doubles. Inputs are read from `inputs[0..n_inputs)`.
  void run(const double* inputs, double* regs) const {
    const size_t nc = constants.size();
    for (size_t i = 0; i < nc; ++i) regs[i] = constants[i];
    for (int32_t i = 0; i < n_inputs; ++i) regs[nc + i] = inputs[i];
    const int32_t* c = code.data();
    const int32_t* end = c + code.size();
    for (; c != end; c += kSlots) {
      const double a = regs[c[2]], b = regs[c[3]];
      double r;
      switch (c[0]) {
        case ADD: r = a + b; break;
        case SUB: r = a - b; break;
        case MUL: r = a * b; break;
        case TRUEDIV: r = a / b; break;
        case FLOORDIV: r = std::floor(a / b); break;
        case MOD: r = py_mod(a, b); break;
        case NEG: r = -a; break;
        case ROUND: r = std::nearbyint(a); break;  // ties to even under the default rounding mode, as Python
        case TRUNC: r = std::trunc(a); break;
        case FLOOR: r = std::floor(a); break;
        case CEIL: r = std::ceil(a); break;
        case MAKE_DIVISIBLE: r = make_divisible(a, b, regs[c[4]], regs[c[5]]); break;
        case MAX: r = a > b ? a : b; break;
        case MIN: r = a < b ? a : b; break;
        default: r = (a != b) ? 1.0 : 0.0; break;  // NE
      }
      regs[c[1]] = r;
    }
  }

  void totals(const double* regs, double& params, double& macs) const {
    double p = 0.0, m = 0.0;
    for (size_t i = 0; i < layer_params.size(); ++i) {
      p += regs[layer_params[i]];
      m += regs[layer_macs[i]];
    }
    params = p;
    macs = m;
  }
};

}  // namespace pyns
