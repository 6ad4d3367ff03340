// Causal GQA attention in fp32, forward and backward: a plain, correct (not fast) implementation of
// the math in attention.h, used for fp32 models and as a second reference for the cuDNN path.
// Same layouts as the cuDNN path: qkv / d_qkv [B, T, Hq+2*Hkv, Hs], att [B, T, Hq, Hs], lse [B, Hq, T].
//
// Forward:  one block per (b, h, i) query row. Pass 1 finds lse[i] with a running (max, sum) per
//           thread, merged across the block; pass 2 walks the keys in tiles of kThreads, turns each
//           score into P[i, j] = exp(s[i, j] - lse[i]) in shared memory, and thread d sums P v[:, d].
// Backward: one block per (b, h, i) for dq[i] (tiles of dS[i, j] over keys j <= i), and one block per
//           (b, g, j) for dk[j], dv[j] (tiles of P[i, j], dS[i, j] over the group's query heads and rows
//           i >= j), recomputing P from lse. Every output element is written exactly once: no atomics,
//           deterministic.

// fmt 9 switches constexpr off when it sees nvcc, and g++ then rejects its C++20 constexpr code;
// it works with constexpr on. (Belongs in the build's CUDA flags; kept here until it is there.)

#include <cmath>

#include "core/errors.h"
#include "kernels/attention.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {

namespace {

constexpr int kThreads = 256;  // threads per block = keys (or queries) per tile
constexpr int kMaxHeadSize = kThreads;

// Index arithmetic of the packed layouts.
struct AttentionLayout {
  int B, T, Hq, Hkv, Hs;

