// FP8 quantization with per-tensor current scaling (forward-only ops: quantization has no gradient;
// FP8 tensors feed GEMMs, whose backward runs on freshly quantized gradients).
//
//   abs_max:    amax = max_i |x_i|                      (0 for n == 0, NaN if any x_i is NaN)
//   quantize:   scale     = F / amax                    F = fp8_max(dtype): 448 (e4m3), 57344 (e5m2)
//               q_i       = sat_F(rn(x_i * scale))      rn: round to nearest even in the FP8 format,
//                                                       sat_F: clamp finite values to [-F, F]
//               scale_inv = 1 / scale                   so x_i ~= q_i * scale_inv
//   special abs-max values (all in fp32, the scale is computed exactly so on the host too):
//     amax == 0            -> scale = 1 (the tensor is all zeros, q = 0, scale_inv = 1)
//     amax inf or NaN      -> scale = NaN: every q_i and scale_inv are NaN, so the loss shows the
//                             overflow instead of training on silently zeroed values
//     F / amax > FLT_MAX   -> scale = FLT_MAX (abs-max deep in the subnormal range)
//   quantize_transpose: the same q for x [rows, cols], written as q [rows, cols] and/or
//               q_t [cols, rows] with q_t[c, r] = q[r, c].
//
// abs_max keeps a running max of the bit patterns of |x| (ordered like the values, NaN above inf)
// and folds it into the result with kernel_utils' atomic_max_abs, one atomic per block.
// quantize works on groups of 16 elements: two 16-byte bf16 loads and one 16-byte FP8 store when
// the pointers are 16-byte aligned and the group is whole; element accesses otherwise.
// quantize_transpose moves 64 x 64 tiles: each thread loads 16 consecutive elements of a row
// (coalesced), writes them to q with one 16-byte store, parks the FP8 bytes in shared memory, and
// after a barrier reads 16 consecutive rows of one column back to write 16 bytes of a q_t row
// (coalesced again). The scale is read from device memory by every thread; block 0 writes
// scale_inv, which therefore must not alias absmax.
#include "kernels/quantize.h"

#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "core/errors.h"
#include "kernels/fp8_common.cuh"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

using fp8::fp8_byte;
using fp8::kQuantGroup;
using fp8::kTile;
using fp8::quantize_group;
using fp8::scale_from_abs_max;
constexpr int kThreads = fp8::kTileThreads;
constexpr int kMaxBlocks = 1024;  // grid-stride beyond this

// ---- abs-max ------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) abs_max_kernel(float* absmax, const T* x, std::size_t n, bool vectorized) {
  constexpr int kGroup = 8;
  __shared__ unsigned int warp_bits[kThreads / kWarpSize];
  const std::size_t groups = (n + kGroup - 1) / kGroup;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  unsigned int bits = 0;  // max bit pattern of |x|: the same order as the values, NaN above inf
  for (std::size_t g = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    float v[kGroup];
    load_group<kGroup, true>(x, g * kGroup, n, vectorized, v);  // zeros past n: harmless for a max of |x|
#pragma unroll
    for (int k = 0; k < kGroup; ++k) bits = max(bits, __float_as_uint(v[k]) & 0x7FFFFFFFu);
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  bits = __reduce_max_sync(0xffffffffu, bits);
  if (lane == 0) warp_bits[warp] = bits;
  __syncthreads();
  if (warp == 0) atomic_max_abs(absmax, __uint_as_float(lane < kThreads / kWarpSize ? warp_bits[lane] : 0u));
}

// ---- quantize -----------------------------------------------------------------------------------

template <__nv_fp8_interpretation_t kFormat>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(fp8_byte* q, float* scale_inv, const nv_bfloat16* x, const float* absmax, std::size_t n,
                    float fp8_max, bool vectorized) {
  const float scale = scale_from_abs_max(*absmax, fp8_max);
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale_inv = 1.f / scale;
  const std::size_t groups = (n + kQuantGroup - 1) / kQuantGroup;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t g = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    float v[kQuantGroup];
    load_group<kQuantGroup>(x, g * kQuantGroup, n, vectorized, v);  // two 16-byte halves of a sector: no streaming hint
    fp8::store_fp8_group(q, g * kQuantGroup, n, vectorized, quantize_group<kFormat>(v, scale));
  }
}

