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
// Requirements: D % 8 == 0 (our widths 4864 ... 27648 qualify), pointers 16-byte aligned.
#include "kernels/swiglu.h"

#include <cstdint>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

template <typename T>
__global__ void swiglu_forward_kernel(T* __restrict__ out, const T* __restrict__ h, int D, long num_vecs) {
  constexpr int K = Vec<T>::kSize;
  const long idx = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_vecs) return;
  const int vecs_per_row = D / K;
  const long n = idx / vecs_per_row;
  const int j = static_cast<int>(idx % vecs_per_row) * K;
  const Vec<T> gate = load_vec_stream(h + n * 2 * D + j);
  const Vec<T> up = load_vec_stream(h + n * 2 * D + D + j);
  Vec<T> o;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float g = to_float(gate[k]);
    o[k] = from_float<T>(g * sigmoid(g) * to_float(up[k]));
  }
  store_vec(out + n * D + j, o);
}

// dh may alias h: each element of h is read by the thread that writes it, before it writes.
template <typename T>
__global__ void swiglu_backward_kernel(T* dh, const T* __restrict__ dout, const T* h, int D, long num_vecs) {
  constexpr int K = Vec<T>::kSize;
  const long idx = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_vecs) return;
  const int vecs_per_row = D / K;
  const long n = idx / vecs_per_row;
  const int j = static_cast<int>(idx % vecs_per_row) * K;
  const long gate_at = n * 2 * D + j, up_at = gate_at + D;
  const Vec<T> gate = load_vec_stream(h + gate_at);
  const Vec<T> up = load_vec_stream(h + up_at);
  const Vec<T> d = load_vec_stream(dout + n * D + j);
  Vec<T> dgate, dup;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float g = to_float(gate[k]), u = to_float(up[k]), dy = to_float(d[k]);
    const float sig = sigmoid(g);
    dgate[k] = from_float<T>(dy * u * sig * (1.f + g * (1.f - sig)));
    dup[k] = from_float<T>(dy * g * sig);
  }
  store_vec(dh + gate_at, dgate);
  store_vec(dh + up_at, dup);
}

void require_args(const char* op, const void* a, const void* b, const void* c, int N, int D) {
  LLMQ_REQUIRE(N > 0 && D > 0, "{}: sizes must be positive (N={}, D={})", op, N, D);
  LLMQ_REQUIRE(D % 8 == 0, "{}: D={} is not a multiple of 8 (16-byte vector access); pad the MLP width", op, D);
  for (const void* p : {a, b, c}) {
    LLMQ_REQUIRE(reinterpret_cast<std::uintptr_t>(p) % 16 == 0,
                 "{}: pointer {} is not 16-byte aligned (kernels use 16-byte vector access)", op, p);
  }
}

template <typename T>
void launch_forward(T* out, const T* h, int N, int D, cudaStream_t stream) {
  require_args("swiglu_forward", out, h, h, N, D);
  const long num_vecs = static_cast<long>(N) * (D / Vec<T>::kSize);
  swiglu_forward_kernel<T><<<ceil_div(num_vecs, kThreads), kThreads, 0, stream>>>(out, h, D, num_vecs);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_backward(T* dh, const T* dout, const T* h, int N, int D, cudaStream_t stream) {
  require_args("swiglu_backward", dh, dout, h, N, D);
  const long num_vecs = static_cast<long>(N) * (D / Vec<T>::kSize);
  swiglu_backward_kernel<T><<<ceil_div(num_vecs, kThreads), kThreads, 0, stream>>>(dh, dout, h, D, num_vecs);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void swiglu_forward(float* out, const float* h, int N, int D, cudaStream_t stream) {
  launch_forward(out, h, N, D, stream);
}
void swiglu_forward(nv_bfloat16* out, const nv_bfloat16* h, int N, int D, cudaStream_t stream) {
  launch_forward(out, h, N, D, stream);
}

void swiglu_backward(float* dh, const float* dout, const float* h, int N, int D, cudaStream_t stream) {
  launch_backward(dh, dout, h, N, D, stream);
}
void swiglu_backward(nv_bfloat16* dh, const nv_bfloat16* dout, const nv_bfloat16* h, int N, int D,
                     cudaStream_t stream) {
  launch_backward(dh, dout, h, N, D, stream);
}

}  // namespace llmq::kernels
