// SwiGLU activation of the Qwen2 MLP: out = silu(gate) * up, forward and backward.
//
// Shapes: h, dh [N, 2D]; out, dout [N, D]. fp32 or bf16 storage, fp32 math.
// LAYOUT: row n of h is [gate_0 .. gate_{D-1}, up_0 .. up_{D-1}]: the gate projection in columns
// [0, D), the up projection in columns [D, 2D) (one matmul with weight rows gate_proj then up_proj).
// With g = h[n, j], u = h[n, D + j], sigma = sigmoid(g) = 1 / (1 + exp(-g)), silu(g) = g * sigma:
//   Forward:  out[n, j]    = silu(g) * u
//   Backward: dh[n, j]     = dout[n, j] * u * sigma * (1 + g * (1 - sigma))     (d/dg)
//             dh[n, D + j] = dout[n, j] * silu(g)                                (d/du)
// One thread per 16-byte vector of out / dout (and the matching gate and up vectors).
// Abs-max (FP8 scales): given `absmax`, the launchers also fold max |v| over every element of out
// (forward) or of dh, gate and up columns (backward), taken after rounding to the element type, into
// *absmax (zeroed by the caller; only ever maxed into). The abs-max kernels run one wave of blocks (as
// many as fit on the GPU at once) that loop with the grid's stride, each thread keeping a running max in a
// register that its warp adds with one atomic at the end: about one atomic per resident warp, not one per
// 32 vectors. Without absmax: one vector per thread and no loop, the kernels as before.
// Requirements: D % 8 == 0 (our widths 4864 ... 27648 qualify), pointers 16-byte aligned.
#include "kernels/swiglu.h"

#include <algorithm>
#include <cstdint>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"
#include "kernels/swiglu_math.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;

// Runs vector(idx) for idx < num_vecs: once per thread without an abs-max (the grid covers num_vecs: no
// loop, the kernel as it was), in a grid-stride loop with one (capped grid).
template <bool kLoop, typename F>
__device__ __forceinline__ void for_each_vector(long num_vecs, F&& vector) {
  const long first = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kLoop) {
    for (long idx = first; idx < num_vecs; idx += static_cast<long>(gridDim.x) * blockDim.x) vector(idx);
  } else if (first < num_vecs) {
    vector(first);
  }
}

template <typename T, bool kAbsMax>
__global__ void swiglu_forward_kernel(T* __restrict__ out, const T* __restrict__ h, float* absmax, int D,
                                      long num_vecs) {
  constexpr int K = Vec<T>::kSize;
  const int vecs_per_row = D / K;
  unsigned int absmax_bits = 0;  // |out| of this thread's elements, see max_abs_bits
  for_each_vector<kAbsMax>(num_vecs, [&](long idx) {
    const long n = idx / vecs_per_row;
    const int j = static_cast<int>(idx % vecs_per_row) * K;
    const Vec<T> gate = load_vec_stream(h + n * 2 * D + j);
    const Vec<T> up = load_vec_stream(h + n * 2 * D + D + j);
    Vec<T> o;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float g = to_float(gate[k]);
      o[k] = from_float<T>(swiglu_value(g, to_float(up[k])));
      if constexpr (kAbsMax) absmax_bits = max_abs_bits(absmax_bits, to_float(o[k]));
    }
    store_vec(out + n * D + j, o);
  });
  if constexpr (kAbsMax) atomic_max_abs(absmax, __uint_as_float(absmax_bits));  // every lane gets here
}

// dh may alias h: each element of h is read by the thread that writes it, before it writes.
// Without kStore only the abs-max is taken (dh is not written; the FP8 path quantizes dh itself).
template <typename T, bool kAbsMax, bool kStore = true>
__global__ void swiglu_backward_kernel(T* dh, const T* __restrict__ dout, const T* h, float* absmax, int D,
                                       long num_vecs) {
  constexpr int K = Vec<T>::kSize;
  const int vecs_per_row = D / K;
  unsigned int absmax_bits = 0;  // |dh| of this thread's elements, see max_abs_bits
  for_each_vector<kAbsMax>(num_vecs, [&](long idx) {
    const long n = idx / vecs_per_row;
    const int j = static_cast<int>(idx % vecs_per_row) * K;
    const long gate_at = n * 2 * D + j, up_at = gate_at + D;
    const Vec<T> gate = load_vec_stream(h + gate_at);
    const Vec<T> up = load_vec_stream(h + up_at);
    const Vec<T> d = load_vec_stream(dout + n * D + j);
    Vec<T> dgate, dup;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float dg, du;
      swiglu_grad(to_float(gate[k]), to_float(up[k]), to_float(d[k]), dg, du);
      dgate[k] = from_float<T>(dg);
      dup[k] = from_float<T>(du);
      if constexpr (kAbsMax) {
        absmax_bits = max_abs_bits(absmax_bits, to_float(dgate[k]));
        absmax_bits = max_abs_bits(absmax_bits, to_float(dup[k]));
      }
    }
    if constexpr (kStore) {
      store_vec(dh + gate_at, dgate);
      store_vec(dh + up_at, dup);
    }
  });
  if constexpr (kAbsMax) atomic_max_abs(absmax, __uint_as_float(absmax_bits));  // every lane gets here
}