// Which 16-byte paths quantize_transpose may take (each also needs the chunk to be whole).
struct TileVectorization {
  bool load_x;   // x 16-byte aligned and cols % 8 == 0: every row of x starts 16-byte aligned
  bool store_q;  // q aligned and cols % 16 == 0
  bool store_t;  // q_t aligned and rows % 16 == 0
};

// Block (bx, by) handles x[64*bx .. +64, 64*by .. +64]; thread t owns row t/4, columns 16*(t%4) .. +16
// of the tile in the first phase and row t/4 of the transposed tile in the second.
template <__nv_fp8_interpretation_t kFormat>
__global__ void __launch_bounds__(kThreads)
    quantize_transpose_kernel(fp8_byte* q, fp8_byte* q_t, float* scale_inv, const nv_bfloat16* x, const float* absmax,
                              int rows, int cols, float fp8_max, TileVectorization vec) {
  __shared__ alignas(16) fp8::Tile tile;
  const float scale = scale_from_abs_max(*absmax, fp8_max);
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *scale_inv = 1.f / scale;
  const int r0 = blockIdx.x * kTile, c0 = blockIdx.y * kTile;
  const int lr = fp8::tile_row(), lc = fp8::tile_col();
  fp8::Fp8Group out;  // rows past the end stay 0 in the tile (never stored)
  if (r0 + lr < rows) {
    const std::size_t row_offset = static_cast<std::size_t>(r0 + lr) * cols;
    float v[kQuantGroup];
    load_group<kQuantGroup>(x + row_offset, c0 + lc, cols, vec.load_x, v);
    out = quantize_group<kFormat>(v, scale);
    if (q) fp8::store_fp8_group(q + row_offset, c0 + lc, cols, vec.store_q, out);
  }
  if (!q_t) return;  // uniform over the grid
  fp8::park_in_tile(tile, out);
  __syncthreads();
  const int c = c0 + lr;  // this thread writes q_t[c, r0 + lc .. r0 + lc + 16)
  if (c >= cols) return;
  fp8::store_fp8_group(q_t + static_cast<std::size_t>(c) * rows, r0 + lc, rows, vec.store_t, fp8::column_from_tile(tile));
}

// ---- host side ----------------------------------------------------------------------------------

