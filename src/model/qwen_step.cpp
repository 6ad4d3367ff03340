// QwenModel: one training step. Forward through all layers keeping the activations the backward
// needs (see run_state.h for the data flow), the chunked LM head + cross-entropy, the backward
// pass in reverse, and the AdamW update with global-norm clipping.
#include <cuda_bf16.h>

#include <cmath>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/bias.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/global_norm.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "model/qwen_model.h"
#include "model/qwen_util.h"

namespace llmq {

namespace k = kernels;

template <typename T>
void QwenModel<T>::linear_forward(T* y, const T* x, const T* w, const T* bias, int rows, int in_f, int out_f) {
  k::matmul(*matmul_, y, element_dtype<T>(), x, w, element_dtype<T>(), rows, out_f, in_f, false, true, 1.f, false,
            bias, stream_);
}

template <typename T>
void QwenModel<T>::linear_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int rows, int in_f, int out_f) {
  // dx[rows, in_f] = dy[rows, out_f] @ W[out_f, in_f]
  k::matmul(*matmul_, dx, element_dtype<T>(), dy, w, element_dtype<T>(), rows, in_f, out_f, false, false, 1.f, false,
            nullptr, stream_);
  // dW[out_f, in_f] += dy^T @ x
  k::matmul(*matmul_, dw, element_dtype<T>(), dy, x, element_dtype<T>(), out_f, in_f, rows, true, false, 1.f, true,
            nullptr, stream_);
}

template <typename T>
void QwenModel<T>::upload_batch(const std::int32_t* inputs, const std::int32_t* targets) {
  const std::size_t bytes = sizeof(std::int32_t) * run_->N;
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(run_->inputs.data, inputs, bytes, cudaMemcpyHostToDevice, stream_));
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(run_->targets.data, targets, bytes, cudaMemcpyHostToDevice, stream_));
}

template <typename T>
void QwenModel<T>::forward(const std::int32_t* host_inputs) {
  RunState& r = *run_;
  const int N = r.N, C = cfg_.hidden_size, D = cfg_.intermediate_size, L = cfg_.num_layers;
  const int Hq = cfg_.num_query_heads, Hkv = cfg_.num_kv_heads, Hs = cfg_.head_size;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const float2* rope = reinterpret_cast<const float2*>(rope_table_.data);

  k::embedding_forward(r.residual[0].get<T>(), r.inputs.get<std::int32_t>(), weight(layout_.embedding()), N,
                       cfg_.vocab_size, C, stream_);
  k::rmsnorm_forward(r.layers[0].ln1_out.get<T>(), r.layers[0].ln1_rstd.get<float>(), r.residual[0].get<T>(),
                     weight(layout_.layer(0).ln1_w), eps, N, C, stream_);
  for (int l = 0; l < L; ++l) {
    const LayerParamIds& p = layout_.layer(l);
    LayerActivations& a = r.layers[l];
    T* qkv = a.qkv.get<T>();
    linear_forward(qkv, a.ln1_out.get<T>(), weight(p.qkv_w), p.qkv_b >= 0 ? weight(p.qkv_b) : nullptr, N, C,
                   cfg_.qkv_channels());
    k::rope_forward(qkv, qkv, rope, r.B, r.T, Hq, Hkv, Hs, stream_);
    if constexpr (std::is_same_v<T, nv_bfloat16>)
      attention_->forward(a.att.data, a.att_lse.get<float>(), qkv, r.B, r.T, Hq, Hkv, Hs, attention_workspace_,
                          attention_workspace_bytes_, stream_);
    else
      k::attention_forward_fp32(a.att.get<float>(), a.att_lse.get<float>(), qkv, r.B, r.T, Hq, Hkv, Hs, stream_);
    linear_forward(r.proj_out.get<T>(), a.att.get<T>(), weight(p.att_out_w), nullptr, N, cfg_.q_channels(), C);
    k::fused_residual_rmsnorm_forward(a.residual_mid.get<T>(), a.ln2_out.get<T>(), a.ln2_rstd.get<float>(),
                                      r.residual[l].get<T>(), r.proj_out.get<T>(), weight(p.ln2_w), eps, N, C,
                                      stream_);
    linear_forward(a.mlp_up.get<T>(), a.ln2_out.get<T>(), weight(p.mlp_up_w), nullptr, N, C, 2 * D);
    k::swiglu_forward(a.swiglu_out.get<T>(), a.mlp_up.get<T>(), N, D, stream_);
    linear_forward(r.proj_out.get<T>(), a.swiglu_out.get<T>(), weight(p.mlp_down_w), nullptr, N, D, C);
    const bool last = l + 1 == L;
    T* next_norm_out = last ? r.final_out.get<T>() : r.layers[l + 1].ln1_out.get<T>();
    float* next_rstd = last ? r.final_rstd.get<float>() : r.layers[l + 1].ln1_rstd.get<float>();
    const T* next_norm_w = last ? weight(layout_.final_norm()) : weight(layout_.layer(l + 1).ln1_w);
    k::fused_residual_rmsnorm_forward(r.residual[l + 1].get<T>(), next_norm_out, next_rstd, a.residual_mid.get<T>(),
                                      r.proj_out.get<T>(), next_norm_w, eps, N, C, stream_);
  }
}

