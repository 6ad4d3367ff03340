// AdamW optimizer step (math in adamw.cu) for one parameter tensor (adamw_update) or for many pieces
// of tensors lying in flat arrays in a few launches (adamw_update_multi). Parameters, gradients and
// the two moments are each fp32 or bf16; bf16 outputs use stochastic rounding seeded per
// (seed, step, element), so the same call with the same seed always gives the same bits, and a
// tensor updated in slices (index_offset) gets the same bits as one update of the whole.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llmq::kernels {

struct AdamWConfig {
  float lr = 0.f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.f;  // decoupled (p -= lr * wd * p); the caller passes 0 for tensors without decay
  int step = 1;              // t >= 1, for the bias corrections 1 - beta^t
  std::uint32_t seed = 0;    // stochastic rounding; give every tensor its own seed
  // Index within its tensor of the first element passed (the rounding hash input), for updates of a
  // tensor in slices: slice [a, b) is params + a, n = b - a, index_offset = a.
  std::uint64_t index_offset = 0;
};

// Updates params, m and v in place for elements [0, n); any of them may be mapped pinned host
// memory (zero-copy). grad_scale: device pointer to the factor applied to the gradients (clip
// scale times any other factor), nullptr = 1. params_bf16_copy: optional (nullptr = none) bf16
// copy of the updated parameters, rounded to nearest (e.g. the bf16 forward weights next to fp32
// master weights).
// Instantiated for every combination of float / nv_bfloat16.
template <typename TParam, typename TGrad, typename TMoment1, typename TMoment2>
void adamw_update(TParam* params, const TGrad* grads, TMoment1* m, TMoment2* v, std::size_t n,
                  const AdamWConfig& config, const float* grad_scale, nv_bfloat16* params_bf16_copy,
                  cudaStream_t stream);

// One piece of one tensor in a multi-tensor update: flat elements [begin, begin + n) of the arrays passed.
struct AdamWPiece {
  std::int64_t begin = 0;           // element offset within the arrays passed to adamw_update_multi
  std::uint64_t n = 0;              // elements
  std::uint64_t index_offset = 0;   // index of element `begin` within its tensor (as AdamWConfig::index_offset)
  std::uint32_t seed = 0;           // as AdamWConfig::seed
  float weight_decay = 0.f;         // as AdamWConfig::weight_decay (0: no decay)
};

// Updates every piece (disjoint, else llmq::Error; any order; any count, including 0) with the shared
// hyper-parameters of `shared` (lr, betas, eps, step; its weight_decay / seed / index_offset are ignored)
// in few launches (up to 64 pieces each). Bit-identical to one adamw_update per piece with config
// {shared, weight_decay, seed, index_offset} and params_bf16_copy = nullptr. Elements outside the pieces
// are never touched. Memory and grad_scale as for adamw_update; the pointers may be null when no piece
// has elements. All pieces are checked before anything is launched (a bad list updates nothing).
// Instantiated for every combination of float / nv_bfloat16.
template <typename TParam, typename TGrad, typename TMoment1, typename TMoment2>
void adamw_update_multi(TParam* params, const TGrad* grads, TMoment1* m, TMoment2* v,
                        const std::vector<AdamWPiece>& pieces, const AdamWConfig& shared, const float* grad_scale,
                        cudaStream_t stream);

}  // namespace llmq::kernels
