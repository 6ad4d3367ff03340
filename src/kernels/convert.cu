// Conversions between fp32 and bf16 (the abs-max reduction for FP8 scales lives in quantize.cu).
//
// convert:            bf16(x) = round-to-nearest-even(x)   fp32 -> bf16
//                     fp32(b) = b (exact)                   bf16 -> fp32
// convert_stochastic: bf16(x) = x rounded down or up to a neighbouring bf16 value with probability
//                     proportional to the distance, so E[bf16(x)] = x; random bits hash_u32(i, seed).
//
// Elements are processed in groups of 8: 16-byte vector accesses when every pointer is 16-byte
// aligned and the group is complete, element accesses otherwise.
#include "kernels/convert.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kGroup = 8;
constexpr int kMaxBlocks = 4096;  // grid-stride beyond this

enum class Rounding { Nearest, Stochastic };

template <typename TIn, typename TOut, Rounding kRounding>
__global__ void __launch_bounds__(kThreads)
    convert_kernel(TOut* out, const TIn* in, std::size_t n, std::uint32_t seed, bool vectorized) {
  const std::size_t groups = (n + kGroup - 1) / kGroup;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t g = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const std::size_t i0 = g * kGroup;
    float x[kGroup];
    load_group<kGroup, true>(in, i0, n, vectorized, x);
    TOut y[kGroup];
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      if constexpr (kRounding == Rounding::Stochastic) {
        static_assert(std::is_same_v<TOut, nv_bfloat16>);
        y[k] = stochastic_round_bf16(x[k], hash_u32(static_cast<std::uint32_t>(i0 + k), seed));
      } else {
        y[k] = from_float<TOut>(x[k]);
      }
    }
    store_group<kGroup>(out, i0, n, vectorized, y);
  }
}

int grid_for(std::size_t n) {
  const std::size_t groups = (n + kGroup - 1) / kGroup;
  return static_cast<int>(std::clamp<std::size_t>((groups + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

template <Rounding kRounding, typename TIn, typename TOut>
void launch_convert(TOut* out, const TIn* in, std::size_t n, std::uint32_t seed, cudaStream_t stream) {
  if (n == 0) return;
  LLMQ_REQUIRE(out && in, "convert: null input / output pointer for {} elements", n);
  const bool vectorized = aligned16(out) && aligned16(in);
  convert_kernel<TIn, TOut, kRounding><<<grid_for(n), kThreads, 0, stream>>>(out, in, n, seed, vectorized);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void convert(nv_bfloat16* out, const float* in, std::size_t n, cudaStream_t stream) {
  launch_convert<Rounding::Nearest>(out, in, n, 0, stream);
}
void convert(float* out, const nv_bfloat16* in, std::size_t n, cudaStream_t stream) {
  launch_convert<Rounding::Nearest>(out, in, n, 0, stream);
}
void convert_stochastic(nv_bfloat16* out, const float* in, std::size_t n, std::uint32_t seed, cudaStream_t stream) {
  LLMQ_REQUIRE(n <= (std::size_t{1} << 32),
               "convert_stochastic: {} elements exceed 2^32 (32-bit rounding counter); convert in slices", n);
  launch_convert<Rounding::Stochastic>(out, in, n, seed, stream);
}

}  // namespace llmq::kernels
