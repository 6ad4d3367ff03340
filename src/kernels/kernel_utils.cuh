// Device helpers shared by the kernel files: element conversion, 16-byte vector access,
// warp/block reductions, abs-max folding, stochastic rounding, and the host-side launch helper
// resident_blocks. Included only from .cu files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/errors.h"

namespace llmq::kernels {

inline constexpr int kWarpSize = 32;

__host__ __device__ constexpr int ceil_div(long a, long b) { return static_cast<int>((a + b - 1) / b); }

// ---- element conversion -----------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// ---- 16-byte vectors ----------------------------------------------------------------------------
// Host side: may a kernel use 16-byte vector accesses at p?
inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Vec<T> holds 16 bytes of T (4 floats, 8 bf16). Loads/stores require 16-byte aligned addresses.
template <typename T>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
  __device__ __forceinline__ T& operator[](int i) { return v[i]; }
  __device__ __forceinline__ const T& operator[](int i) const { return v[i]; }
};

template <typename T>
__device__ __forceinline__ Vec<T> load_vec(const T* p) {
  Vec<T> out;
  *reinterpret_cast<int4*>(&out) = *reinterpret_cast<const int4*>(p);
  return out;
}
// Streaming load: data read once, keep it out of L1 (and low priority in L2).
template <typename T>
__device__ __forceinline__ Vec<T> load_vec_stream(const T* p) {
  Vec<T> out;
  *reinterpret_cast<int4*>(&out) = __ldcs(reinterpret_cast<const int4*>(p));
  return out;
}
template <typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T>& v) {
  *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&v);
}

// Loads kGroup consecutive elements starting at i0 as kGroup / Vec<T>::kSize raw vectors (zeros past n),
// with 16-byte vector loads when `vectorized` (base pointer 16-byte aligned) and the group is whole.
// Keeping the raw vectors (and converting element by element where they are used) takes half the
// registers of a float array for bf16. kStreaming asks for the read-once cache hint; it is applied only
// where the group is one 16-byte vector, so that a warp's load instruction covers whole 32-byte sectors
// (a thread's two 16-byte halves of one sector in two instructions would each fetch the sector from L2
// again). kWhole: the caller guarantees a whole, aligned group (the bounds check and the element path
// compile away).
template <int kGroup, bool kStreaming = false, bool kWhole = false, typename T>
__device__ __forceinline__ void load_raw_group(const T* p, std::size_t i0, std::size_t n, bool vectorized,
                                               Vec<T> (&v)[kGroup / Vec<T>::kSize]) {
  constexpr int kVec = Vec<T>::kSize;
  static_assert(kGroup % kVec == 0, "kGroup must be a multiple of the vector width");
  constexpr bool kStream = kStreaming && kGroup == kVec;
  if (kWhole || (vectorized && i0 + kGroup <= n)) {
#pragma unroll
    for (int part = 0; part < kGroup / kVec; ++part)
      v[part] = kStream ? load_vec_stream(p + i0 + part * kVec) : load_vec(p + i0 + part * kVec);
  } else {
#pragma unroll
    for (int k = 0; k < kGroup; ++k) v[k / kVec][k % kVec] = i0 + k < n ? p[i0 + k] : from_float<T>(0.f);
  }
}

// The same as floats.
template <int kGroup, bool kStreaming = false, typename T>
__device__ __forceinline__ void load_group(const T* p, std::size_t i0, std::size_t n, bool vectorized, float (&x)[kGroup]) {
  constexpr int kVec = Vec<T>::kSize;
  Vec<T> v[kGroup / kVec];
  load_raw_group<kGroup, kStreaming>(p, i0, n, vectorized, v);
#pragma unroll
  for (int k = 0; k < kGroup; ++k) x[k] = to_float(v[k / kVec][k % kVec]);
}

