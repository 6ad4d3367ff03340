// Bias add (forward) and bias gradient (backward) for row-major [N, C] tensors (N = B*T rows).
//
// Forward:  out[n, c] += bias[c]                  (fp32 arithmetic, rounded once to the storage type)
// Backward: dbias[c] += sum_n dout[n, c]          (dbias fp32 or bf16, accumulated into)
//
// Backward without atomics, bit-reproducible: the rows are cut into R row blocks (R depends only on
// N); grid (column tiles, R). In a block, warp w sums rows w, w + 8, ... of its row block for the
// tile's columns, the 8 warp sums are added in warp order and written to partials[r, c] (fp32
// scratch, [R, C]). A finish kernel adds partials[0..R-1, c] in order and accumulates into dbias[c].
// Column tiles use 16-byte vectors when C is a multiple of the vector width and the pointers are
// aligned; element accesses otherwise.
#include "kernels/bias.h"

#include <algorithm>
#include <cstdint>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMinRowsPerBlock = 64;
constexpr int kMaxRowBlocks = 128;

int row_blocks_for(int N) { return std::max(1, std::min(ceil_div(N, kMinRowsPerBlock), kMaxRowBlocks)); }

// kWidth consecutive elements at p: one 16-byte vector when kWidth is the vector size, else one element.
template <typename T, int kWidth>
__device__ __forceinline__ void load_elements(const T* p, float (&x)[kWidth]) {
  if constexpr (kWidth == 1) {
    x[0] = to_float(p[0]);
  } else {
    static_assert(kWidth == Vec<T>::kSize);
    const Vec<T> v = load_vec(p);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) x[k] = to_float(v[k]);
  }
}

template <typename T, int kWidth>
__device__ __forceinline__ void store_elements(T* p, const float (&x)[kWidth]) {
  if constexpr (kWidth == 1) {
    p[0] = from_float<T>(x[0]);
  } else {
    Vec<T> v;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) v[k] = from_float<T>(x[k]);
    store_vec(p, v);
  }
}

// Thread i handles elements [i * kWidth, (i + 1) * kWidth) of out; C % kWidth == 0.
template <typename T, int kWidth>
__global__ void __launch_bounds__(kThreads) bias_forward_kernel(T* out, const T* bias, std::size_t total, int C) {
  const std::size_t chunks = total / kWidth;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < chunks; i += stride) {
    const std::size_t e = i * kWidth;
    float x[kWidth], b[kWidth];
    load_elements<T, kWidth>(out + e, x);
    load_elements<T, kWidth>(bias + e % C, b);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) x[k] += b[k];
    store_elements<T, kWidth>(out + e, x);
  }
}

// Block (tile, r): columns [tile * 32 * kWidth, ...), rows [r * rows_per_block, ...).
template <typename T, int kWidth>
__global__ void __launch_bounds__(kThreads)
    bias_partials_kernel(const T* dout, int N, int C, int rows_per_block, float* partials) {
  constexpr int kTileColumns = kWarpSize * kWidth;
  __shared__ float warp_sums[kWarps][kTileColumns];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int tile_start = blockIdx.x * kTileColumns;
  const int c0 = tile_start + lane * kWidth;
  const int row_begin = blockIdx.y * rows_per_block;
  const int row_end = min(N, row_begin + rows_per_block);

  float acc[kWidth] = {};
  if (c0 < C) {
    for (int n = row_begin + warp; n < row_end; n += kWarps) {
      float x[kWidth];
      load_elements<T, kWidth>(dout + static_cast<std::size_t>(n) * C + c0, x);
#pragma unroll
      for (int k = 0; k < kWidth; ++k) acc[k] += x[k];
    }
  }
#pragma unroll
  for (int k = 0; k < kWidth; ++k) warp_sums[warp][lane * kWidth + k] = acc[k];
  __syncthreads();
  for (int col = threadIdx.x; col < kTileColumns; col += blockDim.x) {
    if (tile_start + col >= C) continue;
    float sum = 0.f;
    for (int w = 0; w < kWarps; ++w) sum += warp_sums[w][col];
    partials[static_cast<std::size_t>(blockIdx.y) * C + tile_start + col] = sum;
  }
}

