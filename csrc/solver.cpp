// Budget solvers over one-dimensional width families (SPEC §5, Algorithm 3 done exactly).
//
// A family maps one scalar t > 0 (a width multiplier m, or NeuralScale's τ) to an integer width per symbol:
//     raw_l(t) = a_l * t^b_l,   w_l(t) = max(floor_l, max(min_l, rounding_l(raw_l(t))))
// with rounding trunc (int(c*m), the uniform policy), round (Python's round, ties to even: profiles) or
// make_divisible(·, 8) (EfficientNet / TinyNet), or a fixed width. Python builds a and b from the arch
// policy and the method (pyns/scaling/solve.py), which also holds a pure-Python oracle of everything here.
//
// The answer to a budget is the configuration on the family whose cost is closest to the budget without
// exceeding it (or from either side with `nearest`). When the cost is provably non-decreasing in t, that
// is found by bisection on the bit patterns of t (positive doubles order like their bits), which stops at
// two adjacent doubles: exact on the family, at most 64 steps. When monotonicity cannot be proved (negative
// β, or a residual shortcut that disappears when two widths become equal), every configuration of the
// family is enumerated once, breakpoint by breakpoint, and budgets are answered from that table.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cost_program.h"

#ifdef PYNS_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using pyns::CostProgram;

namespace {

// Keep in sync with ROUNDING in pyns/scaling/solve.py.
enum Rounding : int32_t { FIXED = 0, TRUNC = 1, ROUND = 2, MAKE_DIV8 = 3 };
// Keep in sync with STATUS in pyns/scaling/solve.py.
enum Status : int32_t { OK = 0, BELOW = 1, ABOVE = 2 };

constexpr double kInf = std::numeric_limits<double>::infinity();
// Breakpoints closer than this (relative) are one breakpoint. Power laws put breakpoints of different
// symbols at the same real τ (e.g. defaults 64 and 320 under β = 0.5); computed in doubles they land an
// ulp or two apart, and the "configuration" in between is a rounding artifact, not part of the family.
// Distinct real breakpoints are much further apart (uniform families: > 3e-9 relative).
constexpr double kMerge = 1e-12;
// A table row per configuration: the shipped archs' 16x-wide families have < 10^5 rows; this bound (about
// 160 MB of widths at 20 symbols) only stops a pathological profile from eating the machine.
constexpr size_t kMaxTable = 1'000'000;
// The exchange after the fill: every combination of -kExchangeSteps..+kExchangeSteps steps per movable
// group, on at most kExchangeGroups groups: (2*2+1)^4 = 625 cost evaluations, ~0.3 ms. With 5 or more
// groups single channels are cheap enough that adding alone leaves at most 0.07 % of the budget on every
// shipped arch (README "Speed"), and the box would grow past 3,000 evaluations per solve.
constexpr int kExchangeSteps = 2;
constexpr size_t kExchangeGroups = 4;

int64_t to_bits(double x) {
  int64_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}

double from_bits(int64_t i) {
  double x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}

// Smallest double in (lo, hi] where `pred` is true, given pred(lo) false, pred(hi) true, 0 < lo < hi and
// pred monotone. Positive doubles compare like their bit patterns, so this is a bisection over integers.
template <class Pred>
double first_true(double lo, double hi, Pred pred) {
  int64_t a = to_bits(lo), c = to_bits(hi);
  while (c - a > 1) {
    const int64_t mid = a + (c - a) / 2;
    if (pred(from_bits(mid))) c = mid; else a = mid;
  }
  return from_bits(c);
}

struct Answer {
  int32_t status = OK;
  double t = 0.0;
  int64_t params = 0, macs = 0;
  int32_t evaluations = 0;  // cost-program runs (bisection) or table rows scanned
};

// Relative closeness of a configuration to the budgets (only finite budgets count). Feasible: the
// smallest relative slack (the binding metric's); infeasible: the largest relative overshoot.
// Costs are exact int64; they are compared with the (double) budgets exactly, in long double (64-bit
// significand on x86-64, so every int64 and every double converts without rounding), as Python compares
// an int with a float. Relative slacks are formed in double, as the Python oracle forms them.
double slack(int64_t p, int64_t m, double bp, double bm) {
  double d = kInf;
  if (std::isfinite(bp)) d = std::min(d, (bp - static_cast<double>(p)) / bp);
  if (std::isfinite(bm)) d = std::min(d, (bm - static_cast<double>(m)) / bm);
  return d;
}

double overshoot(int64_t p, int64_t m, double bp, double bm) {
  double d = 0.0;
  if (std::isfinite(bp)) d = std::max(d, (static_cast<double>(p) - bp) / bp);
  if (std::isfinite(bm)) d = std::max(d, (static_cast<double>(m) - bm) / bm);
  return d;
}

bool le(int64_t cost, double budget) { return static_cast<long double>(cost) <= static_cast<long double>(budget); }
bool lt(int64_t cost, double budget) { return static_cast<long double>(cost) < static_cast<long double>(budget); }

bool fits(int64_t p, int64_t m, double bp, double bm) { return le(p, bp) && le(m, bm); }

// Every finite budget lies strictly above what the family's largest network costs.
bool above_all(int64_t pmax, int64_t mmax, double bp, double bm) {
  return (!std::isfinite(bp) || lt(pmax, bp)) && (!std::isfinite(bm) || lt(mmax, bm));
}

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

class Family {
 public:
  Family(const CostProgram& program, const DoubleArray& a, const DoubleArray& b, const IntArray& rounding,
         const DoubleArray& min_width, const DoubleArray& floor_width, double t_lo, double t_hi)
      : program_(program), n_(static_cast<size_t>(program.n_inputs)), t_lo_(t_lo), t_hi_(t_hi) {
    for (auto size : {a.size(), b.size(), rounding.size(), min_width.size(), floor_width.size()})
      if (static_cast<size_t>(size) != n_)
        throw py::value_error("family: expected " + std::to_string(n_) + " entries per array");
    if (!(t_lo > 0.0 && t_lo < t_hi && std::isfinite(t_hi)))
      throw py::value_error("family: need 0 < t_lo < t_hi < inf");
    a_.assign(a.data(), a.data() + n_);
    b_.assign(b.data(), b.data() + n_);
    rounding_.assign(rounding.data(), rounding.data() + n_);
    min_.assign(min_width.data(), min_width.data() + n_);
    floor_.assign(floor_width.data(), floor_width.data() + n_);
    for (size_t l = 0; l < n_; ++l) {
      if (rounding_[l] < FIXED || rounding_[l] > MAKE_DIV8) throw py::value_error("family: bad rounding code");
      if (!std::isfinite(a_[l]) || !std::isfinite(b_[l])) throw py::value_error("family: non-finite a or b");
      if (!pyns::valid_width(min_[l]) || !pyns::valid_width(floor_[l]))
        throw py::value_error("family: minimum and floor widths must be whole numbers >= 0");
      if (rounding_[l] == FIXED && !pyns::valid_width(a_[l]))
        throw py::value_error("family: a fixed width must be a whole number >= 0");
    }
    certified_ = certify();
  }

