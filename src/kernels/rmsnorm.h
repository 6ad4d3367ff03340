// RMSNorm forward (plain and fused with the residual add) and backward (math in rmsnorm.cu).
//
// absmax (optional, every launcher): one fp32 in device memory that the caller zeroes before the
// producing kernels run; the kernel maxes into it |v| over every element of the tensor that later feeds an
// FP8 GEMM (out in the forward, not residual_out; dx in the backward), v taken after rounding to the
// element type. A NaN in that tensor leaves NaN there. Null: no abs-max, no extra work.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace llmq::kernels {

// Largest C the kernels accept (8192: a row must fit the registers of one block).
int rmsnorm_max_width();

// out = x * rstd * w with rstd[n] = 1 / sqrt(mean_c x[n, c]^2 + eps). x, out [N, C]; w [C];
// rstd fp32 [N] (may be null: not saved). out may alias x. C % 8 == 0 required.
// absmax: max |out|.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, float eps, int N, int C,
                     cudaStream_t stream, float* absmax = nullptr);
void rmsnorm_forward(nv_bfloat16* out, float* rstd, const nv_bfloat16* x, const nv_bfloat16* w, float eps, int N, int C,
                     cudaStream_t stream, float* absmax = nullptr);

// residual_out = residual + x (rounded to the element type), then out = rmsnorm(residual_out), in one pass.
// residual_out may alias residual or x; rstd may be null. absmax: max |out| (the normalised output only).
void fused_residual_rmsnorm_forward(float* residual_out, float* out, float* rstd, const float* residual, const float* x,
                                    const float* w, float eps, int N, int C, cudaStream_t stream,
                                    float* absmax = nullptr);
void fused_residual_rmsnorm_forward(nv_bfloat16* residual_out, nv_bfloat16* out, float* rstd,
                                    const nv_bfloat16* residual, const nv_bfloat16* x, const nv_bfloat16* w, float eps,
                                    int N, int C, cudaStream_t stream, float* absmax = nullptr);

// Bytes of fp32 scratch rmsnorm_backward needs for N rows of width C (either element type).
std::size_t rmsnorm_backward_scratch_bytes(int N, int C);

// x is the tensor that was normalised (residual_out for the fused variant), rstd as saved by the forward.
//   dx = (dresidual ? dresidual : 0) + rstd * (g - xhat * mean_c(g * xhat)),  g = dout * w, xhat = x * rstd
//   dw += sum_n dout * xhat      (adds to dw; bit-reproducible two-pass reduction through `scratch`)
// dx may alias dresidual (in-place accumulation into the residual gradient) or dout.
// scratch: rmsnorm_backward_scratch_bytes(N, C) bytes, 16-byte aligned, contents ignored.
// absmax: max |dx| (the written dx, dresidual included).
void rmsnorm_backward(float* dx, float* dw, float* scratch, const float* dresidual, const float* dout, const float* x,
                      const float* w, const float* rstd, int N, int C, cudaStream_t stream, float* absmax = nullptr);
void rmsnorm_backward(nv_bfloat16* dx, nv_bfloat16* dw, float* scratch, const nv_bfloat16* dresidual,
                      const nv_bfloat16* dout, const nv_bfloat16* x, const nv_bfloat16* w, const float* rstd, int N,
                      int C, cudaStream_t stream, float* absmax = nullptr);
// fp32 weight gradient with bf16 activations (fp32 gradient accumulation of a bf16 model).
void rmsnorm_backward(nv_bfloat16* dx, float* dw, float* scratch, const nv_bfloat16* dresidual, const nv_bfloat16* dout,
                      const nv_bfloat16* x, const nv_bfloat16* w, const float* rstd, int N, int C, cudaStream_t stream,
                      float* absmax = nullptr);

}  // namespace llmq::kernels
