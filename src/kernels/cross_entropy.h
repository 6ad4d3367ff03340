// Fused softmax cross-entropy for the chunked LM head (math and kernel organisation in cross_entropy.cu).
// The launcher overwrites a chunk of logits [R, V] with their gradient, so a chunk of fp32/bf16
// logits is the only vocabulary-sized buffer ever needed.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace llmq::kernels {

// Target id that marks a position without loss (padding, masked prompt tokens).
inline constexpr std::int32_t kIgnoreTarget = -1;

// The factor the gradient is scaled by: a value, or a device float read when the kernel runs (a CUDA
// graph replays its kernels' arguments as captured; a per-micro-batch scale must live in memory).
struct GradScale {
  GradScale(float v) : value(v) {}  // NOLINT(google-explicit-constructor): a plain float is the usual case
  static GradScale in_device_memory(const float* device) {
    GradScale s(0.f);
    s.device = device;
    return s;
  }
#ifdef __CUDACC__
  __device__ float get() const { return device ? *device : value; }
#endif
  float value;
  const float* device = nullptr;
};

// For each of the R rows: losses[r] = lse - logits[r, target] + z_loss * lse^2 (0 when ignored) and,
// in place, logits[r, :] <- (softmax * (1 + 2 z_loss lse) - onehot(target)) * grad_scale (0 when ignored).
// A target outside [-1, V) gives a NaN loss so that the bad data shows up in the log.
void cross_entropy_forward_backward(float* logits, const std::int32_t* targets, float* losses, int R, int V,
                                    GradScale grad_scale, float z_loss, cudaStream_t stream);
void cross_entropy_forward_backward(nv_bfloat16* logits, const std::int32_t* targets, float* losses, int R, int V,
                                    GradScale grad_scale, float z_loss, cudaStream_t stream);

// CTAs that share one row of bf16 logits of width V on the current device: 1..8 when the bf16 launcher
// runs the single-read cluster kernel, 0 when it runs the two-pass kernel (a row too wide for 8 CTAs'
// shared memory, no cluster support, or a refused cluster launch). The launcher decides by itself;
// this is for tests and benchmarks.
int cross_entropy_bf16_ctas_per_row(int V);

// Scratch needed by loss_sum (independent of R).
std::size_t loss_sum_scratch_bytes();

// loss_sum[0] = sum_r losses[r] and valid_count[0] = #{r : targets[r] != -1}, both written (not added),
// in a fixed summation order: the same inputs always give the same bits.
void loss_sum(const float* losses, const std::int32_t* targets, int R, float* loss_sum, int* valid_count,
              void* scratch, cudaStream_t stream);

}  // namespace llmq::kernels