  // ---- the fill (pyns/scaling/solve.py; its Python oracle is pyns.scaling.oracle.py_fill) -------------
  // After the family solve, steps of `step_l` channels are added to symbols while every budget holds. A
  // move adds one step to every member of a tied group: symbols joined by an identity add (always equal)
  // or by a shortcut that exists only while their widths differ (`pairs`, grouped while equal), so the
  // group's cost is counted once and no tie is broken. The cost of a move is its exact cost increase
  // relative to the budget: the largest of Δparams / budget and Δmacs / budget over the given budgets.
  // Mode 0 (uniform, from-config: the method ranks symbols by cost alone): rounds; each round orders the
  //   groups whose move fits cheapest first (ties: smallest symbol index) and walks that order once,
  //   adding one step to each group whose move still fits, until a round adds nothing.
  // Mode 1 (profile): one move at a time, the fitting move with the largest weight per unit of cost, the
  //   weight being Σ over the group of φ'_l(t) = a_l b_l t^(b_l - 1), the rate at which the family
  //   itself grows each width (ties: smallest symbol index); a move that costs nothing comes first.
  // Symbols with a fixed width or a zero weight never move; no width passes its cap.
  // Then the exchange, where at most kExchangeGroups groups can move: adding alone stops as soon as no
  // single channel fits, which on a network of few, dear channels (a 4-conv net on 8x8 inputs: one channel
  // is 0.4-1.9 % of the budget) leaves up to 2 % unused. Every combination of -2..+2 steps per group
  // around the filled widths (each group within its minimum and cap) is costed; the one using the largest
  // fraction of its binding budget while every budget holds is taken (ties: fewest steps moved, then the
  // first in the order of itertools.product over the groups), and the add phase runs once more.
  void configure_fill(int32_t mode, const DoubleArray& cap, const DoubleArray& step, const IntArray& pairs) {
    if (mode != 0 && mode != 1) throw py::value_error("fill: mode must be 0 (uniform) or 1 (profile)");
    if (static_cast<size_t>(cap.size()) != n_ || static_cast<size_t>(step.size()) != n_)
      throw py::value_error("fill: expected " + std::to_string(n_) + " caps and steps");
    if (pairs.size() % 2) throw py::value_error("fill: pairs must be index pairs");
    std::vector<int32_t> pr(pairs.data(), pairs.data() + pairs.size());
    for (int32_t v : pr)
      if (v < 0 || static_cast<size_t>(v) >= n_) throw py::value_error("fill: pair index out of range");
    for (py::ssize_t l = 0; l < cap.size(); ++l)
      if (!pyns::valid_width(cap.data()[l]) || !pyns::valid_width(step.data()[l]) || step.data()[l] < 1)
        throw py::value_error("fill: caps must be whole numbers >= 0 and steps whole numbers >= 1");
    fill_mode_ = mode;
    cap_.assign(cap.data(), cap.data() + n_);
    step_.assign(step.data(), step.data() + n_);
    pairs_ = std::move(pr);
    fill_ready_ = true;
  }

  bool fill_ready() const { return fill_ready_; }

  // Fills `w` (a configuration costing p, m at scalar t) in place; returns the number of add moves made
  // and sets `exchanged` to the steps the exchange moved (0: none).
  int32_t fill(double* w, double t, int64_t& p, int64_t& m, double bp, double bm, int32_t& exchanged) const {
    if (!fill_ready_) throw std::logic_error("fill: configure_fill was not called");
    exchanged = 0;
    if (!fits(p, m, bp, bm)) return 0;  // a `nearest` answer over the budget: nothing to fill
    FillState st(*this, w, t, p, m, bp, bm);
    int32_t moves = fill_mode_ == 0 ? st.rounds() : st.greedy();
    exchanged = st.exchange();
    if (exchanged) moves += fill_mode_ == 0 ? st.rounds() : st.greedy();
    return moves;
  }

  size_t size() const { return n_; }
  bool certified() const { return certified_; }
  double t_lo() const { return t_lo_; }
  double t_hi() const { return t_hi_; }

