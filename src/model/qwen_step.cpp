// QwenModel: one training step. Forward through all layers keeping the activations the backward
// needs (see run_state.h for the data flow and the recompute plan), the chunked LM head +
// cross-entropy, the backward pass in reverse (each layer first recomputes what the plan dropped),
// and the AdamW update with global-norm clipping.
//
// CUDA graphs (use_cuda_graphs): a micro-step first does, eagerly on the stream, everything that
// depends on the host (batch upload, the host-built embedding backward plan, the loss gradient
// scale into device memory, the FP8 weight re-quantization whose need a host flag decides); the
// rest (micro_step_kernels) reads only device memory at fixed addresses. It is captured once per
// micro-step position (the loss slot and the gradient bookkeeping depend on the position) and
// replayed from then on: no per-micro-step capture or update cost on the host.
#include <cuda_bf16.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/bias.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/global_norm.h"
#include "kernels/init.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/quantize.h"
#include "model/fp8_linear.h"
#include "model/layer_streamer.h"
#include "model/param_store.h"
#include "model/qwen_model.h"
#include "model/qwen_util.h"
#include "model/residual_streamer.h"

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
  weight_gradient(dw, dy, x, rows, in_f, out_f);
}

template <typename T>
void QwenModel<T>::weight_gradient(T* dw, const T* dy, const T* x, int rows, int in_f, int out_f) {
  // dW[out_f, in_f] += dy^T @ x
  k::matmul(*matmul_, dw, element_dtype<T>(), dy, x, element_dtype<T>(), out_f, in_f, rows, true, false, 1.f, true,
            nullptr, stream_);
}

// Linear layers of the blocks: FP8 when --matmul-dtype=e4m3 (see fp8_linear.h), else as above.
template <typename T>
void QwenModel<T>::block_linear_forward(T* y, const T* x, Fp8Slot x_slot, int l, int param, const T* bias, int in_f,
                                        int out_f) {
  if constexpr (std::is_same_v<T, nv_bfloat16>) {
    if (fp8_) {
      fp8_->forward(*matmul_, y, x, fp8_->absmax(l, x_slot), param, bias, run_->N, in_f, out_f, stream_);
      return;
    }
  }
  linear_forward(y, x, weight(param), bias, run_->N, in_f, out_f);
}

template <typename T>
bool QwenModel<T>::fp8_backward() const {
  return std::is_same_v<T, nv_bfloat16> && fp8_ && opts_.fp8_backward();
}

template <typename T>
void QwenModel<T>::block_linear_backward(T* dx, const T* dy, Fp8Slot dy_slot, const T* x, Fp8Slot x_slot, int l,
                                         int param, int in_f, int out_f) {
  if constexpr (std::is_same_v<T, nv_bfloat16>) {
    if (fp8_backward()) {
      fp8_->backward(*matmul_, dx, grad(param), dy, fp8_->absmax(l, dy_slot), x, fp8_->absmax(l, x_slot), param,
                     run_->N, in_f, out_f, stream_);
      return;
    }
  }
  linear_backward(dx, grad(param), dy, x, weight(param), run_->N, in_f, out_f);
}

// SwiGLU backward and the gate_up GEMM's gradients. With FP8 gradients the SwiGLU gradient goes
// straight to e5m2 in both layouts (an abs-max pass, then one pass that writes the GEMM operands):
// no bf16 d_mlp_up, the same bytes as quantizing it.
template <typename T>
void QwenModel<T>::swiglu_up_backward(int l) {
  RunState& r = *run_;
  const LayerActivations& a = r.layers[l];
  const int N = r.N, C = cfg_.hidden_size, D = cfg_.intermediate_size;
  const int up_w = layout_.layer(l).mlp_up_w;
  if constexpr (std::is_same_v<T, nv_bfloat16>) {
    if (fp8_backward()) {
      float* absmax = fp8_->absmax(l, Fp8Slot::DMlpUp);
      k::swiglu_backward_abs_max(absmax, r.d_swiglu.get<T>(), a.mlp_up.get<T>(), N, D, stream_);
      const Fp8Linear::GradientBuffers g = fp8_->gradient_buffers();
      k::swiglu_backward_e5m2(g.q, g.q_t, g.scale_inv, r.d_swiglu.get<T>(), a.mlp_up.get<T>(), absmax, N, D, stream_);
      fp8_->backward_quantized(*matmul_, r.d_ln.get<T>(), grad(up_w), a.ln2_out.get<T>(),
                               fp8_->absmax(l, Fp8Slot::Ln2Out), up_w, N, C, 2 * D, stream_);
      return;
    }
  }
  k::swiglu_backward(r.d_mlp_up.get<T>(), r.d_swiglu.get<T>(), a.mlp_up.get<T>(), N, D, stream_,
                     fp8_absmax(l, Fp8Slot::DMlpUp));
  block_linear_backward(r.d_ln.get<T>(), r.d_mlp_up.get<T>(), Fp8Slot::DMlpUp, a.ln2_out.get<T>(), Fp8Slot::Ln2Out, l,
                        up_w, C, 2 * D);
}

