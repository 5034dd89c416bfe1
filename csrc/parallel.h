// Threading and vectorisation helpers shared by the CPU kernels (gate.cpp, batchnorm.cpp).
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef PYNS_WITH_OPENMP
#include <omp.h>
#endif

namespace pyns {

// Per-thread partial rows are padded to a multiple of 8 doubles (64 bytes, one cache line) so that
// threads never write the same line.
constexpr int64_t kLineDoubles = 8;

// Below ~32K elements a parallel region costs more than it saves.
constexpr int64_t kParallelElements = 32768;

inline int thread_count(int requested) {
#ifdef PYNS_WITH_OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

inline int thread_id() {
#ifdef PYNS_WITH_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// The team actually granted, which can be smaller than asked for (e.g. 1 inside another parallel
// region); work is split by this, never by the request.
inline int team_size() {
#ifdef PYNS_WITH_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Splits [0, total) into `parts` near-equal contiguous ranges; returns range `index`.
inline void split_range(int64_t total, int parts, int index, int64_t& begin, int64_t& end) {
  const int64_t base = total / parts, extra = total % parts;
  begin = index * base + std::min<int64_t>(index, extra);
  end = begin + base + (index < extra ? 1 : 0);
}

// A per-thread row of C doubles padded to whole cache lines.
inline int64_t padded_row(int64_t c) { return (c + kLineDoubles - 1) / kLineDoubles * kLineDoubles; }

}  // namespace pyns

// The per-thread loops are built twice where GCC can dispatch at load time (ELF ifunc): with AVX2
// (8 floats per vector, 2-3x faster software half-precision conversions) and for the baseline x86-64
// the wheel targets. An ISA name, not "arch=haswell": the arch form matches Intel CPU models only and
// would leave AMD on the baseline. The OpenMP regions stay outside these functions so that every thread
// runs the selected clone. Building with -DPYNS_KERNEL_CLONES= (empty) keeps the baseline only.
#ifndef PYNS_KERNEL_CLONES
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PYNS_KERNEL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PYNS_KERNEL_CLONES
#endif
#endif
