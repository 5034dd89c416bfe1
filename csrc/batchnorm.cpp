// Training-mode BatchNorm over rows: memory [R][C], R = N*H*W (channels_last activations, or [N, C]).
//
// Why pyns has its own: torch's CPU kernels for channels_last BatchNorm vectorise over C in whole
// vectors and fall far behind for the widths a pruned or scaled network has. On this machine (torch
// 2.13, 2 threads, 64x19x32x32 float32) the forward took 2.3 ms and the backward 9.0 ms against 0.55 and
// 0.67 ms at C = 16, while the same tensor in NCHW took 1.7 and 0.85 ms. Here the channel loop is
// innermost and unit stride for every C, so the compiler vectorises it with a masked tail.
//
//   forward:  mean, biased var (two passes: sum, then sum of (x - mean)^2), invstd = 1/sqrt(var + eps),
//             y = (x - mean) * (invstd * w) + b, or max(that, 0) with a ReLU fused in
//             (running_mean / running_var updated as torch does)
//   backward: (dy zeroed where a fused ReLU did not pass its input, the mask recomputed from x)
//             sum_dy, dot = sum dy * (x - mean); grad_w = dot * invstd, grad_b = sum_dy,
//             dx = w * invstd * (dy - sum_dy / R - (x - mean) * invstd^2 * dot / R)
//
// Sums are formed in the input dtype over runs of kRowRun rows and added in float64, in a fixed order
// (thread by thread), so a result depends only on the thread count. No torch here (SPEC §2): Python
// checks the tensors and passes data_ptr() integers.
#include <pybind11/pybind11.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"

namespace py = pybind11;

namespace {

// Codes shared with pyns/batchnorm.py (_DTYPE_CODES).
enum DType : int { kFloat32 = 0, kFloat64 = 1 };

// Rows folded into one partial row in the input dtype before it is flushed into float64: 64 terms keep
// a float32 partial within ~64 * 2^-24 ≈ 4e-6 relative, and the flush is 1/64 of the work.
constexpr int64_t kRowRun = 64;

// partial[ch] += sum over rows [first, last) of x[r][ch] (shift == nullptr), or of (x - shift[ch])^2.
template <class T>
PYNS_KERNEL_CLONES void row_sums(const T* x, const T* shift, double* partial, T* run, int64_t c,
                                 int64_t first, int64_t last) {
  for (int64_t block = first; block < last; block += kRowRun) {
    const int64_t block_end = std::min(last, block + kRowRun);
    std::fill(run, run + c, T(0));
    for (int64_t r = block; r < block_end; ++r) {
      const T* xr = x + r * c;
      if (shift) {
#pragma omp simd
        for (int64_t ch = 0; ch < c; ++ch) {
          const T d = xr[ch] - shift[ch];
          run[ch] += d * d;
        }
      } else {
#pragma omp simd
        for (int64_t ch = 0; ch < c; ++ch) run[ch] += xr[ch];
      }
    }
    for (int64_t ch = 0; ch < c; ++ch) partial[ch] += static_cast<double>(run[ch]);
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

// y[r][ch] = normalized(x), then max(y, 0) when `relu` (NaN stays NaN, as torch.relu keeps it).
template <class T>
PYNS_KERNEL_CLONES void row_normalize(const T* x, const T* mean, const T* scale, const T* shift, T* y, bool relu,
                                      int64_t c, int64_t first, int64_t last) {
  for (int64_t r = first; r < last; ++r) {
    const T* xr = x + r * c;
    T* yr = y + r * c;
    if (relu) {
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        const T v = normalized(xr[ch], mean[ch], scale[ch], shift[ch]);
        yr[ch] = v < T(0) ? T(0) : v;
      }
    } else {
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) yr[ch] = normalized(xr[ch], mean[ch], scale[ch], shift[ch]);
    }
  }
}

// dx[r][ch] = a[ch] * g + b[ch] * (x[r][ch] - mean[ch]) + k[ch], g the upstream gradient: dy, or dy through
// the fused ReLU when scale / shift are given. The test sits outside the channel loops, which GCC would
// otherwise leave scalar.
template <class T>
PYNS_KERNEL_CLONES void row_input_grad(const T* dy, const T* x, const T* a, const T* mean, const T* b, const T* k,
                                       const T* scale, const T* shift, T* dx, int64_t c, int64_t first,
                                       int64_t last) {
  for (int64_t r = first; r < last; ++r) {
    const T* gr = dy + r * c;
    const T* xr = x + r * c;
    T* orow = dx + r * c;
    if (scale) {
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        const T g = through_relu(gr[ch], normalized(xr[ch], mean[ch], scale[ch], shift[ch]));
        orow[ch] = a[ch] * g + b[ch] * (xr[ch] - mean[ch]) + k[ch];
      }
    } else {
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) orow[ch] = a[ch] * gr[ch] + b[ch] * (xr[ch] - mean[ch]) + k[ch];
    }
  }
}

