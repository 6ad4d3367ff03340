// Rotary position embedding ("rotate half", Qwen2/Llama) on the q and k heads of a packed qkv tensor
// (math in rope.cu).
//
// absmax (optional, rope_forward / rope_backward): one fp32 in device memory that the caller zeroes
// before the producing kernels run; the kernel maxes into it |v| over the whole output tensor, q, k and
// v heads (in place the untouched v heads are read for it), rotated values taken after rounding to the
// element type. A NaN there leaves NaN. Null: no abs-max, no extra work.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace llmq::kernels {

// Fills cos_sin [T, Hs/2] (float2 {cos, sin}) for positions 0..T-1 the way transformers computes it in
// fp32. round_to_bf16: round cos and sin to bf16 values (what transformers multiplies with in a bf16
// model); false for fp32 models. Hs even and > 0.
void rope_cos_sin_table(float2* cos_sin, int T, int Hs, float theta, bool round_to_bf16, cudaStream_t stream);

// qkv [B, T, Hq + 2*Hkv, Hs]: q heads, then k heads, then v heads; cos_sin has at least T rows.
// Rotates q and k by +angle. out == in: in place, v untouched; out != in: out gets the rotated q, k
// and a copy of v. Hs % 16 == 0 required.
// absmax: max |out| (diagnostics and tests; q and k feed attention, not a GEMM of ours).
void rope_forward(float* out, const float* in, const float2* cos_sin, int B, int T, int Hq, int Hkv, int Hs,
                  cudaStream_t stream, float* absmax = nullptr);
void rope_forward(nv_bfloat16* out, const nv_bfloat16* in, const float2* cos_sin, int B, int T, int Hq, int Hkv, int Hs,
                  cudaStream_t stream, float* absmax = nullptr);

// Gradient: rotates dq and dk of dqkv by -angle (the transpose of the forward rotation); same layout,
// in-place and copy rules as rope_forward (the dv part is copied when dinp != dout).
// absmax: max |dinp| over dq, dk and dv (dinp is the input of the qkv weight-gradient GEMMs).
void rope_backward(float* dinp, const float* dout, const float2* cos_sin, int B, int T, int Hq, int Hkv, int Hs,
                   cudaStream_t stream, float* absmax = nullptr);
void rope_backward(nv_bfloat16* dinp, const nv_bfloat16* dout, const float2* cos_sin, int B, int T, int Hq, int Hkv,
                   int Hs, cudaStream_t stream, float* absmax = nullptr);

}  // namespace llmq::kernels