  double width(size_t l, double t) const {
    const double a = a_[l], b = b_[l];
    if (rounding_[l] == FIXED) return a;
    const double raw = b == 1.0 ? a * t : (b == 0.0 ? a : a * std::pow(t, b));
    double w;
    switch (rounding_[l]) {
      case TRUNC: w = std::trunc(raw); break;
      case ROUND: w = std::nearbyint(raw); break;  // ties to even, as Python's round()
      default: w = pyns::make_divisible(raw, 8.0, 0.0, 0.9); break;
    }
    if (w < min_[l]) w = min_[l];
    if (w < floor_[l]) w = floor_[l];
    return w;
  }

  void widths(double t, double* out) const {
    for (size_t l = 0; l < n_; ++l) out[l] = width(l, t);
  }

  void cost(const double* w, double* regs, int64_t& p, int64_t& m) const {
    program_.run(w, regs);
    const int status = program_.totals(regs, p, m);
    if (status != pyns::kOk) throw std::overflow_error(pyns::cost_status_message(status));
  }

  // The smallest t' in (t, t_hi] where symbol l's width differs from its width at t; inf if none.
  // Every width is monotone in t, so "differs" is a monotone predicate.
  double next_breakpoint(size_t l, double t) const {
    if (rounding_[l] == FIXED || b_[l] == 0.0) return kInf;
    const double v = width(l, t);
    if (t >= t_hi_ || width(l, t_hi_) == v) return kInf;
    return first_true(t, t_hi_, [&](double x) { return width(l, x) != v; });
  }

  Answer solve(double bp, double bm, bool nearest, double* w_out) {
    if (!certified_) ensure_table();
    return solve_const(bp, bm, nearest, w_out);
  }

  // Thread-safe: reads the family only (an uncertified family's table must exist already).
  Answer solve_const(double bp, double bm, bool nearest, double* w_out) const {
    if (!certified_) return solve_table(bp, bm, nearest, w_out);
    return solve_bisect(bp, bm, nearest, w_out);
  }

  // (t, widths, params, macs) of every configuration of the family, in increasing t.
  const std::vector<double>& table_t() { ensure_table(); return tab_t_; }
  const std::vector<double>& table_w() { ensure_table(); return tab_w_; }
  const std::vector<int64_t>& table_p() { ensure_table(); return tab_p_; }
  const std::vector<int64_t>& table_m() { ensure_table(); return tab_m_; }

  // (params_min, macs_min, params_max, macs_max) over the family.
  std::vector<int64_t> cost_range() {
    if (!certified_) {
      ensure_table();
      return {*std::min_element(tab_p_.begin(), tab_p_.end()), *std::min_element(tab_m_.begin(), tab_m_.end()),
              *std::max_element(tab_p_.begin(), tab_p_.end()), *std::max_element(tab_m_.begin(), tab_m_.end())};
    }
    std::vector<double> w(n_), regs(program_.n_registers);
    int64_t p0, m0, p1, m1;
    widths(t_lo_, w.data());
    cost(w.data(), regs.data(), p0, m0);
    widths(t_hi_, w.data());
    cost(w.data(), regs.data(), p1, m1);
    return {p0, m0, p1, m1};
  }

  void ensure_table() {
    if (has_table_) return;
    std::vector<double> w(n_), regs(program_.n_registers), next(n_);
    for (size_t l = 0; l < n_; ++l) next[l] = next_breakpoint(l, t_lo_);
    double t = t_lo_;
    while (true) {
      widths(t, w.data());
      int64_t p, m;
      cost(w.data(), regs.data(), p, m);
      tab_t_.push_back(t);
      tab_w_.insert(tab_w_.end(), w.begin(), w.end());
      tab_p_.push_back(p);
      tab_m_.push_back(m);
      if (tab_t_.size() > kMaxTable) {
        tab_t_.clear(); tab_w_.clear(); tab_p_.clear(); tab_m_.clear();
        throw std::runtime_error("this scaling family has more than " + std::to_string(kMaxTable) +
                                 " distinct configurations; it is too fine to scan exhaustively");
      }
      double tn = *std::min_element(next.begin(), next.end());
      if (!(tn <= t_hi_)) break;
      do {  // jump over every breakpoint within kMerge of the previous one: one merged breakpoint
        t = tn;
        for (size_t l = 0; l < n_; ++l)
          if (next[l] <= t) next[l] = next_breakpoint(l, t);
        tn = *std::min_element(next.begin(), next.end());
      } while (tn <= t_hi_ && tn <= t * (1.0 + kMerge));
    }
    has_table_ = true;
  }

