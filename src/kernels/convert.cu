// Conversions between fp32 and bf16, and the abs-max reduction used for FP8 scales.
//
// convert:            bf16(x) = round-to-nearest-even(x)   fp32 -> bf16
//                     fp32(b) = b (exact)                   bf16 -> fp32
// convert_stochastic: bf16(x) = x rounded down or up to a neighbouring bf16 value with probability
//                     proportional to the distance, so E[bf16(x)] = x; random bits hash_u32(i, seed).
// abs_max:            result = max_i |x_i|               (0 for an empty tensor)
//
// abs_max compares the bit patterns of |x| as unsigned integers: for non-negative floats this order
// is the numeric order, and NaN patterns sort above +inf, so a NaN anywhere yields NaN (visible in
// the FP8 scale) instead of being skipped as fmaxf would. Each block reduces its elements and does
// one integer atomicMax into the result (zeroed first on the stream); max is exact and
// order-independent, so the result is bit-reproducible.
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

__device__ __forceinline__ unsigned abs_bits(float x) { return __float_as_uint(x) & 0x7FFFFFFFu; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    abs_max_kernel(const T* in, std::size_t n, bool vectorized, unsigned* result_bits) {
  __shared__ unsigned warp_max[kWarpSize];
  const std::size_t groups = (n + kGroup - 1) / kGroup;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  unsigned m = 0;
  for (std::size_t g = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    float x[kGroup];
    load_group<kGroup, true>(in, g * kGroup, n, vectorized, x);  // padding elements read as 0: harmless for a max of |x|
#pragma unroll
    for (int k = 0; k < kGroup; ++k) m = max(m, abs_bits(x[k]));
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  m = __reduce_max_sync(0xffffffffu, m);
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  if (warp == 0) {
    m = lane < kThreads / kWarpSize ? warp_max[lane] : 0u;
    m = __reduce_max_sync(0xffffffffu, m);
    if (lane == 0) atomicMax(result_bits, m);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

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

template <typename T>
void launch_abs_max(const T* in, std::size_t n, float* result, cudaStream_t stream) {
  LLMQ_REQUIRE(result != nullptr, "abs_max: null result pointer");
  LLMQ_REQUIRE(n == 0 || in != nullptr, "abs_max: null input pointer for {} elements", n);
  LLMQ_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(float), stream));
  if (n == 0) return;
  abs_max_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(in, n, aligned16(in), reinterpret_cast<unsigned*>(result));
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

void abs_max(const float* in, std::size_t n, float* result, cudaStream_t stream) {
  launch_abs_max(in, n, result, stream);
}
void abs_max(const nv_bfloat16* in, std::size_t n, float* result, cudaStream_t stream) {
  launch_abs_max(in, n, result, stream);
}

}  // namespace llmq::kernels
