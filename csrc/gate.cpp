// Fused backward of the NeuralScale pruning gate y = x * z[c] (SPEC §5 "Gate").
//
// One pass over the activation computes
//   grad_input[i] = grad_out[i] * z[c(i)]                       (skipped when no grad is wanted)
//   g[c]          = sum over batch and space of grad_out * x     (= dE/dz_c)
// and, when asked, importance[c] += g[c]^2 and ++batches. Nothing the size of the activation is
// allocated: the only scratch is a row or two of C running sums per thread.
//
// The core never sees a torch tensor (SPEC §2): Python checks shape, strides and dtype and hands over
// data_ptr() values as integers, so one wheel serves every torch version.
//
// Precision: products and sums of float32 / bfloat16 / float16 inputs are formed in float32 over short
// runs (at most kFloatRun terms) and those partial sums are added in float64; float64 inputs stay
// float64 throughout. grad_input is rounded once, to nearest-even, exactly as eager `grad * z` rounds.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"
#ifdef PYNS_WITH_CUDA
#include "cuda/gate_cuda.h"
#endif

namespace py = pybind11;

namespace {

using pyns::split_range;
using pyns::team_size;
using pyns::thread_count;
using pyns::thread_id;

// Codes shared with pyns/gate.py (_DTYPE_CODES, _LAYOUT_*).
enum DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };
// kPlanes: memory [N][C][HW] (NCHW contiguous). kRows: memory [N*HW][C] (channels_last, or 2-D [N, C]).
enum Layout : int { kPlanes = 0, kRows = 1 };

// Longest run summed in float32 before it is flushed into a float64 total: 512 terms keep the float32
// rounding error near 512 * 2^-24 ≈ 3e-5 relative in the worst case while the flush costs nothing.
constexpr int64_t kFloatRun = 512;
// Rows folded into one float32 partial row in the rows layout, for the same reason.
constexpr int64_t kRowRun = 64;

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Storage types: how one element is loaded to and stored from its compute type. Written branch-free
// where possible so that the inner loops vectorise.
struct F32 {
  using storage = float;
  using compute = float;
  static inline float load(float v) { return v; }
  static inline float store(float v) { return v; }
};

struct F64 {
  using storage = double;
  using compute = double;
  static inline double load(double v) { return v; }
  static inline double store(double v) { return v; }
};

struct BF16 {
  using storage = uint16_t;
  using compute = float;
  static inline float load(uint16_t v) { return bits_float(static_cast<uint32_t>(v) << 16); }
  static inline uint16_t store(float f) {
    const uint32_t u = float_bits(f);
    // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit, then truncate.
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    // NaN must stay NaN (the rounding add could carry it into infinity): the canonical quiet NaN,
    // as torch's scalar conversion writes.
    const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
    return static_cast<uint16_t>(is_nan ? 0x7fc0u : rounded);
  }
};

struct F16 {
  using storage = uint16_t;
  using compute = float;
  // Both conversions select with all-ones/all-zero masks rather than `?:`, which GCC would turn into
  // a branch and leave the loop scalar (8x slower with SSE2).
  static inline float load(uint16_t h) {
    const uint32_t bits = h;
    const uint32_t sign = (bits & 0x8000u) << 16;
    const uint32_t magnitude = bits & 0x7fffu;
    // Shifting exponent+mantissa into float position and scaling by 2^112 (the exponent-bias gap
    // 127 - 15) converts normals and subnormals alike; infinities and NaNs get the float exponent.
    const uint32_t finite = float_bits(bits_float(magnitude << 13) * bits_float((127u + 112u) << 23));
    const uint32_t special = (magnitude << 13) | 0x7f800000u;
    const uint32_t is_special = 0u - static_cast<uint32_t>(magnitude >= 0x7c00u);
    return bits_float(sign | (finite & ~is_special) | (special & is_special));
  }
  static inline uint16_t store(float f) {
    // Round to nearest even (after F. Giesen's "float_to_half_fast3_rtne"); all three cases are
    // computed and one is selected.
    uint32_t u = float_bits(f);
    const uint32_t sign = u & 0x80000000u;
    u ^= sign;
    const int32_t magnitude = static_cast<int32_t>(u);  // sign cleared: signed compares are exact
    // |f| >= 2^16 overflows to infinity; NaN becomes the quiet NaN 0x7e00.
    const uint32_t is_huge = 0u - static_cast<uint32_t>(magnitude >= int32_t{(127 + 16) << 23});
    const uint32_t is_nan = 0u - static_cast<uint32_t>(magnitude > int32_t{0x7f800000});
    const uint32_t huge = 0x7c00u | (is_nan & 0x0200u);
    // |f| < 2^-14 is subnormal or zero in half precision: adding 0.5, whose float ulp (2^-24) is the
    // half subnormal step, lets the FPU round; the low mantissa bits are then the half pattern.
    const uint32_t is_tiny = 0u - static_cast<uint32_t>(magnitude < int32_t{113 << 23});
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const uint32_t tiny = float_bits(bits_float(u) + bits_float(magic)) - magic;
    // Otherwise rebias the exponent by 15 - 127 (0xc8000000 modulo 2^32) and round the 13 dropped
    // mantissa bits to even.
    const uint32_t normal = (u + 0xc8000fffu + ((u >> 13) & 1u)) >> 13;
    const uint32_t out = (huge & is_huge) | (tiny & is_tiny) | (normal & ~(is_huge | is_tiny));
    return static_cast<uint16_t>(out | (sign >> 16));
  }
};

