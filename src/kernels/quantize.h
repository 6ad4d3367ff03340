// FP8 per-tensor "current scaling": abs-max of a tensor, and quantization of bf16 tensors to
// e4m3 / e5m2 with the scale taken from that abs-max (math in quantize.cu). Every scale lives in
// device memory, so nothing here synchronizes with the host.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "core/dtype.h"

namespace llmq::kernels {

// Largest finite value of an FP8 format: 448 for e4m3, 57344 for e5m2. Throws for other dtypes.
float fp8_max(DType fp8_dtype);

// *absmax = max_i |x[i]| (one float on the device; 0 for n == 0, NaN if any x[i] is NaN).
// Zeroes *absmax on the stream itself first.
void abs_max(float* absmax, const nv_bfloat16* x, std::size_t n, cudaStream_t stream);
void abs_max(float* absmax, const float* x, std::size_t n, cudaStream_t stream);

// q[i] = fp8(x[i] * scale) with scale = fp8_max / *absmax (see quantize.cu for the zero / inf / NaN
// cases) and *scale_inv = 1 / scale, so that x[i] ~= q[i] * *scale_inv. q holds n elements of
// q_dtype (E4M3 or E5M2). absmax and scale_inv are single floats on the device.
void quantize_fp8(void* q, DType q_dtype, float* scale_inv, const nv_bfloat16* x, const float* absmax, std::size_t n,
                  cudaStream_t stream);

// The same quantization of x [rows, cols] (row-major), writing in one pass q [rows, cols] and its
// transpose q_t [cols, rows] (each may be null, not both). Hopper FP8 GEMMs read both operands
// K-major, so a tensor used on both sides of the backward pass needs both layouts.
void quantize_transpose_fp8(void* q, void* q_t, DType q_dtype, float* scale_inv, const nv_bfloat16* x,
                            const float* absmax, int rows, int cols, cudaStream_t stream);

}  // namespace llmq::kernels
