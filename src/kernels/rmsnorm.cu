// RMSNorm (Qwen2RMSNorm), forward and backward.
//
// Shapes: x, out, residual, residual_out, dout, dx, dresidual [N, C]; w, dw [C]; rstd fp32 [N].
// fp32 or bf16 storage, fp32 math. Per row n:
//   Forward:  rstd[n]   = 1 / sqrt(mean_c x[n, c]^2 + eps)
//             out[n, c] = x[n, c] * rstd[n] * w[c]                     (one rounding to the element type)
//   Fused:    residual_out = residual + x (the block's residual add, rounded to the element type), then
//             the forward above applied to residual_out; one pass writes residual_out, out and rstd.
//   Backward: with g = dout * w and xhat = x * rstd (x = the normalised tensor, rstd from the forward)
//             dx[n, c] = rstd[n] * (g[n, c] - xhat[n, c] * mean_c(g[n, :] * xhat[n, :]))
//             written as dx = dresidual + that when dresidual is given (the residual gradient flowing
//             past the norm), otherwise overwritten;
//             dw[c]   += sum_n dout[n, c] * xhat[n, c]                  (dw accumulates across micro-batches)
//
// Layout of the work: one block per row (forward) or per strided set of rows (backward); each thread
// keeps kElemsPerThread = 16 elements of its row (4 fp32 or 2 bf16 16-byte vectors) in registers, so a
// row is read from memory once. Block width = C / 16 rounded up to a warp, at most 512 threads: C <= 8192
// (rmsnorm_max_width). dw is reduced deterministically: each backward block sums its rows' dout * xhat
// into fp32 registers and writes them to scratch[block, C]; a second kernel adds the partials of all
// blocks in block order and adds the result to dw. The backward grid is one wave of blocks (as many as
// fit on the GPU at once, at most N), each looping over rows n = block, block + grid, ...; its size
// depends on N, C and the GPU, so dw is bit-reproducible on one GPU model.
//
// Abs-max (FP8 scales): given `absmax`, the bf16/fp32 launchers also fold max |v| over every element of
// out (forward; not residual_out) or dx (backward), taken after rounding to the element type, into
// *absmax (zeroed by the caller; only ever maxed into). Each thread keeps a running max in a register and
// its warp adds it with one atomic at the end. The abs-max forward runs one wave of blocks (as many as fit
// on the GPU at once) that loop over rows, so the atomics stay near one per resident warp instead of one
// per warp of every row; without absmax it is the unchanged one-block-per-row kernel. The backward keeps
// its one-wave grid.
//
// Requirements: C % 8 == 0 (16-byte vectors; our widths 896 ... 5120 qualify), pointers 16-byte aligned.
#include "kernels/rmsnorm.h"

#include <algorithm>
#include <cstdint>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kElemsPerThread = 16;  // 4 fp32 / 2 bf16 vectors per thread: rows stay in registers
template <typename T>
constexpr int kVecsPerThread = kElemsPerThread / Vec<T>::kSize;
constexpr int kMaxThreads = 512;              // with __launch_bounds__: at most 128 registers per thread
constexpr int kReduceColumnThreads = 8;       // dw reduce block: 8 float4 column groups ...
constexpr int kReducePartialThreads = 32;     // ... x 32 threads striding over the partial rows

__device__ __forceinline__ bool vec_in_row(int j, int vecs_per_row) {
  return static_cast<int>(threadIdx.x) + j * static_cast<int>(blockDim.x) < vecs_per_row;
}
// Element offset within a row of the j-th vector this thread owns.
template <typename T>
__device__ __forceinline__ int vec_col(int j) {
  return (threadIdx.x + j * blockDim.x) * Vec<T>::kSize;
}

