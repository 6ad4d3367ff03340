// Bias add and its gradient for [N, C] row-major tensors (math in bias.cu).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace llmq::kernels {

// out[n, c] += bias[c]
void bias_forward(float* out, const float* bias, int N, int C, cudaStream_t stream);
void bias_forward(nv_bfloat16* out, const nv_bfloat16* bias, int N, int C, cudaStream_t stream);

// Scratch for bias_backward with these sizes (fp32 partial column sums).
std::size_t bias_backward_scratch_bytes(int N, int C);

// dbias[c] += sum_n dout[n, c], summed in a fixed order (bit-reproducible, no atomics).
void bias_backward(float* dbias, const float* dout, int N, int C, void* scratch, cudaStream_t stream);
void bias_backward(nv_bfloat16* dbias, const nv_bfloat16* dout, int N, int C, void* scratch, cudaStream_t stream);
void bias_backward(float* dbias, const nv_bfloat16* dout, int N, int C, void* scratch, cudaStream_t stream);

}  // namespace llmq::kernels
