// Global gradient norm over many tensors and the gradient-clipping scale (math in global_norm.cu).
// Usage per step: global_norm_squares(tensor_i, slot i) for every gradient tensor, then
// global_norm_finish once. Nothing is copied to the host: norm and clip scale stay on the device.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace llmq::kernels {

// Number of fp32 partials each tensor slot occupies in the partials buffer.
inline constexpr int kGlobalNormBlocksPerTensor = 128;

// Size of the partials buffer for `num_slots` tensors.
std::size_t global_norm_partials_bytes(int num_slots);

// Writes the sum of squares of grad[0, n) as kGlobalNormBlocksPerTensor partials into
// partials[slot * kGlobalNormBlocksPerTensor, ...). Every partial of the slot is written (n == 0 gives zeros).
void global_norm_squares(const float* grad, std::size_t n, float* partials, int slot, cudaStream_t stream);
void global_norm_squares(const nv_bfloat16* grad, std::size_t n, float* partials, int slot, cudaStream_t stream);

// Sums the partials of slots [0, num_slots) in a fixed order; writes *norm = sqrt(sum) and
// *clip_scale = (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1.
// A non-finite norm is written as is (NaN / inf, visible in the log) with clip_scale 1.
void global_norm_finish(const float* partials, int num_slots, float max_norm, float* norm, float* clip_scale,
                        cudaStream_t stream);

}  // namespace llmq::kernels
