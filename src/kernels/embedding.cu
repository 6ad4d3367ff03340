// Token embedding: lookup (forward) and scatter-add of the gradient (backward).
//
// Shapes: tokens int32 [N], wte [V, C], out / dout [N, C], dwte [V, C]; fp32 or bf16 (also bf16 dout into an
// fp32 dwte), fp32 math.
//   Forward:  out[n, c] = wte[tokens[n], c]
//             A token outside [0, V) gives a row of zeros, never an out-of-bounds read (the data loader
//             rejects such tokens earlier; this only keeps a bad token from crashing the device).
//   Backward: dwte[v, c] += sum_{n : tokens[n] == v} dout[n, c]          (adds: dwte is not cleared)
//             Tokens outside [0, V) contribute nothing, matching their zero rows in the forward.
//
// Determinism: token ids repeat (<|endoftext|>, punctuation), so "one thread per position adds its
// row" would race or need float atomics whose order varies. The ids are on the host before the step,
// so make_embedding_backward_plan() groups the positions by id once per micro-batch. In the kernel,
// each (unique id, 32-vector column chunk) belongs to exactly one warp, which sums the id's positions
// in ascending position order in fp32 and then adds the sum to dwte: no atomics, one writer per
// element, and the same bits on every run.
//
// Plan layout: 3N + 2 int32, a size fixed by N so that the launch depends on N alone:
//   [0]               U = number of unique token ids
//   [1, 1 + N)        unique ids, ascending (the first U are used)
//   [1 + N, 2 + 2N)   offsets (the first U + 1 are used): id u owns positions[offsets[u], offsets[u + 1])
//   [2 + 2N, 2 + 3N)  positions 0..N-1 grouped by id, ascending within an id
//
// Requirements: C % 8 == 0 (one 16-byte vector = 4 fp32 / 8 bf16 per access; our widths 896 ... 5120
// qualify), all pointers 16-byte aligned.
#include "kernels/embedding.h"

#include <algorithm>
#include <cstdint>
#include <numeric>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kForwardThreads = 256;
constexpr int kBackwardThreads = 256;
constexpr int kBackwardMaxBlocks = 4096;  // warps stride over work items beyond this
constexpr int kBackwardPrefetch = 4;      // dout rows loaded before they are summed (latency hiding)

struct PlanView {
  const std::int32_t* unique_tokens;
  const std::int32_t* offsets;
  const std::int32_t* positions;
};

__host__ __device__ inline PlanView plan_view(const std::int32_t* plan, int N) {
  return PlanView{plan + 1, plan + 1 + N, plan + 2 + 2 * static_cast<long>(N)};
}

// One thread per 16-byte vector of the output.
template <typename T>
__global__ void embedding_forward_kernel(T* __restrict__ out, const std::int32_t* __restrict__ tokens,
                                         const T* __restrict__ wte, int N, int V, int C) {
  constexpr int K = Vec<T>::kSize;
  const int vecs_per_row = C / K;
  const long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<long>(N) * vecs_per_row) return;
  const long n = i / vecs_per_row;
  const int c = static_cast<int>(i % vecs_per_row) * K;
  const int token = tokens[n];
  Vec<T> row;
  if (token >= 0 && token < V) {
    row = load_vec(wte + static_cast<long>(token) * C + c);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) row[k] = from_float<T>(0.f);
  }
  store_vec(out + n * C + c, row);
}

// Work item = (unique id u, column chunk of 32 vectors of dout); each lane owns one vector of the chunk.
// TG (type of dwte) is T, or fp32 with bf16 dout.
template <typename T, typename TG>
__global__ void embedding_backward_kernel(TG* dwte, const T* __restrict__ dout, const std::int32_t* __restrict__ plan,
                                          int N, int V, int C) {
  constexpr int K = Vec<T>::kSize;
  constexpr int KG = Vec<TG>::kSize;
  static_assert(K % KG == 0, "a dout vector must cover whole dwte vectors");
  constexpr int kChunkWidth = kWarpSize * K;
  const PlanView view = plan_view(plan, N);
  const int num_unique = plan[0];
  const int chunks_per_row = ceil_div(C, kChunkWidth);
  const long num_items = static_cast<long>(num_unique) * chunks_per_row;
  const int lane = threadIdx.x % kWarpSize;
  const long num_warps = static_cast<long>(gridDim.x) * blockDim.x / kWarpSize;

  for (long item = (static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize; item < num_items;
       item += num_warps) {
    const int u = static_cast<int>(item / chunks_per_row);
    const int c = static_cast<int>(item % chunks_per_row) * kChunkWidth + lane * K;
    const int token = view.unique_tokens[u];
    if (token < 0 || token >= V || c >= C) continue;

    float sum[K];
#pragma unroll
    for (int k = 0; k < K; ++k) sum[k] = 0.f;
    const int end = view.offsets[u + 1];
    int p = view.offsets[u];
    // Loads of several rows are issued before any is added; the additions stay in position order.
    for (; p + kBackwardPrefetch <= end; p += kBackwardPrefetch) {
      Vec<T> rows[kBackwardPrefetch];
#pragma unroll
      for (int j = 0; j < kBackwardPrefetch; ++j)
        rows[j] = load_vec(dout + static_cast<long>(view.positions[p + j]) * C + c);
#pragma unroll
      for (int j = 0; j < kBackwardPrefetch; ++j) {
#pragma unroll
        for (int k = 0; k < K; ++k) sum[k] += to_float(rows[j][k]);
      }
    }
    for (; p < end; ++p) {
      const Vec<T> row = load_vec(dout + static_cast<long>(view.positions[p]) * C + c);
#pragma unroll
      for (int k = 0; k < K; ++k) sum[k] += to_float(row[k]);
    }

    TG* grad = dwte + static_cast<long>(token) * C + c;
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += KG) {
      Vec<TG> g = load_vec(grad + k0);
#pragma unroll
      for (int k = 0; k < KG; ++k) g[k] = from_float<TG>(to_float(g[k]) + sum[k0 + k]);
      store_vec(grad + k0, g);
    }
  }
}