// Abs-max slot a producing kernel fills for the FP8 GEMM that reads its output; null (no extra
// work in the kernel) when that GEMM is not FP8.
template <typename T>
float* QwenModel<T>::fp8_absmax(int l, Fp8Slot slot) const {
  if (!fp8_ || l < 0 || l >= cfg_.num_layers) return nullptr;
  const bool backward_slot = static_cast<int>(slot) >= static_cast<int>(Fp8Slot::DResMlp);
  if (backward_slot && !fp8_->fp8_dgrad()) return nullptr;
  return fp8_->absmax(l, slot);
}

template <typename T>
void QwenModel<T>::upload_batch(const std::int32_t* inputs, const std::int32_t* targets) {
  const std::size_t bytes = sizeof(std::int32_t) * run_->N;
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(run_->inputs.data, inputs, bytes, cudaMemcpyHostToDevice, stream_));
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(run_->targets.data, targets, bytes, cudaMemcpyHostToDevice, stream_));
}

// Built on the host from this micro-batch's tokens; uploaded from pageable memory, which a graph
// cannot capture, so it happens before the captured part of the micro-step.
template <typename T>
void QwenModel<T>::upload_embedding_plan(const std::int32_t* host_inputs) {
  host_plan_ = k::make_embedding_backward_plan(host_inputs, run_->N).data;
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(embedding_plan_.data, host_plan_.data(), host_plan_.size() * sizeof(std::int32_t),
                                  cudaMemcpyHostToDevice, stream_));
}

// ---- forward pieces of layer l (shared by forward and recompute_layer) -------------------------

template <typename T>
void QwenModel<T>::ln1_forward(int l, bool save_rstd) {
  LayerActivations& a = run_->layers[l];
  k::rmsnorm_forward(a.ln1_out.get<T>(), save_rstd ? a.ln1_rstd.get<float>() : nullptr, run_->residual[l].get<T>(),
                     weight(layout_.layer(l).ln1_w), static_cast<float>(cfg_.rms_norm_eps), run_->N, cfg_.hidden_size,
                     stream_, fp8_absmax(l, Fp8Slot::Ln1Out));
}

template <typename T>
void QwenModel<T>::qkv_forward(int l) {
  const RunState& r = *run_;
  const LayerParamIds& p = layout_.layer(l);
  T* qkv = r.layers[l].qkv.get<T>();
  block_linear_forward(qkv, r.layers[l].ln1_out.get<T>(), Fp8Slot::Ln1Out, l, p.qkv_w,
                       p.qkv_b >= 0 ? weight(p.qkv_b) : nullptr, cfg_.hidden_size, cfg_.qkv_channels());
  k::rope_forward(qkv, qkv, reinterpret_cast<const float2*>(rope_table_.data), r.B, r.T, cfg_.num_query_heads,
                  cfg_.num_kv_heads, cfg_.head_size, stream_);
}

template <typename T>
void QwenModel<T>::attention_forward(int l) {
  const RunState& r = *run_;
  const LayerActivations& a = r.layers[l];
  const int Hq = cfg_.num_query_heads, Hkv = cfg_.num_kv_heads, Hs = cfg_.head_size;
  if constexpr (std::is_same_v<T, nv_bfloat16>)
    attention_->forward(a.att.data, a.att_lse.get<float>(), a.qkv.data, r.B, r.T, Hq, Hkv, Hs, attention_workspace_,
                        attention_workspace_bytes_, stream_);
  else
    k::attention_forward_fp32(a.att.get<float>(), a.att_lse.get<float>(), a.qkv.get<float>(), r.B, r.T, Hq, Hkv, Hs,
                              stream_);
  // cuDNN cannot report the abs-max of its output: one extra read of att for the FP8 out-projection.
  if (float* absmax = fp8_absmax(l, Fp8Slot::Att)) k::abs_max(absmax, a.att.get<T>(), a.att.numel(), stream_);
}

