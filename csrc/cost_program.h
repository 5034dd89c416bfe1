// A flat "cost program": straight-line code over a register file of doubles that computes, for one
// width vector, every layer's parameter count and multiply-accumulates. Compiled in Python from the IR
// (pyns/cost/program.py); evaluated here with no allocation per call.
//
// Registers: [constants | inputs (width symbols) | temporaries]. Doubles let make_divisible/round see the
// same fractional values as Python, and represent every integer below 2^53 exactly. Exactness is checked,
// not assumed: after a run every register must be finite and below kExactLimit in magnitude (then every
// sum, product and quotient of integers along the way was exact, since a double result is exact whenever
// the true integer result is below 2^53), and the per-layer counts are summed in int64 with overflow
// checks. A run that fails either check is an error, never a rounded or wrapped total.
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
// 2^53: the doubles hold every integer below it exactly (and not every one above).
constexpr double kExactLimit = 9007199254740992.0;

// What a run can go wrong with; kOk when the totals are exact.
enum CostStatus : int { kOk = 0, kInexact = 1, kOverflow = 2 };

inline const char* cost_status_message(int status) {
  return status == kInexact
             ? "cost overflow: with these widths an intermediate count of the cost formulas reaches 2^53 "
               "(about 9.0e15), beyond which pyns cannot count exactly; use smaller widths"
             : "cost overflow: the total params or MACs exceed 2^63 - 1; use smaller widths";
}

// A width the program may read: a whole number in [0, 2^53). NaN fails every comparison; the range test
// comes first, so the conversion to int64 is defined (and cheaper than a call to floor()).
inline bool valid_width(double w) {
  return w >= 0.0 && w < kExactLimit && w == static_cast<double>(static_cast<int64_t>(w));
}

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
    if (n_inputs < 0 || n_registers < 0) throw std::invalid_argument("cost program: negative sizes");
    if (static_cast<int64_t>(input_base()) + n_inputs > n_registers)
      throw std::invalid_argument("cost program: too few registers");
    auto in_range = [&](int32_t r) { return r >= 0 && r < n_registers; };
    // Every register an instruction reads or a layer reports holds a defined value: a constant, an input
    // or the result of an earlier instruction (so a run never reads what a previous run left behind).
    std::vector<char> defined(static_cast<size_t>(n_registers), 0);
    for (int32_t r = 0; r < input_base() + n_inputs; ++r) defined[r] = 1;
    for (size_t i = 0; i < code.size(); i += kSlots) {
      if (code[i] < ADD || code[i] > NE) throw std::invalid_argument("cost program: bad opcode");
      for (int s = 1; s < kSlots; ++s)
        if (!in_range(code[i + s])) throw std::invalid_argument("cost program: register out of range");
      for (int s = 2; s < kSlots; ++s)
        if (!defined[code[i + s]]) throw std::invalid_argument("cost program: reads an undefined register");
      if (code[i + 1] < input_base() + n_inputs)
        throw std::invalid_argument("cost program: writes a constant or input register");
      defined[code[i + 1]] = 1;
    }
    for (char d : defined)
      if (!d) throw std::invalid_argument("cost program: a register is never written");
    for (auto r : layer_params)
      if (!in_range(r) || !defined[r]) throw std::invalid_argument("cost program: bad output register");
    for (auto r : layer_macs)
      if (!in_range(r) || !defined[r]) throw std::invalid_argument("cost program: bad output register");
    for (double c : constants)
      if (!std::isfinite(c)) throw std::invalid_argument("cost program: non-finite constant");
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

  // Every register finite and below 2^53 in magnitude (NaN fails the comparison too). A branch-free
  // `ok & (...)` loop: the fastest form measured (2x a counting one).
  bool exact(const double* regs) const {
    bool ok = true;
    const int32_t n = n_registers;
    for (int32_t i = 0; i < n; ++i) ok = ok & (std::fabs(regs[i]) < kExactLimit);
    return ok;
  }

  // Exact int64 totals of a run; returns a CostStatus. Every layer count is a whole number (products
  // and sums of whole channel counts: the compiler's formulas round every fractional width), so
  // truncation is exact. After exact() each count is below 2^53, so fewer than 1024 of them cannot
  // overflow an int64 sum (1024 * 2^53 = 2^63); longer programs take an overflow-checked loop.
  int totals(const double* regs, int64_t& params, int64_t& macs) const {
    if (!exact(regs)) return kInexact;
    const size_t n = layer_params.size();
    const int32_t* lp = layer_params.data();
    const int32_t* lm = layer_macs.data();
    int64_t p = 0, m = 0;
    if (n < 1024) {
      for (size_t i = 0; i < n; ++i) {
        p += static_cast<int64_t>(regs[lp[i]]);
        m += static_cast<int64_t>(regs[lm[i]]);
      }
    } else {
      bool overflow = false;
      for (size_t i = 0; i < n; ++i) {
        overflow |= __builtin_add_overflow(p, static_cast<int64_t>(regs[lp[i]]), &p);
        overflow |= __builtin_add_overflow(m, static_cast<int64_t>(regs[lm[i]]), &m);
      }
      if (overflow) return kOverflow;
    }
    params = p;
    macs = m;
    return kOk;
  }
};

}  // namespace pyns
