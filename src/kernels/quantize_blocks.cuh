// The FP8 block-scaled quantization kernel, behind quantize_blocks.h and swiglu_fp8.cu's fused
// SwiGLU -> block FP8 kernels (which only supply another Source). Per block B of 128 elements
// (Row128) or 128 x 128 elements (Square128), with F = fp8_max(dtype):
//   amax_B = max |x_i| over B;  scale_B = F / amax_B (the special cases of quantize.cu);
//   q_i = sat_F(rn(x_i * scale_B));  scale_inv_B = 1 / scale_B.
// One block of 256 threads per 128 x 128 tile, one read of the source:
//   1. rows: thread t loads 8 consecutive elements of row (t + 256 i) / 16, i = 0..7 (16 threads
//      per 256-byte row, coalesced) into registers and into a shared-memory copy of the tile; a
//      shuffle over those 16 threads gives the row's abs-max (Row128), a block reduction the tile's
//      (Square128); q's 8 bytes go out with one 8-byte store (a half-warp writes one 128-byte row).
//   2. columns (only for q_t): warp w takes tile column 32 (w / 2) + lane and rows 64 (w % 2) .. +64
//      from shared memory (a warp reads 32 consecutive columns of one row: no bank conflicts); for
//      Row128 the two halves' abs-maxes meet in shared memory, then each thread writes its 64 bytes
//      of a q_t row as four 16-byte groups.
// The tile's pitch (136 bf16 = 68 words) makes phase 1's 16-byte shared stores of 8 threads cover
// 32 distinct banks.
#pragma once
#include <cuda_fp8.h>

#include "kernels/fp8_common.cuh"
#include "kernels/kernel_utils.cuh"
#include "core/errors.h"
#include "kernels/quantize.h"
#include "kernels/quantize_blocks.h"