template <typename TB>
__global__ void bias_finish_kernel(TB* dbias, const float* partials, int C, int row_blocks) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sum = 0.f;
  for (int r = 0; r < row_blocks; ++r) sum += partials[static_cast<std::size_t>(r) * C + c];
  dbias[c] = from_float<TB>(to_float(dbias[c]) + sum);
}

void check_shape(const char* op, int N, int C) {
  LLMQ_REQUIRE(N >= 0 && C > 0, "{}: bad shape N={} C={} (need N >= 0, C > 0)", op, N, C);
}

template <typename T>
void launch_forward(T* out, const T* bias, int N, int C, cudaStream_t stream) {
  check_shape("bias_forward", N, C);
  if (N == 0) return;
  LLMQ_REQUIRE(out && bias, "bias_forward: null out / bias pointer");
  constexpr int kVec = Vec<T>::kSize;
  const std::size_t total = static_cast<std::size_t>(N) * C;
  const bool vectorized = C % kVec == 0 && aligned16(out) && aligned16(bias);
  const std::size_t chunks = vectorized ? total / kVec : total;
  const int blocks = static_cast<int>(std::min<std::size_t>((chunks + kThreads - 1) / kThreads, 1u << 16));
  if (vectorized) {
    bias_forward_kernel<T, kVec><<<blocks, kThreads, 0, stream>>>(out, bias, total, C);
  } else {
    bias_forward_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(out, bias, total, C);
  }
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <typename T, int kWidth>
void launch_partials(const T* dout, int N, int C, int row_blocks, float* partials, cudaStream_t stream) {
  const dim3 grid(ceil_div(C, kWarpSize * kWidth), row_blocks);
  bias_partials_kernel<T, kWidth><<<grid, kThreads, 0, stream>>>(dout, N, C, ceil_div(N, row_blocks), partials);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <typename TB, typename T>
void launch_backward(TB* dbias, const T* dout, int N, int C, void* scratch, cudaStream_t stream) {
  check_shape("bias_backward", N, C);
  if (N == 0) return;
  LLMQ_REQUIRE(dbias && dout, "bias_backward: null dbias / dout pointer");
  LLMQ_REQUIRE(scratch, "bias_backward: null scratch (needs bias_backward_scratch_bytes(N, C) = {} bytes)",
               bias_backward_scratch_bytes(N, C));
  constexpr int kVec = Vec<T>::kSize;
  const int row_blocks = row_blocks_for(N);
  auto* partials = static_cast<float*>(scratch);
  if (C % kVec == 0 && aligned16(dout)) {
    launch_partials<T, kVec>(dout, N, C, row_blocks, partials, stream);
  } else {
    launch_partials<T, 1>(dout, N, C, row_blocks, partials, stream);
  }
  bias_finish_kernel<TB><<<ceil_div(C, kThreads), kThreads, 0, stream>>>(dbias, partials, C, row_blocks);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void bias_forward(float* out, const float* bias, int N, int C, cudaStream_t stream) {
  launch_forward(out, bias, N, C, stream);
}
void bias_forward(nv_bfloat16* out, const nv_bfloat16* bias, int N, int C, cudaStream_t stream) {
  launch_forward(out, bias, N, C, stream);
}

std::size_t bias_backward_scratch_bytes(int N, int C) {
  check_shape("bias_backward_scratch_bytes", N, C);
  return static_cast<std::size_t>(row_blocks_for(N)) * C * sizeof(float);
}

void bias_backward(float* dbias, const float* dout, int N, int C, void* scratch, cudaStream_t stream) {
  launch_backward(dbias, dout, N, C, scratch, stream);
}
void bias_backward(nv_bfloat16* dbias, const nv_bfloat16* dout, int N, int C, void* scratch, cudaStream_t stream) {
  launch_backward(dbias, dout, N, C, scratch, stream);
}
void bias_backward(float* dbias, const nv_bfloat16* dout, int N, int C, void* scratch, cudaStream_t stream) {
  launch_backward(dbias, dout, N, C, scratch, stream);
}

}  // namespace llmq::kernels