template <int kGroup, typename T>
__device__ __forceinline__ void store_group(T* p, std::size_t i0, std::size_t n, bool vectorized, const T (&x)[kGroup]) {
  constexpr int kVec = Vec<T>::kSize;
  if (vectorized && i0 + kGroup <= n) {
#pragma unroll
    for (int part = 0; part < kGroup / kVec; ++part) {
      Vec<T> v;
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[k] = x[part * kVec + k];
      store_vec(p + i0 + part * kVec, v);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      if (i0 + k < n) p[i0 + k] = x[k];
    }
  }
}

// ---- reductions ---------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ int warp_sum(int x) { return __reduce_add_sync(0xffffffffu, x); }
// Sum over the whole block (float or int); every thread gets the result. `scratch` needs 32 elements
// of shared memory. Contains __syncthreads(): all threads of the block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T x, T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  x = warp_sum(x);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : T(0);
  return warp_sum(x);
}
__device__ __forceinline__ float block_max(float x, float* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(x);
}

// Folds |x| of the calling thread into the per-tensor abs-max at `absmax` (one float in global
// memory, zeroed by the caller before the producing kernels run): warp max, then one atomic per
// warp. Non-negative floats order like their bit patterns, so an unsigned atomicMax is exact; a NaN
// compares above +inf and so propagates (the FP8 scale then shows the problem instead of hiding it).
// All 32 lanes of the warp must call it (pass 0 for lanes without data).
__device__ __forceinline__ void atomic_max_abs(float* absmax, float x) {
  // Reduce the bit patterns (not fmaxf, which drops NaN). __reduce_max_sync needs sm_80+.
  const unsigned int bits = __reduce_max_sync(0xffffffffu, __float_as_uint(fabsf(x)));
  if (threadIdx.x % kWarpSize == 0) atomicMax(reinterpret_cast<unsigned int*>(absmax), bits);
}

// Running max of |v| kept as the bit pattern: non-negative floats order like their bits and a NaN sorts
// above inf, the order atomic_max_abs uses (fmaxf would drop a NaN). A thread folds its elements with
// this and hands __uint_as_float(bits) to atomic_max_abs once at the end.
__device__ __forceinline__ unsigned int max_abs_bits(unsigned int bits, float v) {
  return max(bits, __float_as_uint(fabsf(v)));
}

// Blocks of `threads` threads that fit on the current GPU at once (one wave), for grid-stride kernels
// with a fused abs-max: every thread loops about equally often and only the resident warps flush an
// atomic. Host side.
template <typename Kernel>
int resident_blocks(Kernel kernel, int threads) {
  int device = 0, sms = 0, per_sm = 0;
  LLMQ_CUDA_CHECK(cudaGetDevice(&device));
  LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  LLMQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
  return std::max(1, sms * per_sm);
}

// ---- random numbers and stochastic rounding ------------------------------------------------------
// Counter-based hash (no state): the same (index, seed) always gives the same 32 random bits,
// so results do not depend on the launch configuration.
__host__ __device__ __forceinline__ std::uint32_t hash_u32(std::uint32_t index, std::uint32_t seed) {
  std::uint32_t h = index * 0x9E3779B1u ^ (seed + 0x7F4A7C15u);
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  h += seed * 0x27D4EB2Fu;
  h ^= h >> 15;
  h *= 0x2C1B3C6Du;
  h ^= h >> 12;
  return h;
}

// Rounds x to bf16 up or down with probability proportional to the distance, so that
// E[result] == x: small optimizer updates survive on average instead of being rounded away.
__device__ __forceinline__ __nv_bfloat16 stochastic_round_bf16(float x, std::uint32_t random_bits) {
  std::uint32_t bits = __float_as_uint(x);
  if ((bits & 0x7F800000u) == 0x7F800000u) return __float2bfloat16_rn(x);  // inf / nan unchanged
  bits += random_bits & 0xFFFFu;  // add noise below the bf16 mantissa, then truncate
  bits &= 0xFFFF0000u;
  return __float2bfloat16_rz(__uint_as_float(bits));
}

}  // namespace llmq::kernels
