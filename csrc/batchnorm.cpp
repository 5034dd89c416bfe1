// Training-mode BatchNorm over rows: memory [R][C], R = N*H*W (channels_last activations, or [N, C]).
//
// Why pyns has its own: torch's CPU kernels for channels_last BatchNorm vectorise over C in whole
// vectors and fall far behind for the widths a pruned or scaled network has. On this machine (torch
// 2.13, 2 threads, 64x19x32x32 float32) the forward took 2.3 ms and the backward 9.0 ms against 0.55 and
// 0.67 ms at C = 16, while the same tensor in NCHW took 1.7 and 0.85 ms. Here every loop runs unit
// stride over flat segments of whole rows, the per-channel coefficients repeated along them (Segments),
// so it vectorises without a remainder for every C.
//
//   forward:  mean, biased var (two passes: sum, then sum of (x - mean)^2), invstd = 1/sqrt(var + eps),
//             y = (x - mean) * (invstd * w) + b, or max(that, 0) with a ReLU fused in
//             (running_mean / running_var updated as torch does)
//   backward: (dy zeroed where a fused ReLU did not pass its input, the mask recomputed from x)
//             sum_dy, dot = sum dy * (x - mean); grad_w = dot * invstd, grad_b = sum_dy,
//             dx = w * invstd * (dy - sum_dy / R - (x - mean) * invstd^2 * dot / R)
//
// Sums are formed in the input dtype, each lane over kSegmentRun segments (so 64 rows), and added in
// float64 in a fixed order (thread by thread), so a result depends only on the thread count. No torch
// here (SPEC §2): Python checks the tensors and passes data_ptr() integers.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"

namespace py = pybind11;

namespace {

// Codes shared with pyns/batchnorm.py (_DTYPE_CODES).
enum DType : int { kFloat32 = 0, kFloat64 = 1 };

// Segments folded into one partial in the input dtype before it is flushed into float64: 64 terms keep
// a float32 partial within ~64 * 2^-24 ≈ 4e-6 relative, and the flush is 1/64 of the work.
constexpr int64_t kSegmentRun = 64;

// The loops run over the memory as flat segments of `lanes` = k * C values (k whole rows), with every
// per-channel coefficient repeated k times, instead of row by row over C. A row loop over C leaves
// C mod 16 values per row to scalar code and pays its loop overhead per row: at C = 5 the forward took
// 0.60 ms on 64x5x32x32 (1.8 ns a value; 0.13 ms in segments), at C = 31 1.2x C = 32's. Lanes are a
// multiple of 16 (one AVX-512 vector of floats, two of doubles) so the segment loop has no remainder; at
// least 64 so that it runs long enough to amortise itself; at most 1024 (the six coefficient rows of the
// input gradient stay within 24 KB of L1 in float32). A C that fits none of these keeps k = 1, plain rows.
constexpr int64_t kMinLanes = 64;
constexpr int64_t kMaxLanes = 1024;

int64_t tile_rows(int64_t c) {
  int64_t k = 16 / std::gcd<int64_t>(c, 16);
  if (k * c > kMaxLanes) k = 8 / std::gcd<int64_t>(c, 8);  // a multiple of 8 (one AVX2 vector of floats)
  if (k * c > kMaxLanes) k = 1;
  while (k * c < kMinLanes) k *= 2;
  return k;
}

// A [rows][C] buffer seen as segments of `lanes` values; lane j holds channel j mod C, and the last
// segment may be short (rows not a multiple of k).
struct Segments {
  int64_t c, lanes, elements, count;
  Segments(int64_t rows, int64_t channels)
      : c(channels), lanes(tile_rows(channels) * channels), elements(rows * channels),
        count((rows * channels + lanes - 1) / lanes) {}
  int64_t length(int64_t s) const { return std::min(lanes, elements - s * lanes); }
};

// A per-channel row repeated across the lanes.
template <class T>
std::vector<T> tiled(const T* per_channel, const Segments& seg) {
  std::vector<T> out(static_cast<size_t>(seg.lanes));
  for (int64_t j = 0; j < seg.lanes; ++j) out[j] = per_channel[j % seg.c];
  return out;
}

// partial[ch] += sum over the lanes of channel ch of run, in lane order.
template <class T>
void fold_lanes(const T* run, const Segments& seg, double* partial) {
  for (int64_t base = 0; base < seg.lanes; base += seg.c)
    for (int64_t ch = 0; ch < seg.c; ++ch) partial[ch] += static_cast<double>(run[base + ch]);
}

// partial[ch] += sum over segments [first, last) of x (shift == nullptr), or of (x - shift)^2 (shift tiled).
template <class T>
PYNS_KERNEL_CLONES void segment_sums(const T* x, const T* shift, double* partial, T* run, const Segments& seg,
                                     int64_t first, int64_t last) {
  for (int64_t block = first; block < last; block += kSegmentRun) {
    const int64_t block_end = std::min(last, block + kSegmentRun);
    std::fill(run, run + seg.lanes, T(0));
    for (int64_t s = block; s < block_end; ++s) {
      const T* xs = x + s * seg.lanes;
      const int64_t n = seg.length(s);
      if (shift) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const T d = xs[j] - shift[j];
          run[j] += d * d;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) run[j] += xs[j];
      }
    }
    fold_lanes(run, seg, partial);
  }
}