 private:
  // Bisection over the bits of t between t_lo (fits) and t_hi (does not): the invariant is
  // fits(config(a)) and !fits(config(c)); configurations equal to an end's are not re-costed.
  Answer solve_bisect(double bp, double bm, bool nearest, double* w_out) const {
    Answer ans;
    std::vector<double> wa(n_), wc(n_), wm(n_), regs(program_.n_registers);
    int64_t pa, ma, pc, mc;
    widths(t_lo_, wa.data());
    cost(wa.data(), regs.data(), pa, ma);
    widths(t_hi_, wc.data());
    cost(wc.data(), regs.data(), pc, mc);
    ans.evaluations = 2;
    if (!fits(pa, ma, bp, bm)) { ans.status = BELOW; return ans; }
    int64_t a = to_bits(t_lo_), c = to_bits(t_hi_);
    if (fits(pc, mc, bp, bm)) {
      if (above_all(pc, mc, bp, bm)) { ans.status = ABOVE; return ans; }
      a = c;  // the largest network meets a budget exactly
      wa = wc; pa = pc; ma = mc;
    } else {
      while (c - a > 1) {
        const int64_t mid = a + (c - a) / 2;
        widths(from_bits(mid), wm.data());
        if (wm == wa) { a = mid; continue; }
        if (wm == wc) { c = mid; continue; }
        int64_t pm, mm;
        cost(wm.data(), regs.data(), pm, mm);
        ++ans.evaluations;
        if (fits(pm, mm, bp, bm)) { a = mid; wa.swap(wm); pa = pm; ma = mm; }
        else { c = mid; wc.swap(wm); pc = pm; mc = mm; }
      }
    }
    // A configuration lives on [left, right) in t; one living for less than kMerge (relative) is a
    // rounding artifact between two breakpoints that coincide in real arithmetic: step past it.
    double left_a = left_edge(wa, from_bits(a));
    while (a != c && left_a > t_lo_ && !(from_bits(c) > left_a * (1.0 + kMerge))) {
      c = to_bits(left_a);  // the artifact's own start is where the configuration above begins
      a = c - 1;
      widths(from_bits(a), wa.data());
      cost(wa.data(), regs.data(), pa, ma);
      ++ans.evaluations;
      left_a = left_edge(wa, from_bits(a));
    }
    bool take_c = false;
    if (nearest && a != c) {
      double left_c = from_bits(c);
      widths(left_c, wc.data());
      for (double right = right_edge(wc, left_c); right <= t_hi_ && !(right > left_c * (1.0 + kMerge));
           right = right_edge(wc, left_c)) {
        left_c = right;
        widths(left_c, wc.data());
      }
      cost(wc.data(), regs.data(), pc, mc);
      ++ans.evaluations;
      c = to_bits(left_c);
      take_c = overshoot(pc, mc, bp, bm) < slack(pa, ma, bp, bm);
    }
    ans.t = take_c ? from_bits(c) : left_a;  // report the configuration's left end
    ans.params = take_c ? pc : pa;
    ans.macs = take_c ? mc : ma;
    const std::vector<double>& w = take_c ? wc : wa;
    std::copy(w.begin(), w.end(), w_out);
    return ans;
  }

  // Smallest t giving configuration w, which holds at t_in (widths are non-decreasing in t).
  double left_edge(const std::vector<double>& w, double t_in) const {
    auto reaches = [&](double x) {
      for (size_t l = 0; l < n_; ++l) if (width(l, x) < w[l]) return false;
      return true;
    };
    return reaches(t_lo_) ? t_lo_ : first_true(t_lo_, t_in, reaches);
  }

  // Smallest t > t_in where the configuration w (which holds at t_in) changes; above t_hi if never.
  double right_edge(const std::vector<double>& w, double t_in) const {
    auto changed = [&](double x) {
      for (size_t l = 0; l < n_; ++l) if (width(l, x) != w[l]) return true;
      return false;
    };
    if (t_in >= t_hi_ || !changed(t_hi_)) return kInf;
    return first_true(t_in, t_hi_, changed);
  }

  Answer solve_table(double bp, double bm, bool nearest, double* w_out) const {
    if (!has_table_) throw std::logic_error("solve_table: the table was not built");
    Answer ans;
    const size_t rows = tab_t_.size();
    ans.evaluations = static_cast<int32_t>(std::min<size_t>(rows, std::numeric_limits<int32_t>::max()));
    size_t best_fit = rows, best_over = rows;
    double fit_d = kInf, over_d = kInf;
    int64_t pmax = 0, mmax = 0;
    for (size_t i = 0; i < rows; ++i) {  // ties among fitting rows: the larger t wins
      const int64_t p = tab_p_[i], m = tab_m_[i];
      pmax = std::max(pmax, p);
      mmax = std::max(mmax, m);
      if (fits(p, m, bp, bm)) {
        const double d = slack(p, m, bp, bm);
        if (d <= fit_d) { fit_d = d; best_fit = i; }
      } else {
        const double d = overshoot(p, m, bp, bm);
        if (d < over_d) { over_d = d; best_over = i; }  // ties: the smaller t, nearest the boundary
      }
    }
    if (best_fit == rows) { ans.status = BELOW; return ans; }
    if (best_over == rows && above_all(pmax, mmax, bp, bm)) { ans.status = ABOVE; return ans; }
    const size_t i = (nearest && best_over != rows && over_d < fit_d) ? best_over : best_fit;
    ans.t = tab_t_[i];
    ans.params = tab_p_[i];
    ans.macs = tab_m_[i];
    std::copy(tab_w_.begin() + i * n_, tab_w_.begin() + (i + 1) * n_, w_out);
    return ans;
  }

