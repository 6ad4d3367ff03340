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

template <__nv_fp8_interpretation_t kFormat>
__device__ __forceinline__ void quantize_group(const float (&x)[kQuantGroup], float scale, fp8_byte (&q)[kQuantGroup]) {
#pragma unroll
  for (int k = 0; k < kQuantGroup; k += 2) {
    const __nv_fp8x2_storage_t pair =
        __nv_cvt_float2_to_fp8x2(make_float2(x[k] * scale, x[k + 1] * scale), __NV_SATFINITE, kFormat);
    q[k] = static_cast<fp8_byte>(pair & 0xFFu);  // low byte holds the first element
    q[k + 1] = static_cast<fp8_byte>(pair >> 8);
  }
}

// Within a tile, thread t owns row t/4 and columns 16*(t%4) .. +16 when loading, and row t/4 of the
// transposed tile when storing.
__device__ __forceinline__ int tile_row() { return threadIdx.x / (kTile / kQuantGroup); }
__device__ __forceinline__ int tile_col() { return threadIdx.x % (kTile / kQuantGroup) * kQuantGroup; }

// Parks this thread's 16 quantized bytes in the tile (before a barrier).
__device__ __forceinline__ void park_in_tile(Tile& tile, const fp8_byte (&q)[kQuantGroup]) {
  const int lr = tile_row(), lc = tile_col();
#pragma unroll
  for (int k = 0; k < kQuantGroup; k += 4) {
    const std::uint32_t word = q[k] | q[k + 1] << 8 | q[k + 2] << 16 | static_cast<std::uint32_t>(q[k + 3]) << 24;
    *reinterpret_cast<std::uint32_t*>(&tile[lr][lc + k]) = word;
  }
}

// After the barrier: 16 consecutive tile rows of this thread's column, i.e. 16 bytes of a transposed row.
__device__ __forceinline__ void column_from_tile(const Tile& tile, fp8_byte (&column)[kQuantGroup]) {
  const int lr = tile_row(), lc = tile_col();
#pragma unroll
  for (int k = 0; k < kQuantGroup; ++k) column[k] = tile[lc + k][lr];
}

}  // namespace llmq::kernels::fp8
