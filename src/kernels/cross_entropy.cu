// Fused softmax cross-entropy, forward and backward in one kernel, applied to one chunk of rows
// of the LM head output so that B*T*V logits never exist at once.
//
// Shapes: logits [R, V] (fp32 or bf16, row-major, R rows of this chunk), targets int32 [R],
// losses fp32 [R]. Per row r with target t (t == -1: ignored position):
//   M       = max_j x_j
//   lse     = M + log(sum_j exp(x_j - M))                          (fp32 throughout)
//   p_j     = exp(x_j - lse)                                       (softmax)
//   loss_r  = lse - x_t + z * lse^2                                (z: z-loss weight, 0 = off)
//   dx_j    = (p_j - [j == t] + 2 z lse p_j) * grad_scale           (d loss_r / d x_j, scaled)
// dx overwrites x in place. Ignored rows get loss 0 and dx = 0. grad_scale is usually
// 1 / (number of non-ignored targets in the whole step), which makes dx the gradient of the mean loss.
//
// One block per row, two passes over the row: pass 1 keeps a running (max, sum of exp) per thread
// (rescaled when the max grows), combined over the block; pass 2 rereads x and writes dx.
// Rows are traversed as 16-byte vectors, with scalar head/tail elements where the row start is not
// 16-byte aligned or V is not a multiple of the vector width.
//
// loss_sum: sum_r losses[r] and the count of non-ignored targets, via per-block partials over a
// fixed grid and a fixed-order final sum (bit-reproducible).
#include "kernels/cross_entropy.h"

#include <cstdint>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kRowThreads = 512;
constexpr int kLossSumBlocks = 64;
constexpr int kLossSumThreads = 256;

// A row splits into scalar elements [0, head), 16-byte vectors [head, body_end), scalar [body_end, V).
struct RowSplit {
  int head;
  int body_end;
  int scalar_count;  // head + (V - body_end)
  // Index of the i-th scalar element.
  __device__ int scalar_index(int i) const { return i < head ? i : body_end + (i - head); }
};

template <typename T>
__device__ RowSplit split_row(const T* row, int V) {
  constexpr int kVec = Vec<T>::kSize;
  const int misaligned = static_cast<int>((reinterpret_cast<std::uintptr_t>(row) % 16) / sizeof(T));
  const int head = misaligned ? min(kVec - misaligned, V) : 0;
  const int body_end = head + (V - head) / kVec * kVec;
  return {head, body_end, head + (V - body_end)};
}

// Adds `count` values to a running (max m, sum s of exp(x - m)), rescaling s when the max grows.
__device__ __forceinline__ void online_softmax_add(float& m, float& s, const float* x, int count) {
  float new_max = m;
  for (int j = 0; j < count; ++j) new_max = fmaxf(new_max, x[j]);
  if (new_max == -INFINITY) return;  // only -inf so far: contributes nothing
  if (new_max > m) {
    s = (m == -INFINITY) ? 0.f : s * expf(m - new_max);
    m = new_max;
  }
  for (int j = 0; j < count; ++j) s += expf(x[j] - m);
}

