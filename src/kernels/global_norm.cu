// Global L2 norm of all gradients and the clipping scale derived from it.
//
//   sum_sq     = sum over tensors i, elements j of g_ij^2
//   norm       = sqrt(sum_sq)
//   clip_scale = (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1
// A non-finite norm (a NaN / inf gradient) is written as is so that the log shows it; clip_scale is
// then 1, never a silent 0. The optimizer multiplies gradients by clip_scale (read on the device).
//
// Determinism without atomics: each tensor gets a slot of kGlobalNormBlocksPerTensor fp32 partials;
// block b of a fixed-size grid sums a fixed, strided subset of the tensor's elements and writes
// partial b. The finish kernel sums all partials of all slots in a fixed order. With several GPUs,
// an element-wise sum all-reduce of the partials buffer before the finish gives the global norm.
#include "kernels/global_norm.h"

#include <cstdint>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kSquaresThreads = 512;
constexpr int kFinishThreads = 1024;

template <typename T>
__device__ __forceinline__ float square(T x) {
  const float f = to_float(x);
  return f * f;
}

// Vectors start at the first 16-byte aligned element; the few elements before it and after the
// last whole vector are summed by block 0.
template <typename T>
__global__ void __launch_bounds__(kSquaresThreads)
    sum_squares_kernel(const T* grad, std::size_t n, float* slot_partials) {
  __shared__ float reduce_scratch[kWarpSize];
  constexpr int kVec = Vec<T>::kSize;
  const std::size_t misaligned = (reinterpret_cast<std::uintptr_t>(grad) % 16) / sizeof(T);
  const std::size_t head = misaligned ? min(static_cast<std::size_t>(kVec) - misaligned, n) : 0;
  const std::size_t num_vecs = (n - head) / kVec;
  const std::size_t body_end = head + num_vecs * kVec;

  double thread_sum = 0.0;  // per-thread serial sums can be long; keep them exact enough
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t v = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < num_vecs; v += stride) {
    const Vec<T> x = load_vec_stream(grad + head + v * kVec);
    float vec_sum = 0.f;
    for (int k = 0; k < kVec; ++k) vec_sum += square(x[k]);
    thread_sum += vec_sum;
  }
  if (blockIdx.x == 0) {
    const std::size_t scalar_count = head + (n - body_end);
    for (std::size_t i = threadIdx.x; i < scalar_count; i += blockDim.x) {
      thread_sum += square(grad[i < head ? i : body_end + (i - head)]);
    }
  }
  const float block_total = block_sum(static_cast<float>(thread_sum), reduce_scratch);
  if (threadIdx.x == 0) slot_partials[blockIdx.x] = block_total;
}

__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const float* partials, int count, float max_norm, float* norm_out, float* clip_scale_out) {
  __shared__ float reduce_scratch[kWarpSize];
  double thread_sum = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) thread_sum += partials[i];
  const float sum_sq = block_sum(static_cast<float>(thread_sum), reduce_scratch);
  if (threadIdx.x == 0) {
    const float norm = sqrtf(sum_sq);
    const bool clip = isfinite(norm) && max_norm > 0.f && norm > max_norm;
    *norm_out = norm;
    *clip_scale_out = clip ? max_norm / (norm + 1e-6f) : 1.f;
  }
}

template <typename T>
void launch_sum_squares(const T* grad, std::size_t n, float* partials, int slot, cudaStream_t stream) {
  LLMQ_REQUIRE(slot >= 0, "global_norm_squares: negative slot {}", slot);
  LLMQ_REQUIRE(partials != nullptr, "global_norm_squares: null partials buffer (size it with global_norm_partials_bytes)");
  LLMQ_REQUIRE(n == 0 || grad != nullptr, "global_norm_squares: null gradient pointer for {} elements", n);
  sum_squares_kernel<T><<<kGlobalNormBlocksPerTensor, kSquaresThreads, 0, stream>>>(
      grad, n, partials + static_cast<std::size_t>(slot) * kGlobalNormBlocksPerTensor);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

std::size_t global_norm_partials_bytes(int num_slots) {
  LLMQ_REQUIRE(num_slots >= 0, "global_norm_partials_bytes: negative slot count {}", num_slots);
  return static_cast<std::size_t>(num_slots) * kGlobalNormBlocksPerTensor * sizeof(float);
}

void global_norm_squares(const float* grad, std::size_t n, float* partials, int slot, cudaStream_t stream) {
  launch_sum_squares(grad, n, partials, slot, stream);
}
void global_norm_squares(const nv_bfloat16* grad, std::size_t n, float* partials, int slot, cudaStream_t stream) {
  launch_sum_squares(grad, n, partials, slot, stream);
}

void global_norm_finish(const float* partials, int num_slots, float max_norm, float* norm, float* clip_scale,
                        cudaStream_t stream) {
  LLMQ_REQUIRE(num_slots > 0, "global_norm_finish: {} slots (call global_norm_squares for at least one tensor)",
               num_slots);
  LLMQ_REQUIRE(partials && norm && clip_scale, "global_norm_finish: null partials / norm / clip_scale pointer");
  const long count = static_cast<long>(num_slots) * kGlobalNormBlocksPerTensor;
  LLMQ_REQUIRE(count <= 0x7fffffffL, "global_norm_finish: {} slots is too many", num_slots);
  finish_kernel<<<1, kFinishThreads, 0, stream>>>(partials, static_cast<int>(count), max_norm, norm, clip_scale);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace llmq::kernels