// No __restrict__ on the row tensors: residual_out / out may alias residual / x (element-wise in place).
template <typename T, bool kFusedResidual, bool kAbsMax>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_forward_kernel(T* residual_out, T* out, float* rstd_out, float* absmax, const T* residual, const T* x,
                           const T* __restrict__ w, float eps, int N, int C) {
  constexpr int K = Vec<T>::kSize;
  __shared__ float reduce_scratch[kWarpSize];
  const int vecs_per_row = C / K;

  Vec<T> wv[kVecsPerThread<T>];
#pragma unroll
  for (int j = 0; j < kVecsPerThread<T>; ++j) {
    if (vec_in_row(j, vecs_per_row)) wv[j] = load_vec(w + vec_col<T>(j));
  }
  unsigned int absmax_bits = 0;  // |out| of this thread's elements, see max_abs_bits

  auto normalise_row = [&](int n) {
    const long row = static_cast<long>(n) * C;
    Vec<T> xv[kVecsPerThread<T>];
    float sum_sq = 0.f;
#pragma unroll
    for (int j = 0; j < kVecsPerThread<T>; ++j) {
      if (!vec_in_row(j, vecs_per_row)) continue;
      const int c = vec_col<T>(j);
      xv[j] = load_vec(x + row + c);
      if constexpr (kFusedResidual) {
        const Vec<T> r = load_vec(residual + row + c);
#pragma unroll
        for (int k = 0; k < K; ++k) xv[j][k] = from_float<T>(to_float(r[k]) + to_float(xv[j][k]));
        store_vec(residual_out + row + c, xv[j]);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float v = to_float(xv[j][k]);
        sum_sq += v * v;
      }
    }
    const float rstd = rsqrtf(block_sum(sum_sq, reduce_scratch) / static_cast<float>(C) + eps);
    if (rstd_out != nullptr && threadIdx.x == 0) rstd_out[n] = rstd;

#pragma unroll
    for (int j = 0; j < kVecsPerThread<T>; ++j) {
      if (!vec_in_row(j, vecs_per_row)) continue;
      Vec<T> o;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        o[k] = from_float<T>(to_float(xv[j][k]) * rstd * to_float(wv[j][k]));
        if constexpr (kAbsMax) absmax_bits = max_abs_bits(absmax_bits, to_float(o[k]));
      }
      store_vec(out + row + vec_col<T>(j), o);
    }
  };

  if constexpr (kAbsMax) {
    // Capped grid: block b handles rows b, b + gridDim.x, ... (uniform over the block: block_sum is safe).
    for (int n = blockIdx.x; n < N; n += gridDim.x) normalise_row(n);
    atomic_max_abs(absmax, __uint_as_float(absmax_bits));  // every lane gets here
  } else {
    normalise_row(blockIdx.x);  // one block per row
  }
}

