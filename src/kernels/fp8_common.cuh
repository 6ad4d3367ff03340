// Device helpers shared by the FP8 quantization kernels (quantize.cu, swiglu_fp8.cu): the per-tensor
// scale from an abs-max, quantization of 16-element groups, and the 64 x 64 transpose tile.
// Included only from .cu files.
#pragma once
#include <cuda_fp8.h>

#include <cfloat>
#include <cstdint>

#include "kernels/kernel_utils.cuh"

namespace llmq::kernels::fp8 {

using fp8_byte = __nv_fp8_storage_t;  // one FP8 value as stored
constexpr int kQuantGroup = 16;       // elements per thread and step: 16 FP8 bytes = one 16-byte store
constexpr int kTile = 64;             // transpose tile edge
constexpr int kTileThreads = 256;     // one 16-element row chunk of the tile per thread
// Shared-memory row pitch in bytes of the transpose tile; the padding spreads the column reads over banks.
constexpr int kTilePitch = kTile + 4;
static_assert(kTile * (kTile / kQuantGroup) == kTileThreads, "one 16-element row chunk of the tile per thread");

using Tile = fp8_byte[kTile][kTilePitch];

// scale = F / amax, with the special cases of quantize.cu's header comment.
__device__ __forceinline__ float scale_from_abs_max(float absmax, float fp8_max) {
  if (!isfinite(absmax)) return __int_as_float(0x7fffffff);  // NaN
  if (absmax == 0.f) return 1.f;
  return fminf(fp8_max / absmax, FLT_MAX);
}

// 16 FP8 bytes of one group packed in four 32-bit words (element k is byte k % 4 of word k / 4):
// 4 registers where a byte array takes 16.
struct Fp8Group {
  std::uint32_t word[kQuantGroup / 4] = {};
  __device__ __forceinline__ fp8_byte byte(int k) const { return static_cast<fp8_byte>(word[k / 4] >> 8 * (k % 4)); }
};

// Elements k and k + 1 (k even) of the group: sat(rn(x * scale)) in one conversion instruction.
template <__nv_fp8_interpretation_t kFormat>
__device__ __forceinline__ void quantize_pair(Fp8Group& q, int k, float x0, float x1, float scale) {
  const __nv_fp8x2_storage_t pair = __nv_cvt_float2_to_fp8x2(make_float2(x0 * scale, x1 * scale), __NV_SATFINITE, kFormat);
  q.word[k / 4] |= static_cast<std::uint32_t>(pair) << 8 * (k % 4);  // the low byte holds the first element
}

template <__nv_fp8_interpretation_t kFormat>
__device__ __forceinline__ Fp8Group quantize_group(const float (&x)[kQuantGroup], float scale) {
  Fp8Group q;
#pragma unroll
  for (int k = 0; k < kQuantGroup; k += 2) quantize_pair<kFormat>(q, k, x[k], x[k + 1], scale);
  return q;
}

// Stores the group at p + i0: one 16-byte store when `vectorized` (p 16-byte aligned) and the group is
// whole, else byte by byte up to n. kWhole: the caller guarantees the first case.
template <bool kWhole = false>
__device__ __forceinline__ void store_fp8_group(fp8_byte* p, std::size_t i0, std::size_t n, bool vectorized,
                                                const Fp8Group& q) {
  if (kWhole || (vectorized && i0 + kQuantGroup <= n)) {
    *reinterpret_cast<uint4*>(p + i0) = make_uint4(q.word[0], q.word[1], q.word[2], q.word[3]);
  } else {
#pragma unroll
    for (int k = 0; k < kQuantGroup; ++k) {
      if (i0 + k < n) p[i0 + k] = q.byte(k);
    }
  }
}

// Within a tile, thread t owns row t/4 and columns 16*(t%4) .. +16 when loading, and row t/4 of the
// transposed tile when storing.
__device__ __forceinline__ int tile_row() { return threadIdx.x / (kTile / kQuantGroup); }
__device__ __forceinline__ int tile_col() { return threadIdx.x % (kTile / kQuantGroup) * kQuantGroup; }

// Parks this thread's 16 quantized bytes in the tile (before a barrier).
__device__ __forceinline__ void park_in_tile(Tile& tile, const Fp8Group& q) {
  const int lr = tile_row(), lc = tile_col();
#pragma unroll
  for (int k = 0; k < kQuantGroup / 4; ++k) *reinterpret_cast<std::uint32_t*>(&tile[lr][lc + 4 * k]) = q.word[k];
}

// After the barrier: 16 consecutive tile rows of this thread's column, i.e. 16 bytes of a transposed row.
__device__ __forceinline__ Fp8Group column_from_tile(const Tile& tile) {
  const int lr = tile_row(), lc = tile_col();
  Fp8Group column;
#pragma unroll
  for (int k = 0; k < kQuantGroup; ++k) column.word[k / 4] |= static_cast<std::uint32_t>(tile[lc + k][lr]) << 8 * (k % 4);
  return column;
}

}  // namespace llmq::kernels::fp8