template <typename T>
void QwenModel<T>::attention_out_forward(int l, bool save_rstd) {
  const RunState& r = *run_;
  const LayerParamIds& p = layout_.layer(l);
  const LayerActivations& a = r.layers[l];
  const int C = cfg_.hidden_size;
  block_linear_forward(r.proj_out.get<T>(), a.att.get<T>(), Fp8Slot::Att, l, p.att_out_w, nullptr,
                       cfg_.q_channels(), C);
  k::fused_residual_rmsnorm_forward(a.residual_mid.get<T>(), a.ln2_out.get<T>(),
                                    save_rstd ? a.ln2_rstd.get<float>() : nullptr, r.residual[l].get<T>(),
                                    r.proj_out.get<T>(), weight(p.ln2_w), static_cast<float>(cfg_.rms_norm_eps), r.N,
                                    C, stream_, fp8_absmax(l, Fp8Slot::Ln2Out));
}

template <typename T>
void QwenModel<T>::ln2_forward(int l, bool save_rstd) {
  const LayerActivations& a = run_->layers[l];
  k::rmsnorm_forward(a.ln2_out.get<T>(), save_rstd ? a.ln2_rstd.get<float>() : nullptr, a.residual_mid.get<T>(),
                     weight(layout_.layer(l).ln2_w), static_cast<float>(cfg_.rms_norm_eps), run_->N, cfg_.hidden_size,
                     stream_, fp8_absmax(l, Fp8Slot::Ln2Out));
}

template <typename T>
void QwenModel<T>::mlp_up_forward(int l) {
  const LayerActivations& a = run_->layers[l];
  block_linear_forward(a.mlp_up.get<T>(), a.ln2_out.get<T>(), Fp8Slot::Ln2Out, l, layout_.layer(l).mlp_up_w, nullptr,
                       cfg_.hidden_size, 2 * cfg_.intermediate_size);
}

template <typename T>
void QwenModel<T>::swiglu_forward(int l) {
  const LayerActivations& a = run_->layers[l];
  k::swiglu_forward(a.swiglu_out.get<T>(), a.mlp_up.get<T>(), run_->N, cfg_.intermediate_size, stream_,
                    fp8_absmax(l, Fp8Slot::SwigluOut));
}

template <typename T>
void QwenModel<T>::mlp_down_forward(int l) {
  const RunState& r = *run_;
  const LayerActivations& a = r.layers[l];
  const int C = cfg_.hidden_size;
  block_linear_forward(r.proj_out.get<T>(), a.swiglu_out.get<T>(), Fp8Slot::SwigluOut, l, layout_.layer(l).mlp_down_w,
                       nullptr, cfg_.intermediate_size, C);
  // The residual add is fused with the next norm: layer l+1's ln1, or the final norm after the last layer.
  const bool last = l + 1 == cfg_.num_layers;
  T* next_norm_out = last ? r.final_out.get<T>() : r.layers[l + 1].ln1_out.get<T>();
  float* next_rstd = last ? r.final_rstd.get<float>() : r.layers[l + 1].ln1_rstd.get<float>();
  const T* next_norm_w = last ? weight(layout_.final_norm()) : weight(layout_.layer(l + 1).ln1_w);
  k::fused_residual_rmsnorm_forward(r.residual[l + 1].get<T>(), next_norm_out, next_rstd, a.residual_mid.get<T>(),
                                    r.proj_out.get<T>(), next_norm_w, static_cast<float>(cfg_.rms_norm_eps), r.N, C,
                                    stream_, fp8_absmax(l + 1, Fp8Slot::Ln1Out));
}

template <typename T>
void QwenModel<T>::attention_block_forward(int l) {
  qkv_forward(l);
  attention_forward(l);
  attention_out_forward(l, /*save_rstd=*/true);
}

