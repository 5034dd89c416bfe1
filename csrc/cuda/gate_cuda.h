// Host-side entry point of the CUDA gate kernels. Plain integers only, so that gate.cpp can include
// this header without the CUDA toolkit's headers on its include path.
#pragma once

#include <cstdint>
#include <string>

// Enqueues the fused gate backward on `stream` (a cudaStream_t as an integer; 0 = legacy default
// stream). Same contract as gate_backward_cpu in gate.cpp: device pointers for grad, x, z, grad_input
// (0 = not wanted), g (float64 [C], overwritten), importance (float64 [C] or 0) and batches (one int64
// or 0); layout 0 = [N][C][HW], 1 = [N*HW][C]; dtype 0 f32, 1 f64, 2 bf16, 3 f16.
// Returns "" on success, else the CUDA error text. Does not synchronise.
std::string pyns_gate_backward_cuda(uintptr_t grad, uintptr_t x, uintptr_t z, uintptr_t grad_in,
                                    uintptr_t g, uintptr_t importance, uintptr_t batches, int64_t n,
                                    int64_t c, int64_t hw, int layout, int dtype, uintptr_t stream);