template <typename T>
void QwenModel<T>::lm_head_loss(bool backward, float grad_scale) {
  RunState& r = *run_;
  const int C = cfg_.hidden_size, V = cfg_.vocab_size;
  const T* w = weight(layout_.lm_head());
  for (int row = 0; row < r.N; row += r.lmhead_rows) {
    const int rows = std::min(r.lmhead_rows, r.N - row);
    T* logits = r.logits.get<T>();
    const T* x = r.final_out.get<T>() + static_cast<std::int64_t>(row) * C;
    linear_forward(logits, x, w, nullptr, rows, C, V);
    k::cross_entropy_forward_backward(logits, r.targets.get<std::int32_t>() + row, r.losses.get<float>() + row, rows,
                                      V, grad_scale, opts_.z_loss, stream_);
    if (backward)
      linear_backward(r.d_ln.get<T>() + static_cast<std::int64_t>(row) * C, grad(layout_.lm_head()), logits, x, w,
                      rows, C, V);
  }
}

template <typename T>
void QwenModel<T>::backward(const std::int32_t* host_inputs) {
  RunState& r = *run_;
  const int N = r.N, C = cfg_.hidden_size, D = cfg_.intermediate_size;
  const int Hq = cfg_.num_query_heads, Hkv = cfg_.num_kv_heads, Hs = cfg_.head_size;
  const float2* rope = reinterpret_cast<const float2*>(rope_table_.data);
  float* scratch = reinterpret_cast<float*>(norm_scratch_.data);
  T* d_res = r.d_residual.get<T>();

  // Final norm: d_ln holds d(final_out) from the LM head.
  k::rmsnorm_backward(d_res, grad(layout_.final_norm()), scratch, static_cast<const T*>(nullptr), r.d_ln.get<T>(),
                      r.residual[cfg_.num_layers].get<T>(), weight(layout_.final_norm()), r.final_rstd.get<float>(),
                      N, C, stream_);
  for (int l = cfg_.num_layers - 1; l >= 0; --l) {
    const LayerParamIds& p = layout_.layer(l);
    LayerActivations& a = r.layers[l];
    // MLP: d_res is the gradient of residual[l+1] = residual_mid + down(swiglu(up(ln2)))
    linear_backward(r.d_swiglu.get<T>(), grad(p.mlp_down_w), d_res, a.swiglu_out.get<T>(), weight(p.mlp_down_w), N,
                    D, C);
    k::swiglu_backward(r.d_mlp_up.get<T>(), r.d_swiglu.get<T>(), a.mlp_up.get<T>(), N, D, stream_);
    linear_backward(r.d_ln.get<T>(), grad(p.mlp_up_w), r.d_mlp_up.get<T>(), a.ln2_out.get<T>(), weight(p.mlp_up_w),
                    N, C, 2 * D);
    k::rmsnorm_backward(d_res, grad(p.ln2_w), scratch, d_res, r.d_ln.get<T>(), a.residual_mid.get<T>(),
                        weight(p.ln2_w), a.ln2_rstd.get<float>(), N, C, stream_);
    // Attention: d_res is now the gradient of residual_mid = residual[l] + att_out(att)
    linear_backward(r.d_att.get<T>(), grad(p.att_out_w), d_res, a.att.get<T>(), weight(p.att_out_w), N,
                    cfg_.q_channels(), C);
    T* d_qkv = r.d_qkv.get<T>();
    if constexpr (std::is_same_v<T, nv_bfloat16>)
      attention_->backward(d_qkv, r.d_att.data, a.att.data, a.att_lse.get<float>(), a.qkv.data, r.B, r.T, Hq, Hkv, Hs,
                           attention_workspace_, attention_workspace_bytes_, stream_);
    else
      k::attention_backward_fp32(d_qkv, r.d_att.get<float>(), a.att.get<float>(), a.att_lse.get<float>(),
                                 a.qkv.get<float>(), r.B, r.T, Hq, Hkv, Hs, stream_);
    k::rope_backward(d_qkv, d_qkv, rope, r.B, r.T, Hq, Hkv, Hs, stream_);
    if (p.qkv_b >= 0) k::bias_backward(grad(p.qkv_b), d_qkv, N, cfg_.qkv_channels(), scratch, stream_);
    linear_backward(r.d_ln.get<T>(), grad(p.qkv_w), d_qkv, a.ln1_out.get<T>(), weight(p.qkv_w), N, C,
                    cfg_.qkv_channels());
    k::rmsnorm_backward(d_res, grad(p.ln1_w), scratch, d_res, r.d_ln.get<T>(), r.residual[l].get<T>(),
                        weight(p.ln1_w), a.ln1_rstd.get<float>(), N, C, stream_);
  }
  host_plan_ = k::make_embedding_backward_plan(host_inputs, N).data;
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(embedding_plan_.data, host_plan_.data(), host_plan_.size() * sizeof(std::int32_t),
                                  cudaMemcpyHostToDevice, stream_));
  k::embedding_backward(grad(layout_.embedding()), d_res, embedding_plan_.get<std::int32_t>(), N, cfg_.vocab_size, C,
                        stream_);
}