// The normalised value before a fused ReLU. The forward writes it and the backward recomputes it for the
// ReLU's mask, from the same inputs by the same expression; this file is built with -ffp-contract=off
// (CMakeLists.txt), so neither side fuses it into an FMA and the two agree bit for bit.
template <class T>
inline T normalized(T x, T mean, T scale, T shift) {
  return scale * (x - mean) + shift;
}

// The upstream gradient dy where the fused ReLU passed its input v through (v > 0), else 0, as torch's
// threshold_backward does on the ReLU's output. A select, so that the loops below vectorise.
template <class T>
inline T through_relu(T dy, T v) {
  return v > T(0) ? dy : T(0);
}

// scale = invstd * weight and shift = bias in the input dtype, computed once for the forward and again,
// identically, for the backward's ReLU mask.
template <class T>
void normalize_coefficients(const double* invstd, const T* weight, const T* bias, int64_t c, T* scale, T* shift) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const double w = weight ? static_cast<double>(weight[ch]) : 1.0;
    scale[ch] = static_cast<T>(invstd[ch] * w);
    shift[ch] = bias ? bias[ch] : T(0);
  }
}

// y = normalized(x), then max(y, 0) when `relu` (NaN stays NaN, as torch.relu keeps it); coefficients tiled.
template <class T>
PYNS_KERNEL_CLONES void segment_normalize(const T* x, const T* mean, const T* scale, const T* shift, T* y,
                                          bool relu, const Segments& seg, int64_t first, int64_t last) {
  for (int64_t s = first; s < last; ++s) {
    const T* xs = x + s * seg.lanes;
    T* ys = y + s * seg.lanes;
    const int64_t n = seg.length(s);
    if (relu) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T v = normalized(xs[j], mean[j], scale[j], shift[j]);
        ys[j] = v < T(0) ? T(0) : v;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) ys[j] = normalized(xs[j], mean[j], scale[j], shift[j]);
    }
  }
}

// dx = a * g + b * (x - mean) + k, g the upstream gradient: dy, or dy through the fused ReLU when scale /
// shift are given; coefficients tiled. The test sits outside the lane loops, which GCC would otherwise
// leave scalar.
template <class T>
PYNS_KERNEL_CLONES void segment_input_grad(const T* dy, const T* x, const T* a, const T* mean, const T* b,
                                           const T* k, const T* scale, const T* shift, T* dx, const Segments& seg,
                                           int64_t first, int64_t last) {
  for (int64_t s = first; s < last; ++s) {
    const T* gs = dy + s * seg.lanes;
    const T* xs = x + s * seg.lanes;
    T* os = dx + s * seg.lanes;
    const int64_t n = seg.length(s);
    if (scale) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T g = through_relu(gs[j], normalized(xs[j], mean[j], scale[j], shift[j]));
        os[j] = a[j] * g + b[j] * (xs[j] - mean[j]) + k[j];
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) os[j] = a[j] * gs[j] + b[j] * (xs[j] - mean[j]) + k[j];
    }
  }
}