void require_args(const char* op, const void* a, const void* b, const void* c, int N, int D) {
  LLMQ_REQUIRE(N > 0 && D > 0, "{}: sizes must be positive (N={}, D={})", op, N, D);
  LLMQ_REQUIRE(D % 8 == 0, "{}: D={} is not a multiple of 8 (16-byte vector access); pad the MLP width", op, D);
  for (const void* p : {a, b, c}) {
    LLMQ_REQUIRE(aligned16(p),
                 "{}: pointer {} is not 16-byte aligned (kernels use 16-byte vector access)", op, p);
  }
}

template <typename T>
void launch_forward(T* out, const T* h, int N, int D, cudaStream_t stream, float* absmax) {
  require_args("swiglu_forward", out, h, h, N, D);
  const long num_vecs = static_cast<long>(N) * (D / Vec<T>::kSize);
  const int blocks = ceil_div(num_vecs, kThreads);  // one vector per thread
  if (absmax != nullptr) {
    const int capped = std::min(blocks, resident_blocks(swiglu_forward_kernel<T, true>, kThreads));
    swiglu_forward_kernel<T, true><<<capped, kThreads, 0, stream>>>(out, h, absmax, D, num_vecs);
  } else {
    swiglu_forward_kernel<T, false><<<blocks, kThreads, 0, stream>>>(out, h, nullptr, D, num_vecs);
  }
  LLMQ_CUDA_CHECK_LAUNCH();
}

// kStore false: only the abs-max (dh is null).
template <typename T, bool kStore = true>
void launch_backward(T* dh, const T* dout, const T* h, int N, int D, cudaStream_t stream, float* absmax) {
  require_args(kStore ? "swiglu_backward" : "swiglu_backward_abs_max", dh, dout, h, N, D);
  const long num_vecs = static_cast<long>(N) * (D / Vec<T>::kSize);
  const int blocks = ceil_div(num_vecs, kThreads);  // one vector per thread
  if (absmax != nullptr) {
    auto* kernel = swiglu_backward_kernel<T, true, kStore>;
    const int capped = std::min(blocks, resident_blocks(kernel, kThreads));
    kernel<<<capped, kThreads, 0, stream>>>(dh, dout, h, absmax, D, num_vecs);
  } else {
    swiglu_backward_kernel<T, false><<<blocks, kThreads, 0, stream>>>(dh, dout, h, nullptr, D, num_vecs);
  }
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void swiglu_backward_abs_max(float* absmax, const nv_bfloat16* dout, const nv_bfloat16* h, int N, int D,
                             cudaStream_t stream) {
  LLMQ_REQUIRE(absmax != nullptr, "swiglu_backward_abs_max: null abs-max pointer");
  launch_backward<nv_bfloat16, false>(nullptr, dout, h, N, D, stream, absmax);
}

void swiglu_forward(float* out, const float* h, int N, int D, cudaStream_t stream, float* absmax) {
  launch_forward(out, h, N, D, stream, absmax);
}
void swiglu_forward(nv_bfloat16* out, const nv_bfloat16* h, int N, int D, cudaStream_t stream, float* absmax) {
  launch_forward(out, h, N, D, stream, absmax);
}

void swiglu_backward(float* dh, const float* dout, const float* h, int N, int D, cudaStream_t stream, float* absmax) {
  launch_backward(dh, dout, h, N, D, stream, absmax);
}
void swiglu_backward(nv_bfloat16* dh, const nv_bfloat16* dout, const nv_bfloat16* h, int N, int D, cudaStream_t stream,
                     float* absmax) {
  launch_backward(dh, dout, h, N, D, stream, absmax);
}

}  // namespace llmq::kernels
