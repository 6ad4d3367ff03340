// Token embedding lookup and its deterministic gradient (math in embedding.cu).
// The backward pass needs a per-micro-batch plan built on the host from the token ids.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llmq::kernels {

// Positions of one micro-batch grouped by token id. `data` (3N + 2 int32, layout in embedding.cu)
// is uploaded to the device as is and passed to embedding_backward; its size depends on N only.
struct EmbeddingBackwardPlan {
  int num_positions = 0;           // N
  int num_unique = 0;              // U, distinct token ids among the N positions
  std::vector<std::int32_t> data;  // embedding_backward_plan_elements(N) entries
};

// Number of int32 entries of a plan for N positions (3N + 2).
std::size_t embedding_backward_plan_elements(int N);

// Groups positions 0..N-1 by host_tokens[n]: unique ids ascending, positions ascending within an id.
EmbeddingBackwardPlan make_embedding_backward_plan(const std::int32_t* host_tokens, int N);

// out[n, :] = wte[tokens[n], :]; a token outside [0, V) gives a zero row. C % 8 == 0 required.
void embedding_forward(float* out, const std::int32_t* tokens, const float* wte, int N, int V, int C,
                       cudaStream_t stream);
void embedding_forward(nv_bfloat16* out, const std::int32_t* tokens, const nv_bfloat16* wte, int N, int V, int C,
                       cudaStream_t stream);

// dwte[v, :] += sum_{n: tokens[n] == v} dout[n, :] (adds to dwte), using `plan` = the device copy of
// EmbeddingBackwardPlan::data for these N positions. Bit-reproducible; tokens outside [0, V) are skipped.
void embedding_backward(float* dwte, const float* dout, const std::int32_t* plan, int N, int V, int C,
                        cudaStream_t stream);
void embedding_backward(nv_bfloat16* dwte, const nv_bfloat16* dout, const std::int32_t* plan, int N, int V, int C,
                        cudaStream_t stream);
// fp32 gradient table with bf16 activations (fp32 gradient accumulation of a bf16 model).
void embedding_backward(float* dwte, const nv_bfloat16* dout, const std::int32_t* plan, int N, int V, int C,
                        cudaStream_t stream);

}  // namespace llmq::kernels