// Planes [first, last) of memory [N][C][HW]; plane p is channel p % C. Adds each plane's sum into
// partial[channel].
template <class S>
PYNS_KERNEL_CLONES void planes_range(const typename S::storage* grad, const typename S::storage* x,
                                     const typename S::compute* z, typename S::storage* grad_in,
                                     double* partial, int64_t c, int64_t hw, int64_t first,
                                     int64_t last) {
  using A = typename S::compute;
  for (int64_t p = first; p < last; ++p) {
    const int64_t ch = p % c;
    const A zc = z[ch];
    const typename S::storage* gp = grad + p * hw;
    const typename S::storage* xp = x + p * hw;
    typename S::storage* op = grad_in ? grad_in + p * hw : nullptr;
    double plane_sum = 0.0;
    for (int64_t start = 0; start < hw; start += kFloatRun) {
      const int64_t stop = std::min(hw, start + kFloatRun);
      A run = 0;
      if (op) {
#pragma omp simd reduction(+ : run)
        for (int64_t i = start; i < stop; ++i) {
          const A gv = S::load(gp[i]);
          op[i] = S::store(gv * zc);
          run += gv * S::load(xp[i]);
        }
      } else {
#pragma omp simd reduction(+ : run)
        for (int64_t i = start; i < stop; ++i) run += S::load(gp[i]) * S::load(xp[i]);
      }
      plane_sum += static_cast<double>(run);
    }
    partial[ch] += plane_sum;
  }
}

// Rows [first, last) of memory [R][C]. The channel loop is innermost and unit-stride, so it
// vectorises across channels; rows are folded kRowRun at a time into the float row `run` (C
// elements), which is then flushed into partial.
template <class S>
PYNS_KERNEL_CLONES void rows_range(const typename S::storage* grad, const typename S::storage* x,
                                   const typename S::compute* z, typename S::storage* grad_in,
                                   double* partial, typename S::compute* run, int64_t c,
                                   int64_t first, int64_t last) {
  using A = typename S::compute;
  for (int64_t block = first; block < last; block += kRowRun) {
    const int64_t block_end = std::min(last, block + kRowRun);
    std::fill(run, run + c, A(0));
    for (int64_t r = block; r < block_end; ++r) {
      const typename S::storage* gr = grad + r * c;
      const typename S::storage* xr = x + r * c;
      if (grad_in) {
        typename S::storage* orow = grad_in + r * c;
#pragma omp simd
        for (int64_t ch = 0; ch < c; ++ch) {
          const A gv = S::load(gr[ch]);
          orow[ch] = S::store(gv * z[ch]);
          run[ch] += gv * S::load(xr[ch]);
        }
      } else {
#pragma omp simd
        for (int64_t ch = 0; ch < c; ++ch) run[ch] += S::load(gr[ch]) * S::load(xr[ch]);
      }
    }
    for (int64_t ch = 0; ch < c; ++ch) partial[ch] += static_cast<double>(run[ch]);
  }
}

// Memory [N][C][HW]. Threads take contiguous ranges of the N*C planes, so each streams through
// memory linearly and any C (even C < threads) keeps every thread busy; each plane's sum goes into the
// thread's own row of C partials.
template <class S>
void backward_planes(const typename S::storage* grad, const typename S::storage* x,
                     const typename S::compute* z, typename S::storage* grad_in, double* partials,
                     int64_t stride, int64_t n, int64_t c, int64_t hw, int threads) {
  (void)threads;  // used only by the OpenMP pragma
#ifdef PYNS_WITH_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const int tid = thread_id();
    int64_t first, last;
    split_range(n * c, team_size(), tid, first, last);
    planes_range<S>(grad, x, z, grad_in, partials + tid * stride, c, hw, first, last);
  }
}