// dx may alias dresidual or dout: every element is read by the thread that writes it, before it writes.
template <typename T, bool kAbsMax>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_backward_kernel(T* dx, float* __restrict__ dw_partial, float* absmax, const T* dresidual, const T* dout,
                            const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ rstd, int N,
                            int C) {
  constexpr int K = Vec<T>::kSize;
  __shared__ float reduce_scratch[kWarpSize];
  const int vecs_per_row = C / K;

  Vec<T> wv[kVecsPerThread<T>];
  float dw_sum[kVecsPerThread<T>][K];
#pragma unroll
  for (int j = 0; j < kVecsPerThread<T>; ++j) {
    if (vec_in_row(j, vecs_per_row)) wv[j] = load_vec(w + vec_col<T>(j));
#pragma unroll
    for (int k = 0; k < K; ++k) dw_sum[j][k] = 0.f;
  }
  unsigned int absmax_bits = 0;  // |dx| of this thread's elements, see max_abs_bits

  // This thread's vectors of dout and x of one row (nothing past the row's end).
  auto load_row = [&](int n, Vec<T>(&dov)[kVecsPerThread<T>], Vec<T>(&xv)[kVecsPerThread<T>]) {
#pragma unroll
    for (int j = 0; j < kVecsPerThread<T>; ++j) {
      if (!vec_in_row(j, vecs_per_row)) continue;
      const long at = static_cast<long>(n) * C + vec_col<T>(j);
      dov[j] = load_vec(dout + at);
      xv[j] = load_vec(x + at);
    }
  };
  // The next row's loads are issued before this row's block reduction and stores, so that a block keeps
  // memory busy through its barriers (the grid is one wave of blocks, each looping over rows).
  Vec<T> dov[kVecsPerThread<T>], xv[kVecsPerThread<T>];
  if (static_cast<int>(blockIdx.x) < N) load_row(blockIdx.x, dov, xv);
  for (int n = blockIdx.x; n < N; n += gridDim.x) {  // uniform over the block: block_sum is safe
    const long row = static_cast<long>(n) * C;
    const float r = rstd[n];
    Vec<T> prev[kVecsPerThread<T>];
    if (dresidual != nullptr) {
#pragma unroll
      for (int j = 0; j < kVecsPerThread<T>; ++j)
        if (vec_in_row(j, vecs_per_row)) prev[j] = load_vec(dresidual + row + vec_col<T>(j));
    }
    float dot = 0.f;  // sum_c g * xhat
#pragma unroll
    for (int j = 0; j < kVecsPerThread<T>; ++j) {
      if (!vec_in_row(j, vecs_per_row)) continue;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float d = to_float(dov[j][k]);
        const float xhat = to_float(xv[j][k]) * r;
        dot += d * to_float(wv[j][k]) * xhat;
        dw_sum[j][k] += d * xhat;
      }
    }
    Vec<T> next_dov[kVecsPerThread<T>], next_xv[kVecsPerThread<T>];
    if (n + static_cast<int>(gridDim.x) < N) load_row(n + gridDim.x, next_dov, next_xv);
    const float mean = block_sum(dot, reduce_scratch) / static_cast<float>(C);

#pragma unroll
    for (int j = 0; j < kVecsPerThread<T>; ++j) {
      if (!vec_in_row(j, vecs_per_row)) continue;
      Vec<T> o;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float g = to_float(dov[j][k]) * to_float(wv[j][k]);
        const float xhat = to_float(xv[j][k]) * r;
        float v = r * (g - xhat * mean);
        if (dresidual != nullptr) v += to_float(prev[j][k]);
        o[k] = from_float<T>(v);
        if constexpr (kAbsMax) absmax_bits = max_abs_bits(absmax_bits, to_float(o[k]));
      }
      store_vec(dx + row + vec_col<T>(j), o);
      dov[j] = next_dov[j];
      xv[j] = next_xv[j];
    }
  }
  if constexpr (kAbsMax) atomic_max_abs(absmax, __uint_as_float(absmax_bits));  // every lane gets here

  float* partial = dw_partial + static_cast<long>(blockIdx.x) * C;
#pragma unroll
  for (int j = 0; j < kVecsPerThread<T>; ++j) {
    if (!vec_in_row(j, vecs_per_row)) continue;
    const int c = vec_col<T>(j);
#pragma unroll
    for (int k = 0; k < K; k += 4) {
      reinterpret_cast<float4*>(partial + c + k)[0] =
          make_float4(dw_sum[j][k], dw_sum[j][k + 1], dw_sum[j][k + 2], dw_sum[j][k + 3]);
    }
  }
}