int grid_for(std::size_t work_items) {
  return static_cast<int>(std::clamp<std::size_t>((work_items + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

template <typename T>
void launch_abs_max(float* absmax, const T* x, std::size_t n, cudaStream_t stream) {
  LLMQ_REQUIRE(absmax != nullptr, "abs_max: null result pointer");
  LLMQ_REQUIRE(n == 0 || x != nullptr, "abs_max: null input pointer for {} elements", n);
  LLMQ_CUDA_CHECK(cudaMemsetAsync(absmax, 0, sizeof(float), stream));
  if (n == 0) return;
  abs_max_kernel<T><<<grid_for((n + 7) / 8), kThreads, 0, stream>>>(absmax, x, n, aligned16(x));
  LLMQ_CUDA_CHECK_LAUNCH();
}

void check_scale_pointers(const char* op, float* scale_inv, const float* absmax) {
  LLMQ_REQUIRE(scale_inv && absmax, "{}: null scale pointer (scale_inv={}, absmax={})", op,
               static_cast<void*>(scale_inv), static_cast<const void*>(absmax));
  LLMQ_REQUIRE(scale_inv != absmax,
               "{}: scale_inv and absmax are the same float; block 0 writes scale_inv while other blocks still read "
               "absmax, so give them separate slots",
               op);
}

template <__nv_fp8_interpretation_t kFormat>
void launch_quantize(void* q, float* scale_inv, const nv_bfloat16* x, const float* absmax, std::size_t n, float fmax,
                     cudaStream_t stream) {
  const bool vectorized = aligned16(q) && aligned16(x);
  const std::size_t groups = (n + kQuantGroup - 1) / kQuantGroup;
  quantize_kernel<kFormat>
      <<<grid_for(groups), kThreads, 0, stream>>>(static_cast<fp8_byte*>(q), scale_inv, x, absmax, n, fmax, vectorized);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <__nv_fp8_interpretation_t kFormat>
void launch_quantize_transpose(void* q, void* q_t, float* scale_inv, const nv_bfloat16* x, const float* absmax,
                               int rows, int cols, float fmax, cudaStream_t stream) {
  const TileVectorization vec{.load_x = aligned16(x) && cols % 8 == 0,
                              .store_q = aligned16(q) && cols % 16 == 0,
                              .store_t = aligned16(q_t) && rows % 16 == 0};
  const dim3 grid(ceil_div(rows, kTile), ceil_div(cols, kTile));
  quantize_transpose_kernel<kFormat><<<grid, kThreads, 0, stream>>>(
      static_cast<fp8_byte*>(q), static_cast<fp8_byte*>(q_t), scale_inv, x, absmax, rows, cols, fmax, vec);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

float fp8_max(DType fp8_dtype) {
  switch (fp8_dtype) {
    case DType::E4M3: return 448.f;
    case DType::E5M2: return 57344.f;
    default: break;
  }
  throw Error(LLMQ_FORMAT("FP8 quantization: dtype {} is not an FP8 format (use e4m3 or e5m2)", dtype_name(fp8_dtype)));
}

void abs_max(float* absmax, const nv_bfloat16* x, std::size_t n, cudaStream_t stream) {
  launch_abs_max(absmax, x, n, stream);
}
void abs_max(float* absmax, const float* x, std::size_t n, cudaStream_t stream) {
  launch_abs_max(absmax, x, n, stream);
}

void quantize_fp8(void* q, DType q_dtype, float* scale_inv, const nv_bfloat16* x, const float* absmax, std::size_t n,
                  cudaStream_t stream) {
  const float fmax = fp8_max(q_dtype);
  check_scale_pointers("quantize_fp8", scale_inv, absmax);
  LLMQ_REQUIRE(n == 0 || (q && x), "quantize_fp8: null input or output pointer for {} elements (q={}, x={})", n, q,
               static_cast<const void*>(x));
  if (q_dtype == DType::E4M3)
    launch_quantize<__NV_E4M3>(q, scale_inv, x, absmax, n, fmax, stream);
  else
    launch_quantize<__NV_E5M2>(q, scale_inv, x, absmax, n, fmax, stream);
}

void quantize_transpose_fp8(void* q, void* q_t, DType q_dtype, float* scale_inv, const nv_bfloat16* x,
                            const float* absmax, int rows, int cols, cudaStream_t stream) {
  const float fmax = fp8_max(q_dtype);
  check_scale_pointers("quantize_transpose_fp8", scale_inv, absmax);
  LLMQ_REQUIRE(rows > 0 && cols > 0, "quantize_transpose_fp8: rows={} cols={} must be positive", rows, cols);
  LLMQ_REQUIRE(x != nullptr, "quantize_transpose_fp8: null input pointer for [{}, {}]", rows, cols);
  LLMQ_REQUIRE(q || q_t, "quantize_transpose_fp8: both outputs are null; pass q, q_t or both");
  LLMQ_REQUIRE(ceil_div(cols, kTile) <= 65535,
               "quantize_transpose_fp8: cols={} exceeds {} (grid y limit of 65535 tiles of {}); split the tensor", cols,
               65535 * kTile, kTile);
  if (q_dtype == DType::E4M3)
    launch_quantize_transpose<__NV_E4M3>(q, q_t, scale_inv, x, absmax, rows, cols, fmax, stream);
  else
    launch_quantize_transpose<__NV_E5M2>(q, q_t, scale_inv, x, absmax, rows, cols, fmax, stream);
}

}  // namespace llmq::kernels