  // Proves cost(config(t)) non-decreasing in t, or gives up (false: the caller scans a table instead).
  // Widths are non-decreasing in t when every b >= 0. The cost program is then monotone if every op is
  // monotone in its input-dependent operands, with one exception handled separately: `a != b` (a residual
  // shortcut exists only while two widths differ), which is fine as long as it never falls from 1 to 0.
  bool certify() const {
    for (size_t l = 0; l < n_; ++l)
      if (rounding_[l] != FIXED && b_[l] < 0.0) return false;
    const auto& code = program_.code;
    const size_t nc = program_.constants.size();
    std::vector<double> regs(program_.n_registers), w(n_);
    widths(t_lo_, w.data());
    program_.run(w.data(), regs.data());  // values of registers that do not depend on widths
    std::vector<char> dep(program_.n_registers, 0), maybe_neg(program_.n_registers, 0);
    for (size_t i = nc; i < nc + n_; ++i) dep[i] = 1;
    for (size_t i = 0; i < nc; ++i) maybe_neg[i] = program_.constants[i] < 0.0;
    std::vector<std::pair<int32_t, int32_t>> ne_pairs;
    for (size_t i = 0; i < code.size(); i += pyns::kSlots) {
      const int32_t op = code[i], dst = code[i + 1], ra = code[i + 2], rb = code[i + 3];
      const int32_t rc = code[i + 4], rd = code[i + 5];
      const bool da = dep[ra], db = dep[rb];
      const bool unary = op == pyns::NEG || op == pyns::ROUND || op == pyns::TRUNC || op == pyns::FLOOR ||
                         op == pyns::CEIL;
      const bool any = da || (!unary && (db || (op == pyns::MAKE_DIVISIBLE && (dep[rc] || dep[rd]))));
      bool neg = false;
      const double va = regs[ra], vb = regs[rb];
      switch (op) {
        case pyns::ADD: neg = (da ? maybe_neg[ra] : va < 0) || (db ? maybe_neg[rb] : vb < 0); break;
        case pyns::MAX: neg = (da ? maybe_neg[ra] : va < 0) && (db ? maybe_neg[rb] : vb < 0); break;
        case pyns::MIN: neg = (da ? maybe_neg[ra] : va < 0) || (db ? maybe_neg[rb] : vb < 0); break;
        case pyns::ROUND: case pyns::TRUNC: case pyns::FLOOR: case pyns::CEIL: neg = maybe_neg[ra]; break;
        case pyns::MUL:
          if (da && db && (maybe_neg[ra] || maybe_neg[rb])) return false;
          if ((da && !db && vb < 0) || (db && !da && va < 0)) return false;
          neg = false;
          break;
        case pyns::SUB:
          if (db) return false;
          neg = maybe_neg[ra] || (!da && va - vb < 0) || (da && vb > 0);
          break;
        case pyns::TRUEDIV: case pyns::FLOORDIV:
          if (db || (da && vb <= 0)) return false;
          neg = maybe_neg[ra];
          break;
        case pyns::NEG: case pyns::MOD:
          if (any) return false;
          break;
        case pyns::MAKE_DIVISIBLE:
          if (db || dep[rc] || dep[rd]) return false;
          neg = false;
          break;
        case pyns::NE:
          if (da || db) {
            const bool a_ok = !da || (ra >= static_cast<int32_t>(nc) && ra < static_cast<int32_t>(nc + n_));
            const bool b_ok = !db || (rb >= static_cast<int32_t>(nc) && rb < static_cast<int32_t>(nc + n_));
            if (!a_ok || !b_ok) return false;  // compares derived values: not analysed
            ne_pairs.emplace_back(ra, rb);
          }
          neg = false;
          break;
        default: return false;
      }
      dep[dst] = any;
      maybe_neg[dst] = any ? neg : regs[dst] < 0;
    }
    for (const auto& pair : ne_pairs)
      if (!never_falls(pair.first, pair.second, nc, regs)) return false;
    return true;
  }

  // Walks the breakpoints of the (one or two) widths compared by a `!=` and checks it never goes 1 -> 0.
  bool never_falls(int32_t ra, int32_t rb, size_t nc, const std::vector<double>& regs) const {
    const bool ia = static_cast<size_t>(ra) >= nc, ib = static_cast<size_t>(rb) >= nc;
    const size_t la = ra - nc, lb = rb - nc;
    if (ia && ib && a_[la] == a_[lb] && b_[la] == b_[lb] && rounding_[la] == rounding_[lb] &&
        min_[la] == min_[lb] && floor_[la] == floor_[lb])
      return true;  // the same function of t: always equal
    auto value = [&](bool input, size_t l, int32_t r, double t) { return input ? width(l, t) : regs[r]; };
    auto differs = [&](double t) { return value(ia, la, ra, t) != value(ib, lb, rb, t); };
    double t = t_lo_;
    bool prev = differs(t);
    for (size_t steps = 0; steps < kMaxTable; ++steps) {
      const double tn = std::min(ia ? next_breakpoint(la, t) : kInf, ib ? next_breakpoint(lb, t) : kInf);
      if (!(tn <= t_hi_)) return true;
      t = tn;
      const bool now = differs(t);
      if (prev && !now) return false;
      prev = now;
    }
    return false;
  }

  // The fill's working state for one configuration (see configure_fill).
  struct FillState {
    const Family& f;
    double* w;
    int64_t &p, &m;
    double bp, bm;
    size_t n;
    std::vector<double> weight, trial, regs;
    std::vector<size_t> parent;
    std::vector<std::vector<size_t>> groups;  // movable groups, in order of their smallest member

    FillState(const Family& family, double* widths, double t, int64_t& params, int64_t& macs, double bp_,
              double bm_)
        : f(family), w(widths), p(params), m(macs), bp(bp_), bm(bm_), n(family.n_), weight(n),
          trial(widths, widths + n), regs(family.program_.n_registers), parent(n) {
      for (size_t l = 0; l < n; ++l) {
        const bool moves = f.rounding_[l] != FIXED && f.b_[l] != 0.0;
        weight[l] = !moves ? 0.0 : f.fill_mode_ == 0 ? 1.0 : f.a_[l] * f.b_[l] * std::pow(t, f.b_[l] - 1.0);
      }
    }

    size_t find(size_t x) {
      while (parent[x] != x) x = parent[x] = parent[parent[x]];
      return x;
    }

