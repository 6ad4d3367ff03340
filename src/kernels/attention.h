// Causal multi-head attention with grouped key/value heads (GQA), forward and backward.
//
// Layouts (row-major, contiguous):
//   qkv   [B, T, Hq + 2*Hkv, Hs]  query heads, then key heads, then value heads (RoPE already applied)
//   att   [B, T, Hq, Hs]          attention output
//   lse   [B, Hq, T] fp32         log-sum-exp of the scaled scores of each query row, natural log
//   d_qkv [B, T, Hq + 2*Hkv, Hs]  same layout as qkv; every element is written (not accumulated)
//
// Math, for batch b, query head h, its key/value head g = h / (Hq / Hkv), scale = 1/sqrt(Hs):
//   forward   s[i, j] = scale * q[i] . k[j]            for j <= i (causal; j > i is masked out)
//             lse[i]  = log(sum_{j<=i} exp(s[i, j]))
//             P[i, j] = exp(s[i, j] - lse[i])
//             att[i]  = sum_{j<=i} P[i, j] v[j]
//   backward  dP[i, j] = d_att[i] . v[j]
//             D[i]     = d_att[i] . att[i]             (= sum_j P[i, j] dP[i, j])
//             dS[i, j] = P[i, j] (dP[i, j] - D[i])
//             dq[i]    = scale * sum_{j<=i} dS[i, j] k[j]
//             dk[j]    = scale * sum_{h in group g} sum_{i>=j} dS[i, j] q[i]
//             dv[j]    = sum_{h in group g} sum_{i>=j} P[i, j] d_att[i]
// (the key/value gradients are summed over the Hq/Hkv query heads that share the kv head).
//
// bf16 runs through cuDNN's fused SDPA graphs (attention.cpp): q, k, v, dq, dk, dv are strided
// views into the packed tensors, nothing is copied. cuDNN's "Stats" output is exactly lse above
// (natural log, scale included). fp32 runs through plain CUDA kernels (attention_fp32.cu): correct,
// not fast; used for fp32 models and as a second reference.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "core/tensor.h"

namespace llmq::kernels {

// Owns a cuDNN handle and the cuDNN graphs built so far (one forward and one backward graph per
// (B, T, Hq, Hkv, Hs), built on first use). Not thread-safe: use one context per thread.
class AttentionContext {
 public:
  AttentionContext();
  ~AttentionContext();
  AttentionContext(const AttentionContext&) = delete;
  AttentionContext& operator=(const AttentionContext&) = delete;

  // Device workspace that forward and backward need for this shape (the max of the two; may be 0).
  // Builds (and caches) both graphs. The caller allocates it through llmq::Allocator (Workspace).
  std::size_t workspace_bytes(int B, int T, int Hq, int Hkv, int Hs);

  // bf16 forward: att, qkv bf16; lse fp32. All pointers 16-byte aligned. workspace_size must be at
  // least workspace_bytes(B, T, Hq, Hkv, Hs).
  void forward(void* att, float* lse, const void* qkv, int B, int T, int Hq, int Hkv, int Hs, void* workspace,
               std::size_t workspace_size, cudaStream_t stream);

  // bf16 backward: d_qkv, d_att, att, qkv bf16; lse fp32 as written by forward.
  void backward(void* d_qkv, const void* d_att, const void* att, const float* lse, const void* qkv, int B, int T,
                int Hq, int Hkv, int Hs, void* workspace, std::size_t workspace_size, cudaStream_t stream);

  std::size_t cached_graphs() const;  // forward and backward graphs built so far

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// fp32 reference implementation (attention_fp32.cu); needs no workspace. Any Hs <= 256.
void attention_forward_fp32(float* att, float* lse, const float* qkv, int B, int T, int Hq, int Hkv, int Hs,
                            cudaStream_t stream);
void attention_backward_fp32(float* d_qkv, const float* d_att, const float* att, const float* lse, const float* qkv,
                             int B, int T, int Hq, int Hkv, int Hs, cudaStream_t stream);

// Tensor-level wrappers: qkv [B, T, Hq+2*Hkv, Hs] (or [B, T, (Hq+2*Hkv)*Hs]), att [B, T, Hq, Hs]
// (or [B, T, Hq*Hs]), lse fp32 [B, Hq, T]. Dispatch on dtype: bf16 -> cuDNN (workspace: a device
// tensor of at least ctx.workspace_bytes(...) bytes, any dtype), fp32 -> attention_fp32.cu
// (workspace unused, may be empty). Throws llmq::Error naming the tensor whose shape or dtype is wrong.
void attention_forward(AttentionContext& ctx, const Tensor& att, const Tensor& lse, const Tensor& qkv, int Hq,
                       int Hkv, const Tensor& workspace, cudaStream_t stream);
void attention_backward(AttentionContext& ctx, const Tensor& d_qkv, const Tensor& d_att, const Tensor& att,
                        const Tensor& lse, const Tensor& qkv, int Hq, int Hkv, const Tensor& workspace,
                        cudaStream_t stream);

}  // namespace llmq::kernels
