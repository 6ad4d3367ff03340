// Deterministic random and constant fills for parameter initialisation.
//
// Normal fill (Box-Muller on a counter-based hash): elements 2k and 2k+1 form pair k with
//   u1 = (floor(hash_u32(2k,   seed) / 2^8) + 1) / 2^24        in (0, 1]
//   u2 =  floor(hash_u32(2k+1, seed) / 2^8)      / 2^24        in [0, 1)
//   r  = sqrt(-2 ln u1)
//   out[2k]   = stddev * r * cos(2 pi u2)
//   out[2k+1] = stddev * r * sin(2 pi u2)
// computed in fp32, then stored (bf16: rounded to nearest). Every element depends only on
// (index, seed): not on the grid, the block size or the dtype. |z| <= sqrt(48 ln 2) = 5.77.
//
// Constant fill: out[i] = value.
#include "kernels/init.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 4096;  // grid-stride beyond this; results do not depend on it

// The two normal values of pair k, already multiplied by stddev (shared by every output dtype).
__device__ __forceinline__ void normal_pair(std::size_t pair, std::uint32_t seed, float stddev, float& z0, float& z1) {
  const auto first = static_cast<std::uint32_t>(2 * pair);
  const float u1 = static_cast<float>((hash_u32(first, seed) >> 8) + 1) * 0x1p-24f;
  const float u2 = static_cast<float>(hash_u32(first + 1, seed) >> 8) * 0x1p-24f;
  const float r = sqrtf(-2.f * logf(u1)) * stddev;
  float s, c;
  sincospif(2.f * u2, &s, &c);
  z0 = r * c;
  z1 = r * s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) normal_kernel(T* out, std::size_t n, float stddev, std::uint32_t seed) {
  const std::size_t pairs = (n + 1) / 2;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t k = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < pairs; k += stride) {
    float z0, z1;
    normal_pair(k, seed, stddev, z0, z1);
    out[2 * k] = from_float<T>(z0);
    if (2 * k + 1 < n) out[2 * k + 1] = from_float<T>(z1);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) constant_kernel(T* out, std::size_t n, T value) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = value;
  }
}

int grid_for(std::size_t work_items) {
  return static_cast<int>(std::min<std::size_t>((work_items + kThreads - 1) / kThreads, kMaxBlocks));
}

template <typename T>
void launch_normal(T* out, std::size_t n, float stddev, std::uint32_t seed, cudaStream_t stream) {
  LLMQ_REQUIRE(std::isfinite(stddev) && stddev >= 0.f, "init_normal: standard deviation {} must be finite and >= 0",
               stddev);
  LLMQ_REQUIRE(n <= (std::size_t{1} << 32),
               "init_normal: {} elements exceed 2^32 (the hash counter is 32-bit); initialise in slices with "
               "different seeds",
               n);
  if (n == 0) return;
  LLMQ_REQUIRE(out != nullptr, "init_normal: null output pointer for {} elements", n);
  normal_kernel<T><<<grid_for((n + 1) / 2), kThreads, 0, stream>>>(out, n, stddev, seed);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_constant(T* out, std::size_t n, float value, cudaStream_t stream) {
  if (n == 0) return;
  LLMQ_REQUIRE(out != nullptr, "fill_constant: null output pointer for {} elements", n);
  T stored_value;
  if constexpr (std::is_same_v<T, float>) {
    stored_value = value;
  } else {
    stored_value = __float2bfloat16_rn(value);
  }
  constant_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(out, n, stored_value);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void init_normal(float* out, std::size_t n, float stddev, std::uint32_t seed, cudaStream_t stream) {
  launch_normal(out, n, stddev, seed, stream);
}
void init_normal(nv_bfloat16* out, std::size_t n, float stddev, std::uint32_t seed, cudaStream_t stream) {
  launch_normal(out, n, stddev, seed, stream);
}
void fill_constant(float* out, std::size_t n, float value, cudaStream_t stream) {
  launch_constant(out, n, value, stream);
}
void fill_constant(nv_bfloat16* out, std::size_t n, float value, cudaStream_t stream) {
  launch_constant(out, n, value, stream);
}

}  // namespace llmq::kernels