template <typename T>
__device__ void zero_row(T* row, const RowSplit& split) {
  constexpr int kVec = Vec<T>::kSize;
  Vec<T> zeros;
  for (int k = 0; k < kVec; ++k) zeros[k] = from_float<T>(0.f);
  for (int i = split.head + threadIdx.x * kVec; i < split.body_end; i += blockDim.x * kVec) store_vec(row + i, zeros);
  for (int i = threadIdx.x; i < split.scalar_count; i += blockDim.x) row[split.scalar_index(i)] = from_float<T>(0.f);
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    cross_entropy_kernel(T* logits, const std::int32_t* targets, float* losses, int V, float grad_scale, float z_loss) {
  __shared__ float reduce_scratch[kWarpSize];
  constexpr int kVec = Vec<T>::kSize;
  const int r = blockIdx.x;
  T* row = logits + static_cast<std::size_t>(r) * V;
  const RowSplit split = split_row(row, V);
  const int target = targets[r];

  if (target == kIgnoreTarget) {
    zero_row(row, split);
    if (threadIdx.x == 0) losses[r] = 0.f;
    return;
  }
  const bool target_in_range = target >= 0 && target < V;
  // Read before the block reductions below: their barriers order it before any pass-2 write.
  const float target_logit = (threadIdx.x == 0 && target_in_range) ? to_float(row[target]) : NAN;

  // Pass 1: running max and sum of exponentials.
  float m = -INFINITY, s = 0.f;
  for (int i = split.head + threadIdx.x * kVec; i < split.body_end; i += blockDim.x * kVec) {
    const Vec<T> v = load_vec(row + i);
    float x[kVec];
    for (int k = 0; k < kVec; ++k) x[k] = to_float(v[k]);
    online_softmax_add(m, s, x, kVec);
  }
  for (int i = threadIdx.x; i < split.scalar_count; i += blockDim.x) {
    const float x = to_float(row[split.scalar_index(i)]);
    online_softmax_add(m, s, &x, 1);
  }
  const float row_max = block_max(m, reduce_scratch);
  const float rescaled = (m == -INFINITY) ? 0.f : s * expf(m - row_max);
  const float lse = row_max + logf(block_sum(rescaled, reduce_scratch));

  if (threadIdx.x == 0) losses[r] = lse - target_logit + z_loss * lse * lse;

  // Pass 2: dx = (p * (1 + 2 z lse) - onehot) * grad_scale, written over x.
  const float softmax_factor = (1.f + 2.f * z_loss * lse) * grad_scale;
  for (int i = split.head + threadIdx.x * kVec; i < split.body_end; i += blockDim.x * kVec) {
    Vec<T> v = load_vec(row + i);
    for (int k = 0; k < kVec; ++k) {
      float dx = expf(to_float(v[k]) - lse) * softmax_factor;
      if (i + k == target) dx -= grad_scale;
      v[k] = from_float<T>(dx);
    }
    store_vec(row + i, v);
  }
  for (int i = threadIdx.x; i < split.scalar_count; i += blockDim.x) {
    const int j = split.scalar_index(i);
    float dx = expf(to_float(row[j]) - lse) * softmax_factor;
    if (j == target) dx -= grad_scale;
    row[j] = from_float<T>(dx);
  }
}

__device__ __forceinline__ int block_sum_int(int x, int* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  x = __reduce_add_sync(0xffffffffu, x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : 0;
  return __reduce_add_sync(0xffffffffu, x);
}

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
  count = block_sum_int(count, count_scratch);
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
  const int count = block_sum_int(partial_counts[threadIdx.x], count_scratch);
  if (threadIdx.x == 0) {
    *loss_sum = sum;
    *valid_count = count;
  }
}

template <typename T>
void launch_cross_entropy(T* logits, const std::int32_t* targets, float* losses, int R, int V, float grad_scale,
                          float z_loss, cudaStream_t stream) {
  LLMQ_REQUIRE(R >= 0 && V > 0, "cross_entropy: bad shape R={} V={} (need R >= 0, V > 0)", R, V);
  if (R == 0) return;
  LLMQ_REQUIRE(logits && targets && losses, "cross_entropy: null pointer (logits {}, targets {}, losses {})",
               static_cast<const void*>(logits), static_cast<const void*>(targets), static_cast<const void*>(losses));
  cross_entropy_kernel<T><<<R, kRowThreads, 0, stream>>>(logits, targets, losses, V, grad_scale, z_loss);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void cross_entropy_forward_backward(float* logits, const std::int32_t* targets, float* losses, int R, int V,
                                    float grad_scale, float z_loss, cudaStream_t stream) {
  launch_cross_entropy(logits, targets, losses, R, V, grad_scale, z_loss, stream);
}
void cross_entropy_forward_backward(nv_bfloat16* logits, const std::int32_t* targets, float* losses, int R, int V,
                                    float grad_scale, float z_loss, cudaStream_t stream) {
  launch_cross_entropy(logits, targets, losses, R, V, grad_scale, z_loss, stream);
}

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