// partial_dy[ch] += sum g, partial_dot[ch] += sum g * (x - mean[ch]) over rows [first, last), g the upstream
// gradient.
template <class T>
PYNS_KERNEL_CLONES void row_grad_sums(const T* dy, const T* x, const T* mean, const T* scale, const T* shift,
                                      double* partial_dy, double* partial_dot, T* run_dy, T* run_dot, int64_t c,
                                      int64_t first, int64_t last) {
  for (int64_t block = first; block < last; block += kRowRun) {
    const int64_t block_end = std::min(last, block + kRowRun);
    std::fill(run_dy, run_dy + c, T(0));
    std::fill(run_dot, run_dot + c, T(0));
    for (int64_t r = block; r < block_end; ++r) {
      const T* gr = dy + r * c;
      const T* xr = x + r * c;
      if (scale) {
#pragma omp simd
        for (int64_t ch = 0; ch < c; ++ch) {
          const T g = through_relu(gr[ch], normalized(xr[ch], mean[ch], scale[ch], shift[ch]));
          run_dy[ch] += g;
          run_dot[ch] += g * (xr[ch] - mean[ch]);
        }
      } else {
#pragma omp simd
        for (int64_t ch = 0; ch < c; ++ch) {
          run_dy[ch] += gr[ch];
          run_dot[ch] += gr[ch] * (xr[ch] - mean[ch]);
        }
      }
    }
    for (int64_t ch = 0; ch < c; ++ch) {
      partial_dy[ch] += static_cast<double>(run_dy[ch]);
      partial_dot[ch] += static_cast<double>(run_dot[ch]);
    }
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
  const int64_t stride = pyns::padded_row(c);
  std::vector<double> partials(static_cast<size_t>(stride) * threads, 0.0);
  std::vector<T> mean_t(c), scale(c), shift(c);
  std::vector<double> var(c);
  int teams = 1;
  (void)threads;  // used only by the OpenMP pragma
#ifdef PYNS_WITH_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const int tid = pyns::thread_id();
    std::vector<T> run(static_cast<size_t>(c));
    int64_t first, last;
    pyns::split_range(rows, pyns::team_size(), tid, first, last);
    double* mine = partials.data() + tid * stride;
    row_sums<T>(x, nullptr, mine, run.data(), c, first, last);
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
      std::fill(partials.begin(), partials.end(), 0.0);
    }  // implicit barrier
    row_sums<T>(x, mean_t.data(), mine, run.data(), c, first, last);
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
    }  // implicit barrier
    row_normalize<T>(x, mean_t.data(), scale.data(), shift.data(), y, relu, c, first, last);
  }
}

template <class T>
void backward_rows(const T* dy, const T* x, const double* mean, const double* invstd, const T* weight,
                   const T* bias, bool relu, T* dx, T* grad_weight, T* grad_bias, int64_t rows, int64_t c,
                   int requested) {
  const int threads = rows * c < pyns::kParallelElements ? 1 : pyns::thread_count(requested);
  const int64_t stride = pyns::padded_row(c);
  std::vector<double> partial_dy(static_cast<size_t>(stride) * threads, 0.0);
  std::vector<double> partial_dot(static_cast<size_t>(stride) * threads, 0.0);
  std::vector<T> mean_t(c), a(c), b(c), k(c);
  std::vector<double> sum_dy(c), dot(c);
  for (int64_t ch = 0; ch < c; ++ch) mean_t[ch] = static_cast<T>(mean[ch]);
  std::vector<T> scale(relu ? c : 0), shift(relu ? c : 0);  // the fused ReLU's mask, as the forward had it
  if (relu) normalize_coefficients<T>(invstd, weight, bias, c, scale.data(), shift.data());
  const T* scale_p = relu ? scale.data() : nullptr;
  const T* shift_p = relu ? shift.data() : nullptr;
  (void)threads;  // used only by the OpenMP pragma
#ifdef PYNS_WITH_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const int tid = pyns::thread_id();
    std::vector<T> run_dy(static_cast<size_t>(c)), run_dot(static_cast<size_t>(c));
    int64_t first, last;
    pyns::split_range(rows, pyns::team_size(), tid, first, last);
    row_grad_sums<T>(dy, x, mean_t.data(), scale_p, shift_p, partial_dy.data() + tid * stride,
                     partial_dot.data() + tid * stride,
                     run_dy.data(), run_dot.data(), c, first, last);
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
    }  // implicit barrier
    if (dx) row_input_grad<T>(dy, x, a.data(), mean_t.data(), b.data(), k.data(), scale_p, shift_p, dx, c, first, last);
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
