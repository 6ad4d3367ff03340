// QwenModel: the optimizer step. Global gradient norm and clip scale, then AdamW on every
// parameter, then the gradients are zeroed. The moments are reached through MomentStreamer
// (moment_streamer.h): on the device, in pinned host memory in place (zero-copy), or streamed
// through device staging buffers in chunks that ignore parameter boundaries. A parameter cut by
// chunk edges is updated piece by piece with AdamWConfig::index_offset, so its stochastic rounding
// draws the same bits, and the step gives the same result, however the moments are placed.
#include <cuda_bf16.h>

#include <algorithm>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/global_norm.h"
#include "model/moment_streamer.h"
#include "model/fp8_linear.h"
#include "model/qwen_model.h"
#include "model/qwen_util.h"

namespace llmq {

namespace k = kernels;

template <typename T>
void QwenModel<T>::apply_adamw(int param, std::int64_t begin, std::int64_t end, void* m, void* v,
                               const kernels::AdamWConfig& config, const float* clip_scale) {
  const ParamSpec& p = layout_[param];
  k::AdamWConfig piece = config;
  piece.index_offset = static_cast<std::uint64_t>(begin - p.offset);
  const std::size_t n = static_cast<std::size_t>(end - begin);
  T* w = weights_.get<T>() + begin;
  const T* g = grads_.get<T>() + begin;
  auto run = [&](auto* m_typed, auto* v_typed) {
    k::adamw_update(w, g, m_typed, v_typed, n, piece, clip_scale, nullptr, stream_);
  };
  const bool m32 = adam_m_.dtype == DType::FP32, v32 = adam_v_.dtype == DType::FP32;
  auto* m_f = static_cast<float*>(m);
  auto* v_f = static_cast<float*>(v);
  auto* m_b = static_cast<nv_bfloat16*>(m);
  auto* v_b = static_cast<nv_bfloat16*>(v);
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
  k::global_norm_squares(grads_.get<T>(), static_cast<std::size_t>(grads_.numel()), partials, 0, stream_);
  k::global_norm_finish(partials, 1, s.grad_clip, stats + 0, stats + 1, stream_);

  const std::vector<ParamSpec>& params = layout_.params();
  std::vector<k::AdamWConfig> configs(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    k::AdamWConfig& config = configs[i];
    config.lr = s.learning_rate;
    config.beta1 = s.beta1;
    config.beta2 = s.beta2;
    config.eps = s.epsilon;
    config.weight_decay = params[i].weight_decay ? s.weight_decay : 0.f;
    config.step = step;
    config.seed = param_seed(opts_.seed ^ (static_cast<std::uint64_t>(step) << 32), i);
  }
  // Parameters lie in the flat buffer in index order; `first` is the first one not wholly before the chunk.
  std::size_t first = 0;
  const std::size_t m_size = dtype_size(adam_m_.dtype), v_size = dtype_size(adam_v_.dtype);
  moments_->for_each_chunk(stream_, [&](std::int64_t begin, std::int64_t end, void* m, void* v) {
    while (first < params.size() && params[first].offset + params[first].numel() <= begin) ++first;
    for (std::size_t i = first; i < params.size() && params[i].offset < end; ++i) {
      const std::int64_t lo = std::max(begin, params[i].offset);
      const std::int64_t hi = std::min(end, params[i].offset + params[i].numel());
      if (lo >= hi) continue;
      apply_adamw(static_cast<int>(i), lo, hi, static_cast<std::byte*>(m) + (lo - begin) * m_size,
                  static_cast<std::byte*>(v) + (lo - begin) * v_size, configs[i], stats + 1);
    }
  });
  LLMQ_CUDA_CHECK(cudaMemsetAsync(grads_.data, 0, grads_.bytes(), stream_));
  if (fp8_) fp8_->mark_weights_changed();

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
