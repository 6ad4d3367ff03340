// Deterministic parameter initialisation (math in init.cu): counter-based normal fills, so a tensor
// depends only on (seed, element index), and constant fills (ones for norm weights, zeros for biases).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace llmq::kernels {

// out[i] = stddev * z_i with z_i ~ N(0, 1) a function of (i, seed) only; the bf16 version is the
// round-to-nearest of the fp32 version for the same seed. n must not exceed 2^32.
void init_normal(float* out, std::size_t n, float stddev, std::uint32_t seed, cudaStream_t stream);
void init_normal(nv_bfloat16* out, std::size_t n, float stddev, std::uint32_t seed, cudaStream_t stream);

// out[i] = value (rounded to nearest for bf16).
void fill_constant(float* out, std::size_t n, float value, cudaStream_t stream);
void fill_constant(nv_bfloat16* out, std::size_t n, float value, cudaStream_t stream);

}  // namespace llmq::kernels
