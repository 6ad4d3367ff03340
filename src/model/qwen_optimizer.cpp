// QwenModel: the optimizer step. Global gradient norm and clip scale, then AdamW on every
// parameter, then the gradients are zeroed. Weights, gradients and moments are reached through
// StateStreamer (state_streamer.h): on the device, in pinned host memory in place (zero-copy), or
// streamed through device staging buffers in chunks that ignore parameter boundaries. A parameter
// cut by chunk edges is updated piece by piece with AdamWConfig::index_offset, so its stochastic
// rounding draws the same bits, and the step gives the same result, however the state is placed.
// The norm likewise: one partial slot per parameter, summed in parameter order, whether a
// gradient's partial was taken here or (offloaded gradients) in the backward pass.
#include <cuda_bf16.h>

#include <algorithm>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/global_norm.h"
#include "model/layer_streamer.h"
#include "model/param_store.h"
#include "model/state_streamer.h"
#include "model/fp8_linear.h"
#include "model/qwen_model.h"
#include "model/qwen_util.h"

namespace llmq {

namespace k = kernels;

template <typename T>
void QwenModel<T>::apply_adamw(const std::vector<k::AdamWPiece>& pieces, const StatePointers& at,
                               const k::AdamWConfig& shared, const float* clip_scale) {
  T* w = static_cast<T*>(at[0]);
  const T* g = static_cast<const T*>(at[1]);
  auto run = [&](auto* m_typed, auto* v_typed) {
    k::adamw_update_multi(w, g, m_typed, v_typed, pieces, shared, clip_scale, stream_);
  };
  const bool m32 = adam_m_->dtype() == DType::FP32, v32 = adam_v_->dtype() == DType::FP32;
  auto* m_f = static_cast<float*>(at[2]);
  auto* v_f = static_cast<float*>(at[3]);
  auto* m_b = static_cast<nv_bfloat16*>(at[2]);
  auto* v_b = static_cast<nv_bfloat16*>(at[3]);
  if (m32 && v32) run(m_f, v_f);
  else if (m32) run(m_f, v_b);
  else if (v32) run(m_b, v_f);
  else run(m_b, v_b);
}

template <typename T>
StepResult QwenModel<T>::optimizer_step(const AdamWSettings& s, int step) {
  LLMQ_REQUIRE(step >= 1, "optimizer steps count from 1");
  float* stats = step_stats_.get<float>();
  float* partials = reinterpret_cast<float*>(norm_partials_.data);
  const std::vector<ParamSpec>& params = layout_.params();
  const int num_params = static_cast<int>(params.size());
  if (grad_layers_) grad_layers_->synchronize_into(stream_);  // offloaded gradients are in host memory
  for (int param = 0; param < num_params; ++param)
    if (!grads_->offloaded(param)) gradient_norm_partial(param);
  k::global_norm_finish(partials, num_params, s.grad_clip, stats + 0, stats + 1, stream_);

  k::AdamWConfig shared;
  shared.lr = s.learning_rate;
  shared.beta1 = s.beta1;
  shared.beta2 = s.beta2;
  shared.eps = s.epsilon;
  shared.step = step;
  const std::uint64_t step_seed = opts_.seed ^ (static_cast<std::uint64_t>(step) << 32);
  // Parameters lie in the flat buffer in index order; `first` is the first one not wholly before the chunk.
  // Each chunk is one multi-tensor update of the pieces of the parameters it holds.
  std::size_t first = 0;
  std::vector<k::AdamWPiece> pieces;
  state_->for_each_chunk(stream_, [&](std::int64_t begin, std::int64_t end, const std::vector<void*>& chunk) {
    while (first < params.size() && params[first].offset + params[first].numel() <= begin) ++first;
    pieces.clear();
    for (std::size_t i = first; i < params.size() && params[i].offset < end; ++i) {
      const std::int64_t lo = std::max(begin, params[i].offset);
      const std::int64_t hi = std::min(end, params[i].offset + params[i].numel());
      if (lo >= hi) continue;
      pieces.push_back({.begin = lo - begin,
                        .n = static_cast<std::uint64_t>(hi - lo),
                        .index_offset = static_cast<std::uint64_t>(lo - params[i].offset),
                        .seed = param_seed(step_seed, i),
                        .weight_decay = params[i].weight_decay ? s.weight_decay : 0.f});
    }
    apply_adamw(pieces, {chunk[0], chunk[1], chunk[2], chunk[3]}, shared, stats + 1);
  });
  // Offloaded gradients are not cleared: the next step's first micro-step overwrites them.
  if (const Tensor& g = grads_->device_part(); !g.empty())
    LLMQ_CUDA_CHECK(cudaMemsetAsync(g.data, 0, g.bytes(), stream_));
  weights_changed();

  std::vector<float> host(static_cast<std::size_t>(step_stats_.numel()));
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(host.data(), stats, step_stats_.bytes(), cudaMemcpyDeviceToHost, stream_));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  StepResult result;
  result.grad_norm = host[0];
  double loss = 0;
  int counted = 0;
  for (int m = 0; m < opts_.grad_accumulation; ++m) {
    if (micro_valid_[m] > 0) {
      loss += host[2 + m] / micro_valid_[m];
      ++counted;
    }
  }
  result.loss = counted ? static_cast<float>(loss / counted) : 0.f;
  return result;
}

template class QwenModel<float>;
template class QwenModel<nv_bfloat16>;

}  // namespace llmq