void require_aligned(const void* p, const char* what, const char* op) {
  LLMQ_REQUIRE(aligned16(p),
               "{}: {} at {} is not 16-byte aligned (kernels use 16-byte vector access; offset views by "
               "multiples of 8 elements)",
               op, what, p);
}

void require_shapes(const char* op, int N, int V, int C) {
  LLMQ_REQUIRE(N > 0 && V > 0 && C > 0, "{}: sizes must be positive (N={}, V={}, C={})", op, N, V, C);
  LLMQ_REQUIRE(C % 8 == 0, "{}: C={} is not a multiple of 8 (16-byte vector access); pad the model width", op, C);
}

template <typename T>
void launch_forward(T* out, const std::int32_t* tokens, const T* wte, int N, int V, int C, cudaStream_t stream) {
  require_shapes("embedding_forward", N, V, C);
  require_aligned(out, "out", "embedding_forward");
  require_aligned(wte, "wte", "embedding_forward");
  LLMQ_REQUIRE(tokens != nullptr, "embedding_forward: tokens is null");
  const long vectors = static_cast<long>(N) * (C / Vec<T>::kSize);
  embedding_forward_kernel<T>
      <<<ceil_div(vectors, kForwardThreads), kForwardThreads, 0, stream>>>(out, tokens, wte, N, V, C);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <typename T, typename TG>
void launch_backward(TG* dwte, const T* dout, const std::int32_t* plan, int N, int V, int C, cudaStream_t stream) {
  require_shapes("embedding_backward", N, V, C);
  require_aligned(dwte, "dwte", "embedding_backward");
  require_aligned(dout, "dout", "embedding_backward");
  LLMQ_REQUIRE(plan != nullptr, "embedding_backward: plan is null (upload make_embedding_backward_plan(...).data)");
  const int chunks_per_row = ceil_div(C, kWarpSize * Vec<T>::kSize);
  const long max_items = static_cast<long>(N) * chunks_per_row;  // U <= N
  const int warps_per_block = kBackwardThreads / kWarpSize;
  const int blocks = std::min<long>(ceil_div(max_items, warps_per_block), kBackwardMaxBlocks);
  embedding_backward_kernel<T, TG><<<blocks, kBackwardThreads, 0, stream>>>(dwte, dout, plan, N, V, C);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

std::size_t embedding_backward_plan_elements(int N) { return 3 * static_cast<std::size_t>(N) + 2; }

EmbeddingBackwardPlan make_embedding_backward_plan(const std::int32_t* host_tokens, int N) {
  LLMQ_REQUIRE(N > 0, "make_embedding_backward_plan: N={} positions; need at least one", N);
  LLMQ_REQUIRE(host_tokens != nullptr, "make_embedding_backward_plan: host_tokens is null");
  std::vector<std::int32_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return host_tokens[a] < host_tokens[b]; });

  EmbeddingBackwardPlan plan;
  plan.num_positions = N;
  plan.data.assign(embedding_backward_plan_elements(N), 0);
  std::int32_t* unique_tokens = plan.data.data() + 1;
  std::int32_t* offsets = plan.data.data() + 1 + N;
  std::int32_t* positions = plan.data.data() + 2 + 2 * static_cast<std::size_t>(N);
  int u = 0;
  for (int i = 0; i < N; ++i) {
    const std::int32_t token = host_tokens[order[i]];
    if (i == 0 || token != host_tokens[order[i - 1]]) {
      unique_tokens[u] = token;
      offsets[u] = i;
      ++u;
    }
    positions[i] = order[i];
  }
  offsets[u] = N;
  plan.data[0] = u;
  plan.num_unique = u;
  return plan;
}

void embedding_forward(float* out, const std::int32_t* tokens, const float* wte, int N, int V, int C,
                       cudaStream_t stream) {
  launch_forward(out, tokens, wte, N, V, C, stream);
}
void embedding_forward(nv_bfloat16* out, const std::int32_t* tokens, const nv_bfloat16* wte, int N, int V, int C,
                       cudaStream_t stream) {
  launch_forward(out, tokens, wte, N, V, C, stream);
}

void embedding_backward(float* dwte, const float* dout, const std::int32_t* plan, int N, int V, int C,
                        cudaStream_t stream) {
  launch_backward(dwte, dout, plan, N, V, C, stream);
}
void embedding_backward(nv_bfloat16* dwte, const nv_bfloat16* dout, const std::int32_t* plan, int N, int V, int C,
                        cudaStream_t stream) {
  launch_backward(dwte, dout, plan, N, V, C, stream);
}
void embedding_backward(float* dwte, const nv_bfloat16* dout, const std::int32_t* plan, int N, int V, int C,
                        cudaStream_t stream) {
  launch_backward(dwte, dout, plan, N, V, C, stream);
}

}  // namespace llmq::kernels