namespace {
int count_valid(const std::int32_t* targets, int n) {
  int valid = 0;
  for (int i = 0; i < n; ++i) valid += targets[i] != kernels::kIgnoreTarget;
  return valid;
}
}  // namespace

template <typename T>
void QwenModel<T>::forward_backward(const std::int32_t* inputs, const std::int32_t* targets, int micro_step) {
  LLMQ_REQUIRE(micro_step >= 0 && micro_step < opts_.grad_accumulation, "micro step {} outside [0, {})", micro_step,
               opts_.grad_accumulation);
  const int valid = count_valid(targets, run_->N);
  micro_valid_[micro_step] = static_cast<float>(valid);
  // Loss = mean over the micro-batch's targets, averaged over the step's micro-batches (as PyTorch
  // accumulation of per-micro-batch mean losses divided by the accumulation count).
  const float grad_scale = valid ? 1.f / (static_cast<float>(valid) * opts_.grad_accumulation) : 0.f;
  upload_batch(inputs, targets);
  forward(inputs);
  lm_head_loss(/*backward=*/true, grad_scale);
  k::loss_sum(run_->losses.get<float>(), run_->targets.get<std::int32_t>(), run_->N,
              step_stats_.get<float>() + 2 + micro_step, valid_counts_.get<std::int32_t>() + micro_step,
              loss_scratch_.data, stream_);
  backward(inputs);
}

template <typename T>
void QwenModel<T>::apply_adamw(int param, const kernels::AdamWConfig& config, const float* clip_scale) {
  const ParamSpec& p = layout_[param];
  const std::size_t n = static_cast<std::size_t>(p.numel());
  T* w = weight(param);
  const T* g = grad(param);
  auto run = [&](auto* m, auto* v) { k::adamw_update(w, g, m, v, n, config, clip_scale, nullptr, stream_); };
  const bool m32 = adam_m_.dtype == DType::FP32, v32 = adam_v_.dtype == DType::FP32;
  float* m_f = adam_m_.get<float>() + (m32 ? p.offset : 0);
  float* v_f = adam_v_.get<float>() + (v32 ? p.offset : 0);
  nv_bfloat16* m_b = reinterpret_cast<nv_bfloat16*>(adam_m_.data) + p.offset;
  nv_bfloat16* v_b = reinterpret_cast<nv_bfloat16*>(adam_v_.data) + p.offset;
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
  for (std::size_t i = 0; i < layout_.params().size(); ++i) {
    const ParamSpec& p = layout_.params()[i];
    k::AdamWConfig config;
    config.lr = s.learning_rate;
    config.beta1 = s.beta1;
    config.beta2 = s.beta2;
    config.eps = s.epsilon;
    config.weight_decay = p.weight_decay ? s.weight_decay : 0.f;
    config.step = step;
    config.seed = param_seed(opts_.seed ^ (static_cast<std::uint64_t>(step) << 32), i);
    apply_adamw(static_cast<int>(i), config, stats + 1);
  }
  LLMQ_CUDA_CHECK(cudaMemsetAsync(grads_.data, 0, grads_.bytes(), stream_));

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

template <typename T>
float QwenModel<T>::evaluate(const std::int32_t* inputs, const std::int32_t* targets) {
  const int valid = count_valid(targets, run_->N);
  upload_batch(inputs, targets);
  forward(inputs);
  lm_head_loss(/*backward=*/false, 0.f);
  float* loss_sum = step_stats_.get<float>() + 1;  // the clip scale slot is free between steps
  k::loss_sum(run_->losses.get<float>(), run_->targets.get<std::int32_t>(), run_->N, loss_sum,
              valid_counts_.get<std::int32_t>() + opts_.grad_accumulation, loss_scratch_.data, stream_);
  float host = 0;
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(&host, loss_sum, sizeof(float), cudaMemcpyDeviceToHost, stream_));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return valid ? host / static_cast<float>(valid) : 0.f;
}

template class QwenModel<float>;
template class QwenModel<nv_bfloat16>;

}  // namespace llmq