namespace llmq::kernels::blocks {

using fp8::fp8_byte;
using fp8::scale_from_abs_max;
constexpr int kBlock = 128;                   // block edge (elements)
constexpr int kThreads = 256;
constexpr int kRowChunk = 8;                  // elements per thread and row step: one 16-byte bf16 load
constexpr int kChunksPerRow = kBlock / kRowChunk;              // 16 threads per tile row
constexpr int kRowSteps = kBlock * kChunksPerRow / kThreads;   // 8 row steps of 16 rows each
constexpr int kPitch = kBlock + 8;            // shared tile row pitch in bf16
constexpr int kColumnRows = kBlock / 2;       // rows of one column per thread in phase 2
static_assert(kRowSteps * kThreads == kBlock * kChunksPerRow, "the row steps cover the tile");

struct BlockVectorization {
  bool store_q;  // q 8-byte aligned and cols % 8 == 0
  bool store_t;  // q_t 16-byte aligned and rows % 16 == 0
};

// A chunk of zeros: what sources yield past the tensor's edge (zeros change no abs-max).
__device__ __forceinline__ void zero_chunk(Vec<nv_bfloat16> (&chunk)[1]) {
#pragma unroll
  for (int k = 0; k < kRowChunk; ++k) chunk[0][k] = __float2bfloat16(0.f);
}

// The plain source: 8 elements of x [rows, cols] from (row, col) on, zeros past the row's end.
struct TensorSource {
  const nv_bfloat16* x;
  int cols;
  bool vectorized;  // x 16-byte aligned and cols % 8 == 0: each chunk is one 16-byte load
  __device__ __forceinline__ void load(int row, int col, Vec<nv_bfloat16> (&chunk)[1]) const {
    load_raw_group<kRowChunk>(x + static_cast<std::size_t>(row) * cols, col, cols, vectorized, chunk);
  }
  // The block column that grid column y covers (a source whose tiles share inputs may reorder them).
  __device__ __forceinline__ int column_block(int y) const { return y; }
};

struct BlockOutputs {
  fp8_byte* q;
  float* q_scale_inv;
  ScaleLayout q_layout;
  fp8_byte* q_t;
  float* q_t_scale_inv;
  ScaleLayout q_t_layout;
};

__device__ __forceinline__ std::int64_t scale_index(ScaleLayout l, std::int64_t i, std::int64_t j) {
  return i * l.i_stride + j * l.j_stride;
}

// Max of the bit patterns of |x| (NaN above inf, as kernel_utils' max_abs_bits) over 8 bf16.
__device__ __forceinline__ unsigned int chunk_abs_max_bits(const Vec<nv_bfloat16>& v) {
  unsigned int bits = 0;
#pragma unroll
  for (int k = 0; k < kRowChunk; ++k) bits = max_abs_bits(bits, __bfloat162float(v[k]));
  return bits;
}

// Max over the 16 threads of a half-warp (the threads sharing a tile row in phase 1).
__device__ __forceinline__ unsigned int half_warp_max(unsigned int bits) {
#pragma unroll
  for (int offset = kChunksPerRow / 2; offset > 0; offset /= 2) bits = max(bits, __shfl_xor_sync(0xffffffffu, bits, offset));
  return bits;
}

template <__nv_fp8_interpretation_t kFormat>
__device__ __forceinline__ uint2 quantize_chunk(const Vec<nv_bfloat16>& v, float scale) {
  fp8::Fp8Group g;  // the first 8 of its 16 bytes
#pragma unroll
  for (int k = 0; k < kRowChunk; k += 2)
    fp8::quantize_pair<kFormat>(g, k, __bfloat162float(v[k]), __bfloat162float(v[k + 1]), scale);
  return make_uint2(g.word[0], g.word[1]);
}

// Source: where the bf16 values come from, computed or read (`load(row, col, chunk)`: 8 values of
// row `row` from column `col` on, zeros past column `cols`), and which block column each grid
// column covers (`column_block(y)`).
template <__nv_fp8_interpretation_t kFormat, bool kSquare, typename Source>
__global__ void __launch_bounds__(kThreads)
    quantize_blocks_kernel(BlockOutputs out, Source src, int rows, int cols, float fp8_max, BlockVectorization vec) {
  __shared__ alignas(16) nv_bfloat16 tile[kBlock][kPitch];
  __shared__ unsigned int partial_bits[2][kBlock];  // phase 2: the two row halves of each column
  __shared__ unsigned int warp_bits[kThreads / kWarpSize];
  const int cb = src.column_block(blockIdx.y);
  const int r0 = blockIdx.x * kBlock, c0 = cb * kBlock;
  const int tr = threadIdx.x / kChunksPerRow, tc = threadIdx.x % kChunksPerRow * kRowChunk;

  // Phase 1: load the tile (zeros outside the tensor: they change no abs-max), row abs-maxes.
  Vec<nv_bfloat16> chunk[kRowSteps][1];  // [1]: load_raw_group's group of one vector
  unsigned int row_bits[kRowSteps];
#pragma unroll
  for (int s = 0; s < kRowSteps; ++s) {
    const int lr = tr + s * (kThreads / kChunksPerRow);
    if (r0 + lr < rows)
      src.load(r0 + lr, c0 + tc, chunk[s]);
    else
      zero_chunk(chunk[s]);
    *reinterpret_cast<int4*>(&tile[lr][tc]) = *reinterpret_cast<const int4*>(&chunk[s][0]);
    row_bits[s] = half_warp_max(chunk_abs_max_bits(chunk[s][0]));
  }
  float tile_scale = 0.f;
  if constexpr (kSquare) {
    unsigned int bits = 0;
#pragma unroll
    for (int s = 0; s < kRowSteps; ++s) bits = max(bits, row_bits[s]);
    bits = __reduce_max_sync(0xffffffffu, bits);
    if (threadIdx.x % kWarpSize == 0) warp_bits[threadIdx.x / kWarpSize] = bits;
    __syncthreads();
    bits = 0;
#pragma unroll
    for (int w = 0; w < kThreads / kWarpSize; ++w) bits = max(bits, warp_bits[w]);
    tile_scale = scale_from_abs_max(__uint_as_float(bits), fp8_max);
    if (threadIdx.x == 0) {
      const float inv = 1.f / tile_scale;
      if (out.q) out.q_scale_inv[scale_index(out.q_layout, blockIdx.x, cb)] = inv;
      if (out.q_t) out.q_t_scale_inv[scale_index(out.q_t_layout, cb, blockIdx.x)] = inv;
    }
  }
  if (out.q) {
#pragma unroll
    for (int s = 0; s < kRowSteps; ++s) {
      const int r = r0 + tr + s * (kThreads / kChunksPerRow);
      if (r >= rows) continue;
      const float scale = kSquare ? tile_scale : scale_from_abs_max(__uint_as_float(row_bits[s]), fp8_max);
      if (!kSquare && tc == 0) out.q_scale_inv[scale_index(out.q_layout, r, cb)] = 1.f / scale;
      const uint2 bytes = quantize_chunk<kFormat>(chunk[s][0], scale);
      fp8_byte* dst = out.q + static_cast<std::size_t>(r) * cols + c0 + tc;
      if (vec.store_q && c0 + tc + kRowChunk <= cols) {
        *reinterpret_cast<uint2*>(dst) = bytes;
      } else {
        for (int k = 0; k < kRowChunk && c0 + tc + k < cols; ++k)
          dst[k] = static_cast<fp8_byte>((k < 4 ? bytes.x : bytes.y) >> 8 * (k % 4));
      }
    }
  }
  if (!out.q_t) return;  // uniform over the grid

  // Phase 2: columns of the tile, 64 rows per thread.
  __syncthreads();
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int lc = warp / 2 * kWarpSize + lane, half = warp % 2;
  float scale = tile_scale;
  if constexpr (!kSquare) {
    unsigned int bits = 0;
    for (int k = 0; k < kColumnRows; ++k) bits = max_abs_bits(bits, __bfloat162float(tile[half * kColumnRows + k][lc]));
    partial_bits[half][lc] = bits;
    __syncthreads();
    scale = scale_from_abs_max(__uint_as_float(max(partial_bits[0][lc], partial_bits[1][lc])), fp8_max);
    if (half == 0 && c0 + lc < cols) out.q_t_scale_inv[scale_index(out.q_t_layout, c0 + lc, blockIdx.x)] = 1.f / scale;
  }
  if (c0 + lc >= cols) return;
  fp8_byte* dst = out.q_t + static_cast<std::size_t>(c0 + lc) * rows;
#pragma unroll
  for (int g = 0; g < kColumnRows / fp8::kQuantGroup; ++g) {
    const int lr = half * kColumnRows + g * fp8::kQuantGroup;
    fp8::Fp8Group group;
#pragma unroll
    for (int k = 0; k < fp8::kQuantGroup; k += 2)
      fp8::quantize_pair<kFormat>(group, k, __bfloat162float(tile[lr + k][lc]), __bfloat162float(tile[lr + k + 1][lc]),
                                  scale);
    if (r0 + lr < rows) fp8::store_fp8_group(dst, r0 + lr, rows, vec.store_t, group);
  }
}

__host__ inline bool aligned8(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 8 == 0; }

// Throws llmq::Error for outputs that do not fit (defined in quantize_blocks.cu); `op` names the caller.
void check_block_outputs(const char* op, const void* q, const float* q_scale_inv, const void* q_t,
                         const float* q_t_scale_inv, int rows, int cols);

template <__nv_fp8_interpretation_t kFormat, typename Source>
void launch_kernel(const BlockOutputs& out, Fp8Blocks blocks, const Source& src, int rows, int cols,
                   cudaStream_t stream) {
  const BlockVectorization vec{.store_q = aligned8(out.q) && cols % 8 == 0,
                               .store_t = aligned16(out.q_t) && rows % 16 == 0};
  const dim3 grid(ceil_div(rows, kBlock), ceil_div(cols, kBlock));
  const float fmax = fp8_max(kFormat == __NV_E4M3 ? DType::E4M3 : DType::E5M2);
  if (blocks == Fp8Blocks::Square128)
    quantize_blocks_kernel<kFormat, true><<<grid, kThreads, 0, stream>>>(out, src, rows, cols, fmax, vec);
  else
    quantize_blocks_kernel<kFormat, false><<<grid, kThreads, 0, stream>>>(out, src, rows, cols, fmax, vec);
}

// Quantizes the [rows, cols] tensor that `src` yields into q / q_t (the arguments of
// quantize_blocks_fp8); checks the outputs first, naming `op` in the message.
template <typename Source>
void quantize_source(const char* op, void* q, float* q_scale_inv, ScaleLayout q_layout, void* q_t,
                     float* q_t_scale_inv, ScaleLayout q_t_layout, DType q_dtype, Fp8Blocks blocks, const Source& src,
                     int rows, int cols, cudaStream_t stream) {
  fp8_max(q_dtype);  // throws for a dtype that is not FP8
  check_block_outputs(op, q, q_scale_inv, q_t, q_t_scale_inv, rows, cols);
  const BlockOutputs out{.q = static_cast<fp8_byte*>(q),
                         .q_scale_inv = q_scale_inv,
                         .q_layout = q_layout,
                         .q_t = static_cast<fp8_byte*>(q_t),
                         .q_t_scale_inv = q_t_scale_inv,
                         .q_t_layout = q_t_layout};
  if (q_dtype == DType::E4M3)
    launch_kernel<__NV_E4M3>(out, blocks, src, rows, cols, stream);
  else
    launch_kernel<__NV_E5M2>(out, blocks, src, rows, cols, stream);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace llmq::kernels::blocks