// Memory [R][C] with R = N*HW rows. Threads take contiguous row ranges, each with its own float row
// of C running sums and its own row of C partials.
template <class S>
void backward_rows(const typename S::storage* grad, const typename S::storage* x,
                   const typename S::compute* z, typename S::storage* grad_in, double* partials,
                   int64_t stride, int64_t rows, int64_t c, int threads) {
  (void)threads;  // used only by the OpenMP pragma
#ifdef PYNS_WITH_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const int tid = thread_id();
    std::vector<typename S::compute> run(static_cast<size_t>(c));
    int64_t first, last;
    split_range(rows, team_size(), tid, first, last);
    rows_range<S>(grad, x, z, grad_in, partials + tid * stride, run.data(), c, first, last);
  }
}

template <class S>
void backward_cpu(uintptr_t grad, uintptr_t x, uintptr_t z, uintptr_t grad_in, uintptr_t g,
                  uintptr_t importance, uintptr_t batches, int64_t n, int64_t c, int64_t hw,
                  int layout, int requested_threads) {
  using T = typename S::storage;
  using A = typename S::compute;
  const auto* gp = reinterpret_cast<const T*>(grad);
  const auto* xp = reinterpret_cast<const T*>(x);
  const auto* zp = reinterpret_cast<const A*>(z);
  auto* op = reinterpret_cast<T*>(grad_in);
  auto* out_g = reinterpret_cast<double*>(g);

  const int64_t elements = n * c * hw;
  const int threads = elements < pyns::kParallelElements ? 1 : thread_count(requested_threads);
  const int64_t stride = pyns::padded_row(c);
  std::vector<double> partials(static_cast<size_t>(stride) * threads, 0.0);

  // HW == 1 makes the planes layout one element per plane; the same memory read as rows is faster.
  if (layout == kRows || hw == 1)
    backward_rows<S>(gp, xp, zp, op, partials.data(), stride, n * hw, c, threads);
  else
    backward_planes<S>(gp, xp, zp, op, partials.data(), stride, n, c, hw, threads);

  auto* imp = reinterpret_cast<double*>(importance);
  for (int64_t ch = 0; ch < c; ++ch) {
    double total = 0.0;
    for (int t = 0; t < threads; ++t) total += partials[t * stride + ch];
    out_g[ch] = total;
    if (imp) imp[ch] += total * total;
  }
  if (batches) ++*reinterpret_cast<int64_t*>(batches);
}

void check_arguments(uintptr_t grad, uintptr_t x, uintptr_t z, uintptr_t g, int64_t n, int64_t c,
                     int64_t hw, int layout, int dtype) {
  if (!grad || !x || !z || !g) throw std::invalid_argument("gate backward: a required pointer is null");
  if (n < 0 || c < 1 || hw < 1)
    throw std::invalid_argument("gate backward: expected N >= 0, C >= 1 and HW >= 1, got N=" +
                                std::to_string(n) + ", C=" + std::to_string(c) +
                                ", HW=" + std::to_string(hw));
  if (layout != kPlanes && layout != kRows)
    throw std::invalid_argument("gate backward: layout must be 0 (NCHW) or 1 (rows), got " +
                                std::to_string(layout));
  if (dtype < kFloat32 || dtype > kFloat16)
    throw std::invalid_argument("gate backward: dtype code must be 0..3, got " + std::to_string(dtype));
  // N * C * HW elements must be addressable: no int64 overflow in any index the kernels form.
  if (n > 0 && (c > INT64_MAX / n || hw > INT64_MAX / (n * c)))
    throw std::invalid_argument("gate backward: N * C * HW overflows 64 bits");
}

// The pointers a kernel dereferences must not be null, and the count must be a size.
void check_buffers(uintptr_t src, uintptr_t dst, int64_t count, const char* what) {
  if (count < 0) throw std::invalid_argument(std::string(what) + ": count must be >= 0, got " + std::to_string(count));
  if (count > 0 && (!src || !dst)) throw std::invalid_argument(std::string(what) + ": a pointer is null");
}

// A thread request the OpenMP runtime can honour (0 = its default).
void check_threads(int threads) {
  if (threads < 0 || threads > 1024)
    throw std::invalid_argument("gate backward: threads must be in [0, 1024], got " + std::to_string(threads));
}

void gate_backward_cpu(uintptr_t grad, uintptr_t x, uintptr_t z, uintptr_t grad_in, uintptr_t g,
                       uintptr_t importance, uintptr_t batches, int64_t n, int64_t c, int64_t hw,
                       int layout, int dtype, int threads) {
  check_arguments(grad, x, z, g, n, c, hw, layout, dtype);
  check_threads(threads);
  py::gil_scoped_release no_gil;
  switch (dtype) {
    case kFloat32:
      backward_cpu<F32>(grad, x, z, grad_in, g, importance, batches, n, c, hw, layout, threads);
      break;
    case kFloat64:
      backward_cpu<F64>(grad, x, z, grad_in, g, importance, batches, n, c, hw, layout, threads);
      break;
    case kBFloat16:
      backward_cpu<BF16>(grad, x, z, grad_in, g, importance, batches, n, c, hw, layout, threads);
      break;
    default:
      backward_cpu<F16>(grad, x, z, grad_in, g, importance, batches, n, c, hw, layout, threads);
      break;
  }
}