    void make_groups() {
      for (size_t l = 0; l < n; ++l) parent[l] = l;
      for (size_t k = 0; k < f.pairs_.size(); k += 2) {
        const size_t i = f.pairs_[k], j = f.pairs_[k + 1];
        if (w[i] != w[j]) continue;
        const size_t ri = find(i), rj = find(j);
        if (ri != rj) parent[std::max(ri, rj)] = std::min(ri, rj);  // the root is the smallest index
      }
      groups.clear();
      for (size_t g = 0; g < n; ++g) {
        if (find(g) != g) continue;
        std::vector<size_t> members;
        bool movable = true;
        for (size_t l = g; l < n; ++l)
          if (find(l) == g) {
            members.push_back(l);
            movable &= weight[l] > 0.0;
          }
        if (movable) groups.push_back(std::move(members));
      }
    }

    double group_weight(const std::vector<size_t>& members) const {
      double total = 0.0;
      for (size_t l : members) total += weight[l];
      return total;
    }

    // Whether one step on the group fits its caps and the budget; its new cost and relative cost.
    bool try_move(const std::vector<size_t>& members, int64_t& tp, int64_t& tm, double& relative) {
      for (size_t l : members)
        if (!(w[l] + f.step_[l] <= f.cap_[l])) return false;
      for (size_t l : members) trial[l] = w[l] + f.step_[l];
      f.cost(trial.data(), regs.data(), tp, tm);
      for (size_t l : members) trial[l] = w[l];
      if (!fits(tp, tm, bp, bm)) return false;
      relative = -kInf;
      if (std::isfinite(bp)) relative = std::max(relative, static_cast<double>(tp - p) / bp);
      if (std::isfinite(bm)) relative = std::max(relative, static_cast<double>(tm - m) / bm);
      return true;
    }

    void apply(const std::vector<size_t>& members, int64_t tp, int64_t tm) {
      for (size_t l : members) trial[l] = w[l] = w[l] + f.step_[l];
      p = tp;
      m = tm;
    }

    int32_t greedy() {
      int32_t moves = 0;
      while (true) {
        make_groups();
        const std::vector<size_t>* best = nullptr;
        double best_priority = -kInf;
        int64_t best_p = 0, best_m = 0;
        for (const auto& members : groups) {
          int64_t tp, tm;
          double relative;
          if (!try_move(members, tp, tm, relative)) continue;
          const double priority = relative > 0.0 ? group_weight(members) / relative : kInf;
          if (priority > best_priority) {
            best = &members;
            best_priority = priority;
            best_p = tp;
            best_m = tm;
          }
        }
        if (!best) return moves;
        apply(*best, best_p, best_m);
        ++moves;
      }
    }

    // The fraction of the binding budget a cost uses (the largest over the given budgets: the tighter binds).
    double used(int64_t tp, int64_t tm) const {
      double u = -kInf;
      if (std::isfinite(bp)) u = std::max(u, static_cast<double>(tp) / bp);
      if (std::isfinite(bm)) u = std::max(u, static_cast<double>(tm) / bm);
      return u;
    }

    // See configure_fill; returns the steps moved (the sum of |delta| over the groups).
    int32_t exchange() {
      make_groups();
      const size_t k = groups.size();
      if (k == 0 || k > kExchangeGroups) return 0;
      std::vector<int> delta(k, -kExchangeSteps), best(k, 0);
      double best_used = used(p, m);
      int best_moved = 0;
      int64_t best_p = p, best_m = m;
      while (true) {
        bool ok = true;
        int moved = 0;
        for (size_t g = 0; g < k && ok; ++g) {
          moved += std::abs(delta[g]);
          for (size_t l : groups[g]) {
            const double v = w[l] + delta[g] * f.step_[l];
            if (v > f.cap_[l] || v < std::max({f.min_[l], f.floor_[l], 1.0})) ok = false;
            trial[l] = v;
          }
        }
        if (ok && moved > 0) {
          int64_t tp, tm;
          f.cost(trial.data(), regs.data(), tp, tm);
          const double u = used(tp, tm);
          if (fits(tp, tm, bp, bm) && (u > best_used || (u == best_used && moved < best_moved))) {
            best = delta;
            best_used = u;
            best_moved = moved;
            best_p = tp;
            best_m = tm;
          }
        }
        size_t g = k;  // the next combination, the last group fastest (itertools.product's order)
        while (g > 0 && delta[g - 1] == kExchangeSteps) delta[--g] = -kExchangeSteps;
        if (g == 0) break;
        ++delta[g - 1];
      }
      for (size_t l = 0; l < n; ++l) trial[l] = w[l];
      if (best_moved == 0) return 0;
      for (size_t g = 0; g < k; ++g)
        for (size_t l : groups[g]) trial[l] = w[l] = w[l] + best[g] * f.step_[l];
      p = best_p;
      m = best_m;
      return best_moved;
    }

    int32_t rounds() {
      int32_t moves = 0;
      std::vector<std::pair<double, size_t>> order;
      while (true) {
        make_groups();
        order.clear();
        for (size_t i = 0; i < groups.size(); ++i) {
          int64_t tp, tm;
          double relative;
          if (try_move(groups[i], tp, tm, relative)) order.emplace_back(relative, i);
        }
        if (order.empty()) return moves;
        std::stable_sort(order.begin(), order.end(),
                         [](const auto& x, const auto& y) { return x.first < y.first; });
        for (const auto& entry : order) {
          int64_t tp, tm;
          double relative;
          if (!try_move(groups[entry.second], tp, tm, relative)) continue;
          apply(groups[entry.second], tp, tm);
          ++moves;
        }
      }
    }
  };