  __device__ int heads_total() const { return Hq + 2 * Hkv; }
  __device__ std::size_t qkv_row(int b, int t, int head) const {  // head in [0, Hq + 2*Hkv)
    return ((static_cast<std::size_t>(b) * T + t) * heads_total() + head) * Hs;
  }
  __device__ std::size_t q(int b, int t, int h) const { return qkv_row(b, t, h); }
  __device__ std::size_t k(int b, int t, int g) const { return qkv_row(b, t, Hq + g); }
  __device__ std::size_t v(int b, int t, int g) const { return qkv_row(b, t, Hq + Hkv + g); }
  __device__ std::size_t att(int b, int t, int h) const {
    return ((static_cast<std::size_t>(b) * T + t) * Hq + h) * Hs;
  }
  __device__ std::size_t lse(int b, int h, int t) const { return (static_cast<std::size_t>(b) * Hq + h) * T + t; }
  __device__ int kv_head(int h) const { return h / (Hq / Hkv); }
};

__device__ float dot(const float* x, const float* y, int n) {
  float s = 0.f;
  for (int d = 0; d < n; ++d) s += x[d] * y[d];
  return s;
}

// Block (b, h, i) -> att[b, i, h, :], lse[b, h, i].
__global__ void attention_forward_fp32_kernel(float* att, float* lse, const float* qkv, AttentionLayout L,
                                              float scale) {
  __shared__ float q_row[kMaxHeadSize];
  __shared__ float p_tile[kThreads];
  __shared__ float scratch[32];
  const int i = blockIdx.x % L.T, h = (blockIdx.x / L.T) % L.Hq, b = blockIdx.x / (L.T * L.Hq);
  const int g = L.kv_head(h), tid = threadIdx.x;
  if (tid < L.Hs) q_row[tid] = qkv[L.q(b, i, h) + tid];
  __syncthreads();

  // Pass 1: lse over keys j <= i.
  float m = -INFINITY, l = 0.f;
  for (int j = tid; j <= i; j += kThreads) {
    const float s = scale * dot(q_row, qkv + L.k(b, j, g), L.Hs);
    if (s > m) {
      l = l * expf(m - s) + 1.f;
      m = s;
    } else {
      l += expf(s - m);
    }
  }
  const float m_all = block_max(m, scratch);
  const float l_all = block_sum(m == -INFINITY ? 0.f : l * expf(m - m_all), scratch);
  const float row_lse = m_all + logf(l_all);

  // Pass 2: att[i, d] = sum_j P[i, j] v[j, d], one key tile at a time.
  float acc = 0.f;
  for (int j0 = 0; j0 <= i; j0 += kThreads) {
    const int j = j0 + tid;
    __syncthreads();  // the previous tile is no longer read
    p_tile[tid] = j <= i ? expf(scale * dot(q_row, qkv + L.k(b, j, g), L.Hs) - row_lse) : 0.f;
    __syncthreads();
    const int n = min(kThreads, i - j0 + 1);
    if (tid < L.Hs)
      for (int jj = 0; jj < n; ++jj) acc += p_tile[jj] * qkv[L.v(b, j0 + jj, g) + tid];
  }
  if (tid < L.Hs) att[L.att(b, i, h) + tid] = acc;
  if (tid == 0) lse[L.lse(b, h, i)] = row_lse;
}

// Block (b, h, i) -> dq[b, i, h, :].
__global__ void attention_backward_dq_fp32_kernel(float* d_qkv, const float* d_att, const float* att, const float* lse,
                                                  const float* qkv, AttentionLayout L, float scale) {
  __shared__ float q_row[kMaxHeadSize];
  __shared__ float do_row[kMaxHeadSize];
  __shared__ float ds_tile[kThreads];
  __shared__ float scratch[32];
  const int i = blockIdx.x % L.T, h = (blockIdx.x / L.T) % L.Hq, b = blockIdx.x / (L.T * L.Hq);
  const int g = L.kv_head(h), tid = threadIdx.x;
  float o_times_do = 0.f;
  if (tid < L.Hs) {
    q_row[tid] = qkv[L.q(b, i, h) + tid];
    do_row[tid] = d_att[L.att(b, i, h) + tid];
    o_times_do = do_row[tid] * att[L.att(b, i, h) + tid];
  }
  const float D = block_sum(o_times_do, scratch);  // also makes q_row / do_row visible
  const float row_lse = lse[L.lse(b, h, i)];

  float acc = 0.f;
  for (int j0 = 0; j0 <= i; j0 += kThreads) {
    const int j = j0 + tid;
    __syncthreads();
    float ds = 0.f;
    if (j <= i) {
      const float p = expf(scale * dot(q_row, qkv + L.k(b, j, g), L.Hs) - row_lse);
      const float dp = dot(do_row, qkv + L.v(b, j, g), L.Hs);
      ds = p * (dp - D);
    }
    ds_tile[tid] = ds;
    __syncthreads();
    const int n = min(kThreads, i - j0 + 1);
    if (tid < L.Hs)
      for (int jj = 0; jj < n; ++jj) acc += ds_tile[jj] * qkv[L.k(b, j0 + jj, g) + tid];
  }
  if (tid < L.Hs) d_qkv[L.q(b, i, h) + tid] = scale * acc;
}

// Block (b, g, j) -> dk[b, j, g, :] and dv[b, j, g, :], summed over the query heads of group g.
__global__ void attention_backward_dkv_fp32_kernel(float* d_qkv, const float* d_att, const float* att,
                                                   const float* lse, const float* qkv, AttentionLayout L,
                                                   float scale) {
  __shared__ float k_row[kMaxHeadSize];
  __shared__ float v_row[kMaxHeadSize];
  __shared__ float p_tile[kThreads];
  __shared__ float ds_tile[kThreads];
  const int j = blockIdx.x % L.T, g = (blockIdx.x / L.T) % L.Hkv, b = blockIdx.x / (L.T * L.Hkv);
  const int tid = threadIdx.x, group_size = L.Hq / L.Hkv;
  if (tid < L.Hs) {
    k_row[tid] = qkv[L.k(b, j, g) + tid];
    v_row[tid] = qkv[L.v(b, j, g) + tid];
  }

  float acc_dk = 0.f, acc_dv = 0.f;
  for (int h = g * group_size; h < (g + 1) * group_size; ++h) {
    for (int i0 = j; i0 < L.T; i0 += kThreads) {
      const int i = i0 + tid;
      __syncthreads();  // k_row / v_row written, previous tile no longer read
      float p = 0.f, ds = 0.f;
      if (i < L.T) {
        const float* do_i = d_att + L.att(b, i, h);
        p = expf(scale * dot(qkv + L.q(b, i, h), k_row, L.Hs) - lse[L.lse(b, h, i)]);
        const float dp = dot(do_i, v_row, L.Hs);
        const float D = dot(do_i, att + L.att(b, i, h), L.Hs);
        ds = p * (dp - D);
      }
      p_tile[tid] = p;
      ds_tile[tid] = ds;
      __syncthreads();
      const int n = min(kThreads, L.T - i0);
      if (tid < L.Hs) {
        for (int ii = 0; ii < n; ++ii) {
          acc_dk += ds_tile[ii] * qkv[L.q(b, i0 + ii, h) + tid];
          acc_dv += p_tile[ii] * d_att[L.att(b, i0 + ii, h) + tid];
        }
      }
    }
  }
  if (tid < L.Hs) {
    d_qkv[L.k(b, j, g) + tid] = scale * acc_dk;
    d_qkv[L.v(b, j, g) + tid] = acc_dv;
  }
}

AttentionLayout checked_layout(int B, int T, int Hq, int Hkv, int Hs) {
  LLMQ_REQUIRE(B > 0 && T > 0 && Hq > 0 && Hkv > 0 && Hs > 0,
               "fp32 attention: sizes must be positive, got B={} T={} Hq={} Hkv={} Hs={}", B, T, Hq,
               Hkv, Hs);
  LLMQ_REQUIRE(Hq % Hkv == 0, "fp32 attention: Hq={} query heads is not a multiple of Hkv={} kv heads",
               Hq, Hkv);
  LLMQ_REQUIRE(Hs <= kMaxHeadSize, "fp32 attention: head size {} exceeds the supported {}", Hs,
               kMaxHeadSize);
  const long long blocks = static_cast<long long>(B) * T * Hq;
  LLMQ_REQUIRE(blocks <= 0x7fffffffLL, "fp32 attention: B*T*Hq = {} is too large for one launch",
               blocks);
  return {B, T, Hq, Hkv, Hs};
}

}  // namespace

void attention_forward_fp32(float* att, float* lse, const float* qkv, int B, int T, int Hq, int Hkv, int Hs,
                            cudaStream_t stream) {
  const AttentionLayout L = checked_layout(B, T, Hq, Hkv, Hs);
  const float scale = 1.f / std::sqrt(static_cast<float>(Hs));
  attention_forward_fp32_kernel<<<B * T * Hq, kThreads, 0, stream>>>(att, lse, qkv, L, scale);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void attention_backward_fp32(float* d_qkv, const float* d_att, const float* att, const float* lse, const float* qkv,
                             int B, int T, int Hq, int Hkv, int Hs, cudaStream_t stream) {
  const AttentionLayout L = checked_layout(B, T, Hq, Hkv, Hs);
  const float scale = 1.f / std::sqrt(static_cast<float>(Hs));
  attention_backward_dq_fp32_kernel<<<B * T * Hq, kThreads, 0, stream>>>(d_qkv, d_att, att, lse, qkv, L, scale);
  LLMQ_CUDA_CHECK_LAUNCH();
  attention_backward_dkv_fp32_kernel<<<B * T * Hkv, kThreads, 0, stream>>>(d_qkv, d_att, att, lse, qkv, L, scale);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace llmq::kernels