// Round-trips float32 values through the half-precision stores above; lets the tests check the
// conversions bit for bit against torch's.
void round_trip_cpu(uintptr_t src, uintptr_t dst, int64_t count, int dtype) {
  if (dtype != kBFloat16 && dtype != kFloat16)
    throw std::invalid_argument("round trip: dtype code must be 2 (bfloat16) or 3 (float16)");
  check_buffers(src, dst, count, "round trip");
  const auto* in = reinterpret_cast<const float*>(src);
  auto* out = reinterpret_cast<uint16_t*>(dst);
  if (dtype == kBFloat16) {
    for (int64_t i = 0; i < count; ++i) out[i] = BF16::store(in[i]);
  } else if (dtype == kFloat16) {
    for (int64_t i = 0; i < count; ++i) out[i] = F16::store(in[i]);
  } else {
    throw std::invalid_argument("round trip: dtype code must be 2 (bfloat16) or 3 (float16)");
  }
}

void widen_cpu(uintptr_t src, uintptr_t dst, int64_t count, int dtype) {
  if (dtype != kBFloat16 && dtype != kFloat16)
    throw std::invalid_argument("widen: dtype code must be 2 (bfloat16) or 3 (float16)");
  check_buffers(src, dst, count, "widen");
  const auto* in = reinterpret_cast<const uint16_t*>(src);
  auto* out = reinterpret_cast<float*>(dst);
  if (dtype == kBFloat16) {
    for (int64_t i = 0; i < count; ++i) out[i] = BF16::load(in[i]);
  } else if (dtype == kFloat16) {
    for (int64_t i = 0; i < count; ++i) out[i] = F16::load(in[i]);
  } else {
    throw std::invalid_argument("widen: dtype code must be 2 (bfloat16) or 3 (float16)");
  }
}

}  // namespace

void register_gate(py::module_& m) {
  m.def("gate_backward_cpu", &gate_backward_cpu, py::arg("grad"), py::arg("x"), py::arg("z"),
        py::arg("grad_input"), py::arg("g"), py::arg("importance"), py::arg("batches"), py::arg("n"),
        py::arg("c"), py::arg("hw"), py::arg("layout"), py::arg("dtype"), py::arg("threads") = 0,
        "Fused gate backward on host memory. Pointers are data_ptr() integers (0 = not wanted for "
        "grad_input, importance and batches). grad, x and grad_input share the dtype and layout; z is "
        "float32 (float64 when dtype is float64); g and importance are float64 [C]; batches is one "
        "int64. layout 0 = [N][C][HW], 1 = [N*HW][C]; dtype 0 f32, 1 f64, 2 bf16, 3 f16; threads 0 = "
        "OpenMP default.");
  m.def("gate_float_to_half_bits", &round_trip_cpu, py::arg("src"), py::arg("dst"), py::arg("count"),
        py::arg("dtype"), "Test hook: float32 -> bfloat16/float16 bits with the kernel's rounding.");
  m.def("gate_half_bits_to_float", &widen_cpu, py::arg("src"), py::arg("dst"), py::arg("count"),
        py::arg("dtype"), "Test hook: bfloat16/float16 bits -> float32 with the kernel's conversion.");
#ifdef PYNS_WITH_CUDA
  m.def(
      "gate_backward_cuda",
      [](uintptr_t grad, uintptr_t x, uintptr_t z, uintptr_t grad_in, uintptr_t g, uintptr_t importance,
         uintptr_t batches, int64_t n, int64_t c, int64_t hw, int layout, int dtype, uintptr_t stream) {
        check_arguments(grad, x, z, g, n, c, hw, layout, dtype);
        std::string error;
        {
          py::gil_scoped_release no_gil;
          error = pyns_gate_backward_cuda(grad, x, z, grad_in, g, importance, batches, n, c, hw, layout,
                                          dtype, stream);
        }
        if (!error.empty()) throw std::runtime_error("gate backward (CUDA): " + error);
      },
      py::arg("grad"), py::arg("x"), py::arg("z"), py::arg("grad_input"), py::arg("g"),
      py::arg("importance"), py::arg("batches"), py::arg("n"), py::arg("c"), py::arg("hw"),
      py::arg("layout"), py::arg("dtype"), py::arg("stream"),
      "Fused gate backward on device memory, same contract as gate_backward_cpu; enqueued on the CUDA "
      "stream whose handle is `stream` (torch.cuda.current_stream().cuda_stream).");
#endif
}