// partial_dy[ch] += sum g, partial_dot[ch] += sum g * (x - mean) over segments [first, last), g the upstream
// gradient (through the fused ReLU when scale / shift are given); coefficients tiled.
template <class T>
PYNS_KERNEL_CLONES void segment_grad_sums(const T* dy, const T* x, const T* mean, const T* scale, const T* shift,
                                          double* partial_dy, double* partial_dot, T* run_dy, T* run_dot,
                                          const Segments& seg, int64_t first, int64_t last) {
  for (int64_t block = first; block < last; block += kSegmentRun) {
    const int64_t block_end = std::min(last, block + kSegmentRun);
    std::fill(run_dy, run_dy + seg.lanes, T(0));
    std::fill(run_dot, run_dot + seg.lanes, T(0));
    for (int64_t s = block; s < block_end; ++s) {
      const T* gs = dy + s * seg.lanes;
      const T* xs = x + s * seg.lanes;
      const int64_t n = seg.length(s);
      if (scale) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const T g = through_relu(gs[j], normalized(xs[j], mean[j], scale[j], shift[j]));
          run_dy[j] += g;
          run_dot[j] += g * (xs[j] - mean[j]);
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          run_dy[j] += gs[j];
          run_dot[j] += gs[j] * (xs[j] - mean[j]);
        }
      }
    }
    fold_lanes(run_dy, seg, partial_dy);
    fold_lanes(run_dot, seg, partial_dot);
  }
}

// Sum of the per-thread rows of `partials` (stride doubles apart), thread by thread, into out.
void reduce_partials(const std::vector<double>& partials, int64_t stride, int teams, int64_t c, double* out) {
  for (int64_t ch = 0; ch < c; ++ch) {
    double total = 0.0;
    for (int t = 0; t < teams; ++t) total += partials[t * stride + ch];
    out[ch] = total;
  }
}

template <class T>
void forward_rows(const T* x, const T* weight, const T* bias, T* y, double* mean, double* invstd, T* running_mean,
                  T* running_var, double factor, bool relu, int64_t rows, int64_t c, double eps, int requested) {
  const int threads = rows * c < pyns::kParallelElements ? 1 : pyns::thread_count(requested);
  const Segments seg(rows, c);
  const int64_t stride = pyns::padded_row(c);
  std::vector<double> partials(static_cast<size_t>(stride) * threads, 0.0);
  std::vector<T> mean_t(c), scale(c), shift(c), mean_l, scale_l, shift_l;  // per channel, and tiled (_l)
  std::vector<double> var(c);
  int teams = 1;
  (void)threads;  // used only by the OpenMP pragma
#ifdef PYNS_WITH_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const int tid = pyns::thread_id();
    std::vector<T> run(static_cast<size_t>(seg.lanes));
    int64_t first, last;
    pyns::split_range(seg.count, pyns::team_size(), tid, first, last);
    double* mine = partials.data() + tid * stride;
    segment_sums<T>(x, nullptr, mine, run.data(), seg, first, last);
#ifdef PYNS_WITH_OPENMP
#pragma omp barrier
#pragma omp single
#endif
    {
      teams = pyns::team_size();
      reduce_partials(partials, stride, teams, c, mean);
      for (int64_t ch = 0; ch < c; ++ch) {
        mean[ch] /= static_cast<double>(rows);
        mean_t[ch] = static_cast<T>(mean[ch]);
      }
      mean_l = tiled(mean_t.data(), seg);
      std::fill(partials.begin(), partials.end(), 0.0);
    }  // implicit barrier
    segment_sums<T>(x, mean_l.data(), mine, run.data(), seg, first, last);
#ifdef PYNS_WITH_OPENMP
#pragma omp barrier
#pragma omp single
#endif
    {
      reduce_partials(partials, stride, teams, c, var.data());
      // The running variance is unbiased, as torch keeps it: rows / (rows - 1) times the batch's.
      const double unbias = rows > 1 ? static_cast<double>(rows) / static_cast<double>(rows - 1) : 1.0;
      for (int64_t ch = 0; ch < c; ++ch) {
        var[ch] /= static_cast<double>(rows);
        invstd[ch] = 1.0 / std::sqrt(var[ch] + eps);
        if (running_mean)
          running_mean[ch] = static_cast<T>((1.0 - factor) * running_mean[ch] + factor * mean[ch]);
        if (running_var)
          running_var[ch] = static_cast<T>((1.0 - factor) * running_var[ch] + factor * var[ch] * unbias);
      }
      normalize_coefficients<T>(invstd, weight, bias, c, scale.data(), shift.data());
      scale_l = tiled(scale.data(), seg);
      shift_l = tiled(shift.data(), seg);
    }  // implicit barrier
    segment_normalize<T>(x, mean_l.data(), scale_l.data(), shift_l.data(), y, relu, seg, first, last);
  }
}

