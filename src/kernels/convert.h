// Element type conversions between fp32 and bf16 (math in convert.cu). The abs-max reduction for
// FP8 scales is kernels::abs_max in quantize.h.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace llmq::kernels {

// out[i] = in[i]: fp32 -> bf16 rounds to nearest (ties to even); bf16 -> fp32 is exact.
void convert(nv_bfloat16* out, const float* in, std::size_t n, cudaStream_t stream);
void convert(float* out, const nv_bfloat16* in, std::size_t n, cudaStream_t stream);

// fp32 -> bf16 with stochastic rounding (E[out[i]] == in[i]); random bits from (i, seed) only.
// n must not exceed 2^32.
void convert_stochastic(nv_bfloat16* out, const float* in, std::size_t n, std::uint32_t seed, cudaStream_t stream);

}  // namespace llmq::kernels