template <typename T>
void QwenModel<T>::forward() {
  RunState& r = *run_;
  if (residuals_) residuals_->begin_write(0, stream_);
  k::embedding_forward(r.residual[0].get<T>(), r.inputs.get<std::int32_t>(), weight(layout_.embedding()), r.N,
                       cfg_.vocab_size, cfg_.hidden_size, stream_);
  if (residuals_) residuals_->end_write(0, stream_);
  ln1_forward(0, /*save_rstd=*/true);  // later layers' ln1 is fused into the previous layer's residual add
  for (int l = 0; l < cfg_.num_layers; ++l) {
    if (stream_weights_forward_) acquire_layer_weights(l, l + 1);
    if (fp8_) fp8_->acquire_layer(l, l + 1, stream_);  // offloaded FP8 weights (no-op otherwise)
    attention_block_forward(l);
    mlp_up_forward(l);
    swiglu_forward(l);
    if (residuals_) residuals_->begin_write(l + 1, stream_);
    mlp_down_forward(l);  // writes residual[l+1]
    if (residuals_) residuals_->end_write(l + 1, stream_);
    if (fp8_) fp8_->release_layer(l, stream_);
    if (stream_weights_forward_) release_layer_weights(l);
  }
}

// ---- offloaded layers (layer_streamer.h) -------------------------------------------------------

template <typename T>
void QwenModel<T>::acquire_layer_weights(int l, int next) {
  weight_layers_->fetch(l, stream_);
  weight_layers_->prefetch(next);
}

template <typename T>
void QwenModel<T>::release_layer_weights(int l) {
  weight_layers_->release(l, stream_);
}

// The first micro-step of an optimizer step starts each layer's gradients from zero, later ones
// accumulate onto the sums so far, which come back from host memory.
template <typename T>
void QwenModel<T>::acquire_layer_grads(int l, int micro_step) {
  if (!grad_layers_) return;
  grad_layers_->acquire_for_update(l, /*from_host=*/micro_step > 0, stream_);
  if (micro_step > 0) grad_layers_->prefetch(l - 1);
}

// After the step's last micro-step a layer's gradients are final: their norm partials are taken
// from the device slot, before it goes back to host memory.
template <typename T>
void QwenModel<T>::finish_layer_grads(int l, int micro_step) {
  if (!grad_layers_) return;
  if (micro_step == opts_.grad_accumulation - 1)
    for (int param : layout_.layer(l).matrices())
      if (grads_->offloaded(param)) gradient_norm_partial(param);
  grad_layers_->write_back(l, stream_);
}

template <typename T>
void QwenModel<T>::gradient_norm_partial(int param) {
  k::global_norm_squares(grad(param), static_cast<std::size_t>(layout_[param].numel()),
                         reinterpret_cast<float*>(norm_partials_.data), param, stream_);
}

// Refills, in forward order, what the recompute plan shares across layers; the rstd vectors are
// always kept, so no recomputation rewrites them. For l > 0, ln1_out came from the fused add + norm of
// layer l-1; the plain rmsnorm over the stored residual[l] gives the same bits (the fused kernel
// rounds the sum to the element type before normalising it).
template <typename T>
void QwenModel<T>::recompute_layer(int l) {
  const RecomputeOptions& rc = run_->recompute;
  if (rc.norm) ln1_forward(l, /*save_rstd=*/false);
  if (rc.qkv) qkv_forward(l);
  if (rc.att) attention_forward(l);
  if (rc.block)
    attention_out_forward(l, /*save_rstd=*/false);  // residual_mid and ln2_out
  else if (rc.norm)
    ln2_forward(l, /*save_rstd=*/false);
  if (rc.ffn) mlp_up_forward(l);
  if (rc.swiglu) swiglu_forward(l);
}