template <class T>
void backward_rows(const T* dy, const T* x, const double* mean, const double* invstd, const T* weight,
                   const T* bias, bool relu, T* dx, T* grad_weight, T* grad_bias, int64_t rows, int64_t c,
                   int requested) {
  const int threads = rows * c < pyns::kParallelElements ? 1 : pyns::thread_count(requested);
  const Segments seg(rows, c);
  const int64_t stride = pyns::padded_row(c);
  std::vector<double> partial_dy(static_cast<size_t>(stride) * threads, 0.0);
  std::vector<double> partial_dot(static_cast<size_t>(stride) * threads, 0.0);
  std::vector<T> mean_t(c), a(c), b(c), k(c), a_l, b_l, k_l;  // per channel, and tiled (_l)
  std::vector<double> sum_dy(c), dot(c);
  for (int64_t ch = 0; ch < c; ++ch) mean_t[ch] = static_cast<T>(mean[ch]);
  const std::vector<T> mean_l = tiled(mean_t.data(), seg);
  // The fused ReLU's mask, as the forward had it.
  std::vector<T> scale(relu ? c : 0), shift(relu ? c : 0), scale_l, shift_l;
  if (relu) {
    normalize_coefficients<T>(invstd, weight, bias, c, scale.data(), shift.data());
    scale_l = tiled(scale.data(), seg);
    shift_l = tiled(shift.data(), seg);
  }
  const T* scale_p = relu ? scale_l.data() : nullptr;
  const T* shift_p = relu ? shift_l.data() : nullptr;
  (void)threads;  // used only by the OpenMP pragma
#ifdef PYNS_WITH_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const int tid = pyns::thread_id();
    std::vector<T> run_dy(static_cast<size_t>(seg.lanes)), run_dot(static_cast<size_t>(seg.lanes));
    int64_t first, last;
    pyns::split_range(seg.count, pyns::team_size(), tid, first, last);
    segment_grad_sums<T>(dy, x, mean_l.data(), scale_p, shift_p, partial_dy.data() + tid * stride,
                         partial_dot.data() + tid * stride, run_dy.data(), run_dot.data(), seg, first, last);
#ifdef PYNS_WITH_OPENMP
#pragma omp barrier
#pragma omp single
#endif
    {
      const int teams = pyns::team_size();
      reduce_partials(partial_dy, stride, teams, c, sum_dy.data());
      reduce_partials(partial_dot, stride, teams, c, dot.data());
      const double n = static_cast<double>(rows);
      for (int64_t ch = 0; ch < c; ++ch) {
        const double w = weight ? static_cast<double>(weight[ch]) : 1.0;
        const double gain = w * invstd[ch];
        a[ch] = static_cast<T>(gain);
        b[ch] = static_cast<T>(-gain * invstd[ch] * invstd[ch] * dot[ch] / n);
        k[ch] = static_cast<T>(-gain * sum_dy[ch] / n);
        if (grad_weight) grad_weight[ch] = static_cast<T>(dot[ch] * invstd[ch]);
        if (grad_bias) grad_bias[ch] = static_cast<T>(sum_dy[ch]);
      }
      a_l = tiled(a.data(), seg);
      b_l = tiled(b.data(), seg);
      k_l = tiled(k.data(), seg);
    }  // implicit barrier
    if (dx)
      segment_input_grad<T>(dy, x, a_l.data(), mean_l.data(), b_l.data(), k_l.data(), scale_p, shift_p, dx, seg,
                            first, last);
  }
}

void check_shape(uintptr_t x, int64_t rows, int64_t c, int dtype, int threads, const char* what) {
  if (!x) throw std::invalid_argument(std::string(what) + ": the input pointer is null");
  if (rows < 1 || c < 1)
    throw std::invalid_argument(std::string(what) + ": expected rows >= 1 and C >= 1, got rows=" +
                                std::to_string(rows) + ", C=" + std::to_string(c));
  if (c > INT64_MAX / rows) throw std::invalid_argument(std::string(what) + ": rows * C overflows 64 bits");
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument(std::string(what) + ": dtype code must be 0 (float32) or 1 (float64), got " +
                                std::to_string(dtype));
  if (threads < 0 || threads > 1024)
    throw std::invalid_argument(std::string(what) + ": threads must be in [0, 1024], got " +
                                std::to_string(threads));
}

