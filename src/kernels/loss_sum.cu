// loss_sum: sum_r losses[r] and the count of non-ignored targets, via per-block partials over a
// fixed grid and a fixed-order final sum, so the same losses always give the same bits.
#include <cstdint>

#include "core/errors.h"
#include "kernels/cross_entropy.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kLossSumBlocks = 64;
constexpr int kLossSumThreads = 256;

// Block b sums rows b, b + grid, b + 2 grid, ... (per thread), then over the block.
__global__ void __launch_bounds__(kLossSumThreads)
    loss_partials_kernel(const float* losses, const std::int32_t* targets, int R, float* partial_sums,
                         int* partial_counts) {
  __shared__ float sum_scratch[kWarpSize];
  __shared__ int count_scratch[kWarpSize];
  float sum = 0.f;
  int count = 0;
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < R; r += gridDim.x * blockDim.x) {
    sum += losses[r];
    count += targets[r] != kIgnoreTarget;
  }
  sum = block_sum(sum, sum_scratch);
  count = block_sum(count, count_scratch);
  if (threadIdx.x == 0) {
    partial_sums[blockIdx.x] = sum;
    partial_counts[blockIdx.x] = count;
  }
}

// One block of kLossSumBlocks threads: thread i holds partial i.
__global__ void loss_finish_kernel(const float* partial_sums, const int* partial_counts, float* loss_sum,
                                   int* valid_count) {
  __shared__ float sum_scratch[kWarpSize];
  __shared__ int count_scratch[kWarpSize];
  const float sum = block_sum(partial_sums[threadIdx.x], sum_scratch);
  const int count = block_sum(partial_counts[threadIdx.x], count_scratch);
  if (threadIdx.x == 0) {
    *loss_sum = sum;
    *valid_count = count;
  }
}

}  // namespace

std::size_t loss_sum_scratch_bytes() { return kLossSumBlocks * (sizeof(float) + sizeof(int)); }

void loss_sum(const float* losses, const std::int32_t* targets, int R, float* loss_sum, int* valid_count,
              void* scratch, cudaStream_t stream) {
  LLMQ_REQUIRE(R >= 0, "loss_sum: negative row count {}", R);
  LLMQ_REQUIRE(loss_sum && valid_count && scratch, "loss_sum: null output or scratch pointer (scratch needs {} bytes)",
               loss_sum_scratch_bytes());
  LLMQ_REQUIRE(R == 0 || (losses && targets), "loss_sum: null losses/targets pointer for {} rows", R);
  float* partial_sums = static_cast<float*>(scratch);
  int* partial_counts = reinterpret_cast<int*>(partial_sums + kLossSumBlocks);
  loss_partials_kernel<<<kLossSumBlocks, kLossSumThreads, 0, stream>>>(losses, targets, R, partial_sums,
                                                                      partial_counts);
  LLMQ_CUDA_CHECK_LAUNCH();
  loss_finish_kernel<<<1, kLossSumBlocks, 0, stream>>>(partial_sums, partial_counts, loss_sum, valid_count);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace llmq::kernels
