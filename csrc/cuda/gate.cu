// CUDA version of the fused gate backward (see gate.cpp for the contract and the precision notes).
//
// Per element: grad_input = grad * z[c]; per channel: g[c] = sum grad * x, accumulated by each thread
// in the compute type (float32 for float32/bfloat16/float16, float64 for float64), reduced over the
// block and added into g[c] in float64 with one atomicAdd per block (sm_60+). A second, C-sized
// kernel then adds g[c]^2 into the importance accumulator and counts the minibatch. No scratch
// memory is allocated: g itself is the only reduction target. The float64 atomics add in no fixed
// order, so g can differ in its last bits from run to run (grad_input is exact and reproducible).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "gate_cuda.h"

namespace {

// Codes shared with gate.cpp and pyns/gate.py.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };
enum Layout : int { kPlanes = 0, kRows = 1 };

// 256 threads = 8 warps: enough to hide memory latency, small enough for several blocks per SM.
constexpr int kThreads = 256;
// The rows kernel's block is kTile channels (one warp, coalesced across a row) by kRowLanes rows.
constexpr int kTile = 32;
constexpr int kRowLanes = kThreads / kTile;
// Aim for this many blocks per SM so that every SM stays busy while blocks finish unevenly.
constexpr int kBlocksPerSm = 4;
// gridDim.y and gridDim.z are limited to 65535.
constexpr int64_t kMaxGridY = 65535;

template <class T>
struct Elem;
template <>
struct Elem<float> {
  using compute = float;
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <>
struct Elem<double> {
  using compute = double;
  __device__ static double load(double v) { return v; }
  __device__ static double store(double v) { return v; }
};
template <>
struct Elem<__nv_bfloat16> {
  using compute = float;
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  // Round to nearest even, as eager torch rounds `grad * z`.
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Elem<__half> {
  using compute = float;
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};

// Sum of `value` over the block; the result is valid in thread 0. blockDim.x * blockDim.y == kThreads.
template <class A>
__device__ A block_sum(A value) {
  __shared__ A warp_sums[kThreads / 32];
  const int lane_id = (threadIdx.y * blockDim.x + threadIdx.x);
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  if (lane_id % 32 == 0) warp_sums[lane_id / 32] = value;
  __syncthreads();
  A total = 0;
  if (lane_id == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  return total;
}

// Memory [N][C][HW]. blockIdx.x = channel; blockIdx.y = one slice of that channel's N*HW elements.
// I is the index type: 32-bit where the tensor allows, because 64-bit division is slow on GPUs.
template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    planes_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                  const typename Elem<T>::compute* __restrict__ z, T* __restrict__ grad_in,
                  double* __restrict__ g, I c, I hw, I per_channel, I per_block) {
  using A = typename Elem<T>::compute;
  const I ch = blockIdx.x;
  const I begin = static_cast<I>(blockIdx.y) * per_block;
  const I end = min(per_channel, begin + per_block);
  const A zc = z[ch];
  A acc = 0;
  for (I j = begin + threadIdx.x; j < end; j += kThreads) {
    const I sample = j / hw;  // j = sample * HW + position
    const I at = (sample * c + ch) * hw + (j - sample * hw);
    const A gv = Elem<T>::load(grad[at]);
    if (grad_in) grad_in[at] = Elem<T>::store(gv * zc);
    acc += gv * Elem<T>::load(x[at]);
  }
  const A total = block_sum(acc);
  if (threadIdx.x == 0) atomicAdd(g + ch, static_cast<double>(total));
}

// Memory [R][C]. blockIdx.x = a tile of kTile channels (threadIdx.x); blockIdx.y = a slice of rows,
// walked kRowLanes at a time (threadIdx.y).
template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                const typename Elem<T>::compute* __restrict__ z, T* __restrict__ grad_in,
                double* __restrict__ g, I rows, I c, I per_block) {
  using A = typename Elem<T>::compute;
  __shared__ A partial[kRowLanes][kTile + 1];  // +1 column: no bank conflicts on the column sums
  const I ch = static_cast<I>(blockIdx.x) * kTile + threadIdx.x;
  A acc = 0;
  if (ch < c) {
    const A zc = z[ch];
    const I begin = static_cast<I>(blockIdx.y) * per_block;
    const I end = min(rows, begin + per_block);
    for (I r = begin + threadIdx.y; r < end; r += kRowLanes) {
      const I at = r * c + ch;
      const A gv = Elem<T>::load(grad[at]);
      if (grad_in) grad_in[at] = Elem<T>::store(gv * zc);
      acc += gv * Elem<T>::load(x[at]);
    }
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    A total = 0;
    for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
    atomicAdd(g + ch, static_cast<double>(total));
  }
}

__global__ void accumulate_kernel(const double* __restrict__ g, double* __restrict__ importance,
                                  int64_t* __restrict__ batches, int64_t c) {
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (importance && ch < c) importance[ch] += g[ch] * g[ch];
  if (batches && ch == 0) *batches += 1;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T, class I>
void launch_main(const void* grad, const void* x, const void* z, void* grad_in, double* g, int64_t n,
                 int64_t c, int64_t hw, int layout, int target_blocks, cudaStream_t stream) {
  using A = typename Elem<T>::compute;
  const auto* gp = static_cast<const T*>(grad);
  const auto* xp = static_cast<const T*>(x);
  const auto* zp = static_cast<const A*>(z);
  auto* op = static_cast<T*>(grad_in);
  if (layout == kRows || hw == 1) {
    const int64_t rows = n * hw;
    const int64_t tiles = ceil_div(c, kTile);
    const int64_t slices =
        std::min({std::max<int64_t>(1, ceil_div(target_blocks, tiles)), ceil_div(rows, kRowLanes), kMaxGridY});
    const int64_t per_block = ceil_div(rows, slices);
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(ceil_div(rows, per_block)));
    rows_kernel<T, I><<<grid, dim3(kTile, kRowLanes), 0, stream>>>(
        gp, xp, zp, op, g, static_cast<I>(rows), static_cast<I>(c), static_cast<I>(per_block));
  } else {
    const int64_t per_channel = n * hw;
    const int64_t slices = std::min(
        {std::max<int64_t>(1, ceil_div(target_blocks, c)), ceil_div(per_channel, kThreads), kMaxGridY});
    const int64_t per_block = ceil_div(per_channel, slices);
    const dim3 grid(static_cast<unsigned>(c), static_cast<unsigned>(ceil_div(per_channel, per_block)));
    planes_kernel<T, I><<<grid, kThreads, 0, stream>>>(gp, xp, zp, op, g, static_cast<I>(c),
                                                        static_cast<I>(hw), static_cast<I>(per_channel),
                                                        static_cast<I>(per_block));
  }
}

template <class T>
void launch_typed(const void* grad, const void* x, const void* z, void* grad_in, double* g, int64_t n,
                  int64_t c, int64_t hw, int layout, int target_blocks, cudaStream_t stream) {
  // 32-bit indices while every index (and index + one block's stride) stays below 2^31.
  const bool small = n * c * hw + 2 * static_cast<int64_t>(kThreads) * c < (int64_t(1) << 31);
  if (small)
    launch_main<T, uint32_t>(grad, x, z, grad_in, g, n, c, hw, layout, target_blocks, stream);
  else
    launch_main<T, uint64_t>(grad, x, z, grad_in, g, n, c, hw, layout, target_blocks, stream);
}

}  // namespace

std::string pyns_gate_backward_cuda(uintptr_t grad, uintptr_t x, uintptr_t z, uintptr_t grad_in,
                                    uintptr_t g, uintptr_t importance, uintptr_t batches, int64_t n,
                                    int64_t c, int64_t hw, int layout, int dtype, uintptr_t stream) {
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  auto* gp = reinterpret_cast<double*>(g);
  cudaError_t err = cudaMemsetAsync(gp, 0, static_cast<size_t>(c) * sizeof(double), s);
  if (err != cudaSuccess) return cudaGetErrorString(err);

  if (n > 0) {
    int device = 0, sms = 0;
    if ((err = cudaGetDevice(&device)) != cudaSuccess) return cudaGetErrorString(err);
    if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess)
      return cudaGetErrorString(err);
    const int target_blocks = std::max(1, sms) * kBlocksPerSm;
    const auto* gr = reinterpret_cast<const void*>(grad);
    const auto* xp = reinterpret_cast<const void*>(x);
    const auto* zp = reinterpret_cast<const void*>(z);
    auto* op = reinterpret_cast<void*>(grad_in);
    switch (dtype) {
      case kFloat32:
        launch_typed<float>(gr, xp, zp, op, gp, n, c, hw, layout, target_blocks, s);
        break;
      case kFloat64:
        launch_typed<double>(gr, xp, zp, op, gp, n, c, hw, layout, target_blocks, s);
        break;
      case kBFloat16:
        launch_typed<__nv_bfloat16>(gr, xp, zp, op, gp, n, c, hw, layout, target_blocks, s);
        break;
      default:
        launch_typed<__half>(gr, xp, zp, op, gp, n, c, hw, layout, target_blocks, s);
        break;
    }
    if ((err = cudaGetLastError()) != cudaSuccess) return cudaGetErrorString(err);
  }

  if (importance || batches) {
    const unsigned blocks = static_cast<unsigned>(ceil_div(c, kThreads));
    accumulate_kernel<<<blocks, kThreads, 0, s>>>(gp, reinterpret_cast<double*>(importance),
                                                   reinterpret_cast<int64_t*>(batches), c);
    if ((err = cudaGetLastError()) != cudaSuccess) return cudaGetErrorString(err);
  }
  return "";
}
