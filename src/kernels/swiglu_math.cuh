// The SwiGLU value and derivative at one element (math in swiglu.cu's header), shared by swiglu.cu and
// swiglu_fp8.cu so that both compute the same bits. Included only from .cu files.
#pragma once

namespace llmq::kernels {

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// out = silu(g) * u, before rounding.
__device__ __forceinline__ float swiglu_value(float g, float u) { return g * sigmoid(g) * u; }

// d out / d gate and d out / d up for gate g, up u and upstream gradient dy, before rounding.
__device__ __forceinline__ void swiglu_grad(float g, float u, float dy, float& dgate, float& dup) {
  const float sig = sigmoid(g);
  dgate = dy * u * sig * (1.f + g * (1.f - sig));
  dup = dy * g * sig;
}

}  // namespace llmq::kernels