template <class T>
const T* ptr(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}
template <class T>
T* mut(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void batchnorm_forward_rows(uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t y, uintptr_t save_mean,
                            uintptr_t save_invstd, uintptr_t running_mean, uintptr_t running_var, double factor,
                            bool relu, int64_t rows, int64_t c, double eps, int dtype, int threads) {
  check_shape(x, rows, c, dtype, threads, "batchnorm forward");
  if (!y || !save_mean || !save_invstd) throw std::invalid_argument("batchnorm forward: an output pointer is null");
  if (!(eps >= 0.0)) throw std::invalid_argument("batchnorm forward: eps must be >= 0");
  if (!(factor >= 0.0 && factor <= 1.0)) throw std::invalid_argument("batchnorm forward: factor must be in [0, 1]");
  py::gil_scoped_release no_gil;
  auto* m = mut<double>(save_mean);
  auto* s = mut<double>(save_invstd);
  if (dtype == kFloat32)
    forward_rows<float>(ptr<float>(x), ptr<float>(weight), ptr<float>(bias), mut<float>(y), m, s,
                        mut<float>(running_mean), mut<float>(running_var), factor, relu, rows, c, eps, threads);
  else
    forward_rows<double>(ptr<double>(x), ptr<double>(weight), ptr<double>(bias), mut<double>(y), m, s,
                         mut<double>(running_mean), mut<double>(running_var), factor, relu, rows, c, eps, threads);
}

void batchnorm_backward_rows(uintptr_t dy, uintptr_t x, uintptr_t save_mean, uintptr_t save_invstd,
                             uintptr_t weight, uintptr_t bias, bool relu, uintptr_t dx, uintptr_t grad_weight,
                             uintptr_t grad_bias, int64_t rows, int64_t c, int dtype, int threads) {
  check_shape(x, rows, c, dtype, threads, "batchnorm backward");
  if (!dy || !save_mean || !save_invstd) throw std::invalid_argument("batchnorm backward: a required pointer is null");
  py::gil_scoped_release no_gil;
  const auto* m = ptr<double>(save_mean);
  const auto* s = ptr<double>(save_invstd);
  if (dtype == kFloat32)
    backward_rows<float>(ptr<float>(dy), ptr<float>(x), m, s, ptr<float>(weight), ptr<float>(bias), relu,
                         mut<float>(dx), mut<float>(grad_weight), mut<float>(grad_bias), rows, c, threads);
  else
    backward_rows<double>(ptr<double>(dy), ptr<double>(x), m, s, ptr<double>(weight), ptr<double>(bias), relu,
                          mut<double>(dx), mut<double>(grad_weight), mut<double>(grad_bias), rows, c, threads);
}

}  // namespace

void register_batchnorm(py::module_& m) {
  m.def("batchnorm_forward_rows", &batchnorm_forward_rows, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("y"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("running_mean"),
        py::arg("running_var"), py::arg("factor"), py::arg("relu"), py::arg("rows"), py::arg("c"), py::arg("eps"),
        py::arg("dtype"), py::arg("threads") = 0,
        "Training-mode BatchNorm forward on memory [rows][C]. Pointers are data_ptr() integers; x, weight, "
        "bias, y, running_mean and running_var share the dtype (0 float32, 1 float64); weight and bias may "
        "be 0 (1 and 0), the running buffers 0 (not updated; otherwise running = (1 - factor) * running + "
        "factor * batch, the variance unbiased). relu: y = max(y, 0) (a ReLU fused in). save_mean and "
        "save_invstd are float64 [C] outputs for the backward. threads 0 = OpenMP default.");
  m.def("batchnorm_backward_rows", &batchnorm_backward_rows, py::arg("dy"), py::arg("x"), py::arg("save_mean"),
        py::arg("save_invstd"), py::arg("weight"), py::arg("bias"), py::arg("relu"), py::arg("dx"),
        py::arg("grad_weight"), py::arg("grad_bias"), py::arg("rows"), py::arg("c"), py::arg("dtype"),
        py::arg("threads") = 0,
        "Training-mode BatchNorm backward on memory [rows][C]; dx, grad_weight and grad_bias (x's dtype) "
        "may each be 0 (not wanted). save_mean and save_invstd are the forward's; weight and bias (0: 1 and "
        "0) its parameters; relu: the forward fused a ReLU, whose mask is recomputed from x.");
}