template <typename T>
void QwenModel<T>::lm_head_loss(bool backward, k::GradScale grad_scale) {
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
void QwenModel<T>::backward(int micro_step) {
  RunState& r = *run_;
  const int N = r.N, C = cfg_.hidden_size, D = cfg_.intermediate_size;
  const int Hq = cfg_.num_query_heads, Hkv = cfg_.num_kv_heads, Hs = cfg_.head_size;
  const float2* rope = reinterpret_cast<const float2*>(rope_table_.data);
  float* scratch = reinterpret_cast<float*>(norm_scratch_.data);
  T* d_res = r.d_residual.get<T>();

  // Final norm: d_ln holds d(final_out) from the LM head.
  if (residuals_) residuals_->fetch(cfg_.num_layers, stream_);
  k::rmsnorm_backward(d_res, grad(layout_.final_norm()), scratch, static_cast<const T*>(nullptr), r.d_ln.get<T>(),
                      r.residual[cfg_.num_layers].get<T>(), weight(layout_.final_norm()), r.final_rstd.get<float>(),
                      N, C, stream_, fp8_absmax(cfg_.num_layers - 1, Fp8Slot::DResMlp));
  if (residuals_) residuals_->release(cfg_.num_layers, stream_);
  for (int l = cfg_.num_layers - 1; l >= 0; --l) {
    if (stream_weights_backward_) acquire_layer_weights(l, l - 1);
    if (fp8_) fp8_->acquire_layer(l, l - 1, stream_);  // recomputed GEMMs and FP8 data gradients read them
    if (residuals_) {  // residual[l]: the recomputation and the ln1 backward read it
      residuals_->fetch(l, stream_);
      residuals_->prefetch(l - 1);
    }
    acquire_layer_grads(l, micro_step);
    recompute_layer(l);
    const LayerParamIds& p = layout_.layer(l);
    LayerActivations& a = r.layers[l];
    // MLP: d_res is the gradient of residual[l+1] = residual_mid + down(swiglu(up(ln2)))
    block_linear_backward(r.d_swiglu.get<T>(), d_res, Fp8Slot::DResMlp, a.swiglu_out.get<T>(), Fp8Slot::SwigluOut, l,
                          p.mlp_down_w, D, C);
    swiglu_up_backward(l);  // d_swiglu -> d_ln (and the gate_up weight gradient)
    k::rmsnorm_backward(d_res, grad(p.ln2_w), scratch, d_res, r.d_ln.get<T>(), a.residual_mid.get<T>(),
                        weight(p.ln2_w), a.ln2_rstd.get<float>(), N, C, stream_, fp8_absmax(l, Fp8Slot::DResAtt));
    // Attention: d_res is now the gradient of residual_mid = residual[l] + att_out(att)
    block_linear_backward(r.d_att.get<T>(), d_res, Fp8Slot::DResAtt, a.att.get<T>(), Fp8Slot::Att, l, p.att_out_w,
                          cfg_.q_channels(), C);
    T* d_qkv = r.d_qkv.get<T>();
    if constexpr (std::is_same_v<T, nv_bfloat16>)
      attention_->backward(d_qkv, r.d_att.data, a.att.data, a.att_lse.get<float>(), a.qkv.data, r.B, r.T, Hq, Hkv, Hs,
                           attention_workspace_, attention_workspace_bytes_, stream_);
    else
      k::attention_backward_fp32(d_qkv, r.d_att.get<float>(), a.att.get<float>(), a.att_lse.get<float>(),
                                 a.qkv.get<float>(), r.B, r.T, Hq, Hkv, Hs, stream_);
    k::rope_backward(d_qkv, d_qkv, rope, r.B, r.T, Hq, Hkv, Hs, stream_, fp8_absmax(l, Fp8Slot::DQkv));
    if (p.qkv_b >= 0) k::bias_backward(grad(p.qkv_b), d_qkv, N, cfg_.qkv_channels(), scratch, stream_);
    block_linear_backward(r.d_ln.get<T>(), d_qkv, Fp8Slot::DQkv, a.ln1_out.get<T>(), Fp8Slot::Ln1Out, l, p.qkv_w, C,
                          cfg_.qkv_channels());
    k::rmsnorm_backward(d_res, grad(p.ln1_w), scratch, d_res, r.d_ln.get<T>(), r.residual[l].get<T>(),
                        weight(p.ln1_w), a.ln1_rstd.get<float>(), N, C, stream_, fp8_absmax(l - 1, Fp8Slot::DResMlp));
    if (residuals_) residuals_->release(l, stream_);
    finish_layer_grads(l, micro_step);
    if (fp8_) fp8_->release_layer(l, stream_);
    if (stream_weights_backward_) release_layer_weights(l);
  }
  // embedding_plan_ was uploaded before the forward (upload_embedding_plan); stream order makes it ready.
  k::embedding_backward(grad(layout_.embedding()), d_res, embedding_plan_.get<std::int32_t>(), N, cfg_.vocab_size, C,
                        stream_);
}

// Quantizes the block matrices once per optimizer step (offloaded ones pass through a layer slot).
template <typename T>
void QwenModel<T>::prepare_fp8() {
  if constexpr (std::is_same_v<T, nv_bfloat16>) {
    if (!fp8_) return;
    if (!fp8_->weights_current()) {
      fp8_->discard_layer_slots(stream_);
      for (int l = 0; l < cfg_.num_layers; ++l) {
        if (weight_layers_) acquire_layer_weights(l, l + 1);
        fp8_->begin_update(l, stream_);
        for (int param : layout_.layer(l).matrices()) fp8_->quantize_weight(param, weight(param), stream_);
        fp8_->end_update(l, stream_);
        if (weight_layers_) release_layer_weights(l);
      }
      fp8_->mark_weights_current();
    }
    fp8_->begin_micro_step(stream_);
  }
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
  upload_embedding_plan(inputs);
  k::fill_constant(grad_scale_.get<float>(), 1, grad_scale, stream_);  // the value travels as a kernel argument
  // Whether the FP8 weights are re-quantized depends on a host flag (once per optimizer step): kept
  // out of the graph, so that every micro-step's graph has the same topology.
  prepare_fp8();
  // The very first micro-step runs eagerly: cuBLASLt plans and cuDNN attention graphs are created
  // (and matmuls autotuned) on first use, and their setup cannot happen inside a capture.
  const bool use_graph = opts_.use_cuda_graphs && first_micro_step_done_ && !cuda_graphs_off_;
  if (!use_graph || !launch_step_graph(micro_step)) micro_step_kernels(micro_step);
  first_micro_step_done_ = true;
}

template <typename T>
void QwenModel<T>::micro_step_kernels(int micro_step) {
  forward();
  lm_head_loss(/*backward=*/true, k::GradScale::in_device_memory(grad_scale_.get<float>()));
  k::loss_sum(run_->losses.get<float>(), run_->targets.get<std::int32_t>(), run_->N,
              step_stats_.get<float>() + 2 + micro_step, valid_counts_.get<std::int32_t>() + micro_step,
              loss_scratch_.data, stream_);
  backward(micro_step);
}

template <typename T>
bool QwenModel<T>::launch_step_graph(int micro_step) {
  cudaGraphExec_t& graph = step_graphs_[micro_step];
  if (!graph) graph = instantiate_micro_step(micro_step);
  if (!graph) return false;
  LLMQ_CUDA_CHECK(cudaGraphLaunch(graph, stream_));
  ++graph_launches_;
  return true;
}

// Null (after disable_cuda_graphs) when anything between begin and end of the capture, or the
// instantiation, failed; the captured work never ran then, so the caller runs it eagerly.
template <typename T>
cudaGraphExec_t QwenModel<T>::instantiate_micro_step(int micro_step) {
  LLMQ_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  std::string failure;
  try {
    micro_step_kernels(micro_step);
  } catch (const std::exception& e) {
    failure = e.what();
  }
  // Deliberately unchecked from here: a failed capture falls back to eager execution.
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  cudaGraphExec_t exec = nullptr;
  cudaError_t status = failure.empty() ? end : cudaErrorStreamCaptureInvalidated;
  if (failure.empty() && end == cudaSuccess && graph) status = cudaGraphInstantiate(&exec, graph, 0);
  if (graph) cudaGraphDestroy(graph);  // the executable graph keeps its own copy
  if (status == cudaSuccess && exec) {
    ++graph_captures_;
    return exec;
  }
  (void)cudaGetLastError();
  disable_cuda_graphs(fmt::format("capture failed: {}", failure.empty() ? cudaGetErrorString(status) : failure));
  return nullptr;
}

template <typename T>
void QwenModel<T>::disable_cuda_graphs(const std::string& reason) {
  cuda_graphs_off_ = true;
  std::string line = reason;
  std::replace(line.begin(), line.end(), '\n', ' ');
  fmt::print(stderr, "warning: --use-cuda-graphs: {}; running every micro-step without graphs from now on\n", line);
}

template <typename T>
float QwenModel<T>::evaluate(const std::int32_t* inputs, const std::int32_t* targets) {
  const int valid = count_valid(targets, run_->N);
  upload_batch(inputs, targets);
  prepare_fp8();
  forward();
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
