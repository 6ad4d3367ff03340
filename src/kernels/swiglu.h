// SwiGLU activation of the Qwen2 MLP, forward and backward (math in swiglu.cu).
//
// LAYOUT: h [N, 2D] holds the gate projection in columns [0, D) and the up projection in columns
// [D, 2D) of every row (the fused gate_up matmul with weight rows gate_proj then up_proj).
//
// absmax (optional): one fp32 in device memory that the caller zeroes before the producing kernels run;
// the kernel maxes into it |v| over every element it writes (out, or all 2D columns of dh), v taken after
// rounding to the element type. A NaN written leaves NaN there. Null: no abs-max, no extra work.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/dtype.h"
#include "kernels/quantize_blocks.h"

namespace llmq::kernels {

// out[n, j] = silu(h[n, j]) * h[n, D + j], out [N, D]. D % 8 == 0 required.
void swiglu_forward(float* out, const float* h, int N, int D, cudaStream_t stream, float* absmax = nullptr);
void swiglu_forward(nv_bfloat16* out, const nv_bfloat16* h, int N, int D, cudaStream_t stream,
                    float* absmax = nullptr);

// dh[n, j] = d out / d gate, dh[n, D + j] = d out / d up, given dout [N, D] and the forward input h.
// dh may alias h (overwrites h with its gradient).
void swiglu_backward(float* dh, const float* dout, const float* h, int N, int D, cudaStream_t stream,
                     float* absmax = nullptr);
void swiglu_backward(nv_bfloat16* dh, const nv_bfloat16* dout, const nv_bfloat16* h, int N, int D, cudaStream_t stream,
                     float* absmax = nullptr);

// FP8 backward without a bf16 dh (the weight and data gradients of the gate_up matmul read dh as
// e5m2 in both layouts): first swiglu_backward_abs_max maxes into *absmax (zeroed by the caller)
// what swiglu_backward would record, without writing dh; then swiglu_backward_e5m2 computes dh
// again, rounds it to bf16 and writes exactly the bytes quantize_transpose_fp8(q, q_t, E5M2, ...)
// would write for that bf16 dh [N, 2D]: q [N, 2D], q_t [2D, N] and *scale_inv (kernels/quantize.h).
void swiglu_backward_abs_max(float* absmax, const nv_bfloat16* dout, const nv_bfloat16* h, int N, int D,
                             cudaStream_t stream);
void swiglu_backward_e5m2(void* q, void* q_t, float* scale_inv, const nv_bfloat16* dout, const nv_bfloat16* h,
                          const float* absmax, int N, int D, cudaStream_t stream);

// Block-scaled FP8 (1 x 128 blocks, quantize_blocks.h) straight from h, with no bf16 tensor in
// between: the bytes and scales quantize_blocks_fp8(..., Fp8Blocks::Row128, ...) writes for the
// bf16 tensor that swiglu_forward (out [N, D]) or swiglu_backward (dh [N, 2D]) would write. q
// [rows, cols] and/or q_t [cols, rows] with their scale_inv arrays, as there. h and dout 16-byte
// aligned, D % 8 == 0.
void swiglu_forward_blocks_fp8(void* q, float* q_scale_inv, ScaleLayout q_layout, void* q_t, float* q_t_scale_inv,
                               ScaleLayout q_t_layout, DType q_dtype, const nv_bfloat16* h, int N, int D,
                               cudaStream_t stream);
void swiglu_backward_blocks_fp8(void* q, float* q_scale_inv, ScaleLayout q_layout, void* q_t, float* q_t_scale_inv,
                                ScaleLayout q_t_layout, DType q_dtype, const nv_bfloat16* dout, const nv_bfloat16* h,
                                int N, int D, cudaStream_t stream);

}  // namespace llmq::kernels