// dw[c] += sum_b partial[b, c], summed in a fixed order: thread row y adds partials y, y + 32, ...
// in sequence, then the 32 thread-row sums are added in y order.
template <typename TW>
__global__ void rmsnorm_dw_reduce_kernel(TW* dw, const float* __restrict__ partial, int num_partials, int C) {
  __shared__ float4 sums[kReducePartialThreads][kReduceColumnThreads];
  const int c = (blockIdx.x * kReduceColumnThreads + threadIdx.x) * 4;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (c < C) {
    for (int b = threadIdx.y; b < num_partials; b += kReducePartialThreads) {
      const float4 p = *reinterpret_cast<const float4*>(partial + static_cast<long>(b) * C + c);
      acc.x += p.x;
      acc.y += p.y;
      acc.z += p.z;
      acc.w += p.w;
    }
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  float total[4] = {0.f, 0.f, 0.f, 0.f};
  for (int y = 0; y < kReducePartialThreads; ++y) {
    const float4 s = sums[y][threadIdx.x];
    total[0] += s.x;
    total[1] += s.y;
    total[2] += s.z;
    total[3] += s.w;
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) dw[c + k] = from_float<TW>(to_float(dw[c + k]) + total[k]);
}

// ---- launch geometry ----------------------------------------------------------------------------

// Threads per row: the same for both element types (each thread owns kElemsPerThread elements).
int row_threads(int C) { return ceil_div(ceil_div(C, kElemsPerThread), kWarpSize) * kWarpSize; }

void require_aligned(const void* p, const char* what, const char* op) {
  LLMQ_REQUIRE(aligned16(p),
               "{}: {} at {} is not 16-byte aligned (kernels use 16-byte vector access; offset views by "
               "multiples of 8 elements)",
               op, what, p);
}

void require_shapes(const char* op, int N, int C) {
  LLMQ_REQUIRE(N > 0 && C > 0, "{}: sizes must be positive (N={}, C={})", op, N, C);
  LLMQ_REQUIRE(C % 8 == 0, "{}: C={} is not a multiple of 8 (16-byte vector access); pad the model width", op, C);
  LLMQ_REQUIRE(C <= rmsnorm_max_width(),
               "{}: C={} exceeds the supported width {} (a row must fit the registers of one block); raise "
               "kElemsPerThread in rmsnorm.cu",
               op, C, rmsnorm_max_width());
}

template <typename T, bool kFused>
void launch_forward(const char* op, T* residual_out, T* out, float* rstd, const T* residual, const T* x, const T* w,
                    float eps, int N, int C, cudaStream_t stream, float* absmax) {
  require_shapes(op, N, C);
  require_aligned(out, "out", op);
  require_aligned(x, "x", op);
  require_aligned(w, "w", op);
  if constexpr (kFused) {
    require_aligned(residual_out, "residual_out", op);
    require_aligned(residual, "residual", op);
  }
  LLMQ_REQUIRE(eps > 0.f, "{}: eps={} must be positive (config.json rms_norm_eps)", op, eps);
  const int threads = row_threads(C);
  if (absmax != nullptr) {
    const int blocks = std::min(N, resident_blocks(rmsnorm_forward_kernel<T, kFused, true>, threads));
    rmsnorm_forward_kernel<T, kFused, true>
        <<<blocks, threads, 0, stream>>>(residual_out, out, rstd, absmax, residual, x, w, eps, N, C);
  } else {
    rmsnorm_forward_kernel<T, kFused, false>  // one block per row
        <<<N, threads, 0, stream>>>(residual_out, out, rstd, nullptr, residual, x, w, eps, N, C);
  }
  LLMQ_CUDA_CHECK_LAUNCH();
}

// Backward grid: one wave, as many blocks as fit on the GPU at once (the rows spread evenly over the SMs,
// no second partial wave), at most N. Sized for the bf16 kernel, the training path; both element types
// use the same count so that one scratch size serves both.
int backward_blocks(int N, int C) {
  return std::max(1, std::min(N, resident_blocks(rmsnorm_backward_kernel<nv_bfloat16, true>, row_threads(C))));
}

template <typename T, typename TW>
void launch_backward(T* dx, TW* dw, float* scratch, const T* dresidual, const T* dout, const T* x, const T* w,
                     const float* rstd, int N, int C, cudaStream_t stream, float* absmax) {
  const char* op = "rmsnorm_backward";
  require_shapes(op, N, C);
  require_aligned(dx, "dx", op);
  require_aligned(scratch, "scratch", op);
  require_aligned(dout, "dout", op);
  require_aligned(x, "x", op);
  require_aligned(w, "w", op);
  if (dresidual != nullptr) require_aligned(dresidual, "dresidual", op);
  LLMQ_REQUIRE(dw != nullptr && rstd != nullptr, "rmsnorm_backward: dw and rstd must not be null");
  const int blocks = backward_blocks(N, C);
  if (absmax != nullptr) {
    rmsnorm_backward_kernel<T, true>
        <<<blocks, row_threads(C), 0, stream>>>(dx, scratch, absmax, dresidual, dout, x, w, rstd, N, C);
  } else {
    rmsnorm_backward_kernel<T, false>
        <<<blocks, row_threads(C), 0, stream>>>(dx, scratch, nullptr, dresidual, dout, x, w, rstd, N, C);
  }
  LLMQ_CUDA_CHECK_LAUNCH();
  const dim3 reduce_block(kReduceColumnThreads, kReducePartialThreads);
  rmsnorm_dw_reduce_kernel<TW>
      <<<ceil_div(C, 4 * kReduceColumnThreads), reduce_block, 0, stream>>>(dw, scratch, blocks, C);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

int rmsnorm_max_width() { return kMaxThreads * kElemsPerThread; }

std::size_t rmsnorm_backward_scratch_bytes(int N, int C) {
  LLMQ_REQUIRE(N > 0 && C > 0, "rmsnorm_backward_scratch_bytes: sizes must be positive (N={}, C={})", N, C);
  return static_cast<std::size_t>(backward_blocks(N, C)) * C * sizeof(float);
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, float eps, int N, int C,
                     cudaStream_t stream, float* absmax) {
  launch_forward<float, false>("rmsnorm_forward", nullptr, out, rstd, nullptr, x, w, eps, N, C, stream, absmax);
}
void rmsnorm_forward(nv_bfloat16* out, float* rstd, const nv_bfloat16* x, const nv_bfloat16* w, float eps, int N, int C,
                     cudaStream_t stream, float* absmax) {
  launch_forward<nv_bfloat16, false>("rmsnorm_forward", nullptr, out, rstd, nullptr, x, w, eps, N, C, stream, absmax);
}

void fused_residual_rmsnorm_forward(float* residual_out, float* out, float* rstd, const float* residual, const float* x,
                                    const float* w, float eps, int N, int C, cudaStream_t stream, float* absmax) {
  launch_forward<float, true>("fused_residual_rmsnorm_forward", residual_out, out, rstd, residual, x, w, eps, N, C,
                              stream, absmax);
}
void fused_residual_rmsnorm_forward(nv_bfloat16* residual_out, nv_bfloat16* out, float* rstd,
                                    const nv_bfloat16* residual, const nv_bfloat16* x, const nv_bfloat16* w, float eps,
                                    int N, int C, cudaStream_t stream, float* absmax) {
  launch_forward<nv_bfloat16, true>("fused_residual_rmsnorm_forward", residual_out, out, rstd, residual, x, w, eps, N,
                                    C, stream, absmax);
}

void rmsnorm_backward(float* dx, float* dw, float* scratch, const float* dresidual, const float* dout, const float* x,
                      const float* w, const float* rstd, int N, int C, cudaStream_t stream, float* absmax) {
  launch_backward(dx, dw, scratch, dresidual, dout, x, w, rstd, N, C, stream, absmax);
}
void rmsnorm_backward(nv_bfloat16* dx, nv_bfloat16* dw, float* scratch, const nv_bfloat16* dresidual,
                      const nv_bfloat16* dout, const nv_bfloat16* x, const nv_bfloat16* w, const float* rstd, int N,
                      int C, cudaStream_t stream, float* absmax) {
  launch_backward(dx, dw, scratch, dresidual, dout, x, w, rstd, N, C, stream, absmax);
}
void rmsnorm_backward(nv_bfloat16* dx, float* dw, float* scratch, const nv_bfloat16* dresidual, const nv_bfloat16* dout,
                      const nv_bfloat16* x, const nv_bfloat16* w, const float* rstd, int N, int C, cudaStream_t stream,
                      float* absmax) {
  launch_backward(dx, dw, scratch, dresidual, dout, x, w, rstd, N, C, stream, absmax);
}

}  // namespace llmq::kernels