  CostProgram program_;
  size_t n_;
  double t_lo_, t_hi_;
  std::vector<double> a_, b_, min_, floor_;
  std::vector<int32_t> rounding_;
  bool certified_ = false;
  bool has_table_ = false;
  bool fill_ready_ = false;
  int32_t fill_mode_ = 0;
  std::vector<double> cap_, step_;
  std::vector<int32_t> pairs_;
  std::vector<double> tab_t_, tab_w_;
  std::vector<int64_t> tab_p_, tab_m_;
};

double budget_value(double b) { return std::isnan(b) ? kInf : b; }  // NaN = no budget in this metric

// NaN (no budget) or a positive number; +inf is accepted as "no budget" too.
void check_budget(double b, const char* what) {
  if (!(std::isnan(b) || b > 0.0))
    throw py::value_error(std::string("the ") + what + " budget must be positive (or NaN for none)");
}

// Budgets handed to one thread at a time: large enough to amortise the scheduling, small enough that
// a mix of cheap (bisection) and dear (fill) solves still balances.
constexpr int kChunk = 16;
// More threads than this is a mistake, not a machine.
constexpr int kMaxThreads = 1024;

int thread_count(int requested, py::ssize_t n) {
#ifdef PYNS_WITH_OPENMP
  const int want = requested > 0 ? requested : omp_get_max_threads();
  // Below a few chunks per thread a parallel region costs more than it saves.
  return static_cast<int>(std::max<py::ssize_t>(1, std::min<py::ssize_t>(want, n / (2 * kChunk))));
#else
  (void)requested; (void)n;
  return 1;
#endif
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

}  // namespace

void register_solver(py::module_& m) {
  py::class_<Family>(m, "ScaleFamily",
                     "A one-dimensional family of width configurations w(t) and its exact budget solver "
                     "(see pyns.scaling.solve)")
      .def(py::init<const CostProgram&, const DoubleArray&, const DoubleArray&, const IntArray&,
                    const DoubleArray&, const DoubleArray&, double, double>(),
           py::arg("program"), py::arg("a"), py::arg("b"), py::arg("rounding"), py::arg("min_width"),
           py::arg("floor_width"), py::arg("t_lo"), py::arg("t_hi"))
      .def_property_readonly("certified", &Family::certified,
                             "True when the cost is proven non-decreasing in t (bisection is exact)")
      .def_property_readonly("t_lo", &Family::t_lo)
      .def_property_readonly("t_hi", &Family::t_hi)
      .def_property_readonly("n_inputs", &Family::size)
      .def(
          "widths",
          [](const Family& f, double t) {
            py::array_t<double> out(static_cast<py::ssize_t>(f.size()));
            f.widths(t, out.mutable_data());
            return out;
          },
          py::arg("t"), "Width of every symbol (program input order) at scalar t.")
      .def(
          "next_breakpoint", [](const Family& f, size_t l, double t) {
            if (l >= f.size()) throw py::index_error("symbol index out of range");
            return f.next_breakpoint(l, t);
          },
          py::arg("symbol"), py::arg("t"), "Smallest t' > t where this symbol's width changes (inf if none).")
      .def("cost_range", &Family::cost_range, "[params_min, macs_min, params_max, macs_max] over the family")
      .def(
          "table",
          [](Family& f) {
            const auto& t = f.table_t();
            const auto& w = f.table_w();
            py::array_t<double> widths({static_cast<py::ssize_t>(t.size()), static_cast<py::ssize_t>(f.size())});
            std::copy(w.begin(), w.end(), widths.mutable_data());
            return py::make_tuple(to_array(t), widths, to_array(f.table_p()), to_array(f.table_m()));
          },
          "Every configuration of the family: (t[n], widths[n, L], params[n], macs[n]), t increasing.")
      .def("configure_fill", &Family::configure_fill, py::arg("mode"), py::arg("cap"), py::arg("step"),
           py::arg("pairs"),
           "Set up the fill: mode 0 (uniform: cheapest first) or 1 (profile: largest φ'(t) per relative "
           "cost); cap[L] and step[L] per symbol; pairs[k, 2] symbol indices tied while equal.")
      .def(
          "fill",
          [](const Family& f, const DoubleArray& widths, double t, int64_t params, int64_t macs, double bp,
             double bm) {
            if (widths.ndim() != 1 || static_cast<size_t>(widths.size()) != f.size())
              throw py::value_error("fill expects " + std::to_string(f.size()) + " widths");
            check_budget(bp, "params");
            check_budget(bm, "MACs");
            py::array_t<double> w(static_cast<py::ssize_t>(f.size()));
            std::copy(widths.data(), widths.data() + f.size(), w.mutable_data());
            for (size_t l = 0; l < f.size(); ++l)
              if (!pyns::valid_width(w.data()[l])) throw py::value_error("fill: widths must be whole numbers >= 0");
            int32_t exchanged = 0;
            const int32_t moves =
                f.fill(w.mutable_data(), t, params, macs, budget_value(bp), budget_value(bm), exchanged);
            return py::make_tuple(w, params, macs, moves, exchanged);
          },
          py::arg("widths"), py::arg("t"), py::arg("params"), py::arg("macs"), py::arg("budget_params"),
          py::arg("budget_macs"), "Fill a configuration: (widths, params, macs, moves, steps exchanged).")
      .def(
          "solve",
          [](Family& f, double bp, double bm, bool nearest, bool fill) -> py::tuple {
            check_budget(bp, "params");
            check_budget(bm, "MACs");
            if (fill && !f.fill_ready()) throw py::value_error("solve: fill=True needs configure_fill first");
            py::array_t<double> w(static_cast<py::ssize_t>(f.size()));
            Answer ans = f.solve(budget_value(bp), budget_value(bm), nearest, w.mutable_data());
            if (!fill) return py::make_tuple(ans.status, ans.t, ans.params, ans.macs, w, ans.evaluations);
            py::array_t<double> fw(static_cast<py::ssize_t>(f.size()));
            std::copy(w.data(), w.data() + f.size(), fw.mutable_data());
            int64_t fp = ans.params, fm = ans.macs;
            int32_t moves = 0, exchanged = 0;
            if (ans.status == OK)
              moves = f.fill(fw.mutable_data(), ans.t, fp, fm, budget_value(bp), budget_value(bm), exchanged);
            return py::make_tuple(ans.status, ans.t, ans.params, ans.macs, w, ans.evaluations, fp, fm, fw, moves,
                                  exchanged);
          },
          py::arg("params"), py::arg("macs"), py::arg("nearest") = false, py::arg("fill") = false,
          "(status, t, params, macs, widths, evaluations), and with fill=True also (filled params, filled "
          "macs, filled widths, moves, steps exchanged); a NaN budget means unconstrained; status 0 ok, 1 below the "
          "smallest network, 2 above the largest.")
      .def(
          "solve_batch",
          [](Family& f, const DoubleArray& bp, const DoubleArray& bm, bool nearest, bool fill, int threads) -> py::tuple {
            if (bp.ndim() != 1 || bm.ndim() != 1 || bp.size() != bm.size())
              throw py::value_error("solve_batch expects two 1-D budget arrays of equal length");
            if (fill && !f.fill_ready()) throw py::value_error("solve_batch: fill=True needs configure_fill first");
            if (threads < 0 || threads > kMaxThreads)
              throw py::value_error("solve_batch: threads must be in [0, " + std::to_string(kMaxThreads) + "]");
            const py::ssize_t n = bp.size();
            const auto L = static_cast<py::ssize_t>(f.size());
            const double* bpp = bp.data();
            const double* bmp = bm.data();
            for (py::ssize_t i = 0; i < n; ++i) {
              check_budget(bpp[i], "params");
              check_budget(bmp[i], "MACs");
            }
            if (!f.certified()) f.ensure_table();  // built once, with the GIL held, before any thread reads it
            py::array_t<int32_t> status(n);
            py::array_t<double> t(n), widths({n, L});
            py::array_t<int64_t> params(n), macs(n);
            py::array_t<double> fwidths(std::vector<py::ssize_t>{fill ? n : 0, L});
            py::array_t<int64_t> fparams(fill ? n : 0), fmacs(fill ? n : 0);
            py::array_t<int32_t> moves(fill ? n : 0), exchanged(fill ? n : 0);
            auto* st = status.mutable_data();
            auto* tp = t.mutable_data();
            auto* wp = widths.mutable_data();
            auto* pp = params.mutable_data();
            auto* mp = macs.mutable_data();
            auto* fwp = fwidths.mutable_data();
            auto* fpp = fparams.mutable_data();
            auto* fmp = fmacs.mutable_data();
            auto* mvp = moves.mutable_data();
            auto* exch = exchanged.mutable_data();
            std::string error;
            {
              py::gil_scoped_release release;
              const Family& cf = f;  // const from here: every solve only reads the family
              const int team = thread_count(threads, n);
              (void)team;
#ifdef PYNS_WITH_OPENMP
#pragma omp parallel for schedule(dynamic, kChunk) num_threads(team)
#endif
              for (py::ssize_t i = 0; i < n; ++i) {
                try {  // an exception must not leave an OpenMP region: record it, raise after
                  Answer ans = cf.solve_const(budget_value(bpp[i]), budget_value(bmp[i]), nearest, wp + i * L);
                  if (ans.status != OK) std::fill(wp + i * L, wp + (i + 1) * L, 0.0);
                  st[i] = ans.status;
                  tp[i] = ans.t;
                  pp[i] = ans.params;
                  mp[i] = ans.macs;
                  if (fill) {
                    std::copy(wp + i * L, wp + (i + 1) * L, fwp + i * L);
                    int64_t fp = ans.params, fm = ans.macs;
                    int32_t ex = 0;
                    mvp[i] = ans.status == OK ? cf.fill(fwp + i * L, ans.t, fp, fm, budget_value(bpp[i]),
                                                        budget_value(bmp[i]), ex)
                                              : 0;
                    exch[i] = ex;
                    fpp[i] = fp;
                    fmp[i] = fm;
                  }
                } catch (const std::exception& err) {
#ifdef PYNS_WITH_OPENMP
#pragma omp critical(pyns_solve_batch_error)
#endif
                  if (error.empty()) error = err.what();
                }
              }
            }
            if (!error.empty()) throw std::overflow_error(error);
            if (!fill) return py::make_tuple(status, t, params, macs, widths);
            return py::make_tuple(status, t, params, macs, widths, fparams, fmacs, fwidths, moves, exchanged);
          },
          py::arg("params"), py::arg("macs"), py::arg("nearest") = false, py::arg("fill") = false,
          py::arg("threads") = 1,
          "Many budgets at once: (status[n], t[n], params[n], macs[n], widths[n, L]), and with fill=True "
          "also (filled params[n], filled macs[n], filled widths[n, L], moves[n], steps exchanged[n]). threads: OpenMP threads "
          "(0: all available); results do not depend on it.");
}
