#include "model/run_state.h"

#include <fmt/format.h>

namespace llmq {

RecomputeOptions RecomputeOptions::resolved() const {
  RecomputeOptions r = *this;
  if (r.block) r.att = r.ffn = r.norm = true;
  if (r.att) r.qkv = true;
  if (r.ffn) r.swiglu = true;
  return r;
}

RunState::RunState(Allocator& alloc, const ModelConfig& cfg, DType dtype, int B_, int T_, int lmhead_chunks,
                   const RecomputeOptions& recompute_, bool offload_residual, bool mlp_up_gradient)
    : B(B_), T(T_), N(B_ * T_), recompute(recompute_.resolved()) {
  LLMQ_REQUIRE(lmhead_chunks >= 1 && lmhead_chunks <= N, "--lmhead-chunks={} must be between 1 and B*T={}",
               lmhead_chunks, N);
  lmhead_rows = (N + lmhead_chunks - 1) / lmhead_chunks;
  const int L = cfg.num_layers;
  const std::int64_t C = cfg.hidden_size, D = cfg.intermediate_size, V = cfg.vocab_size;
  const std::int64_t qkv_ch = cfg.qkv_channels(), q_ch = cfg.q_channels(), n = N;
  constexpr auto kAct = MemCategory::Activations;
  auto act = [&](const std::string& name, std::initializer_list<std::int64_t> shape, DType t) {
    return alloc.allocate(name, t, shape, kAct);
  };
  // One buffer per layer, or (when the backward pass recomputes it) one buffer all layers share.
  layers.resize(L);
  auto plan = [&](Tensor LayerActivations::*field, bool recomputed, const char* name,
                  std::initializer_list<std::int64_t> shape, DType t) {
    const Tensor shared = recomputed ? act(fmt::format("{} (recomputed, all layers)", name), shape, t) : Tensor{};
    for (int l = 0; l < L; ++l)
      layers[l].*field = recomputed ? shared : act(fmt::format("layers.{}.{}", l, name), shape, t);
  };

  if (offload_residual) {
    for (int s = 0; s < 2; ++s) residual_slots[s] = act(fmt::format("residual (offloaded, slot {})", s), {n, C}, dtype);
    for (int l = 0; l <= L; ++l) residual.push_back(residual_slots[l % 2]);
  } else {
    for (int l = 0; l <= L; ++l) residual.push_back(act(fmt::format("residual.{}", l), {n, C}, dtype));
  }
  const RecomputeOptions& rc = recompute;
  plan(&LayerActivations::ln1_out, rc.norm, "ln1_out", {n, C}, dtype);
  plan(&LayerActivations::ln1_rstd, false, "ln1_rstd", {n}, DType::FP32);
  plan(&LayerActivations::qkv, rc.qkv, "qkv", {n, qkv_ch}, dtype);
  plan(&LayerActivations::att, rc.att, "att", {n, q_ch}, dtype);
  plan(&LayerActivations::att_lse, rc.att, "att_lse", {B, cfg.num_query_heads, T}, DType::FP32);
  plan(&LayerActivations::residual_mid, rc.block, "residual_mid", {n, C}, dtype);
  plan(&LayerActivations::ln2_out, rc.norm, "ln2_out", {n, C}, dtype);
  plan(&LayerActivations::ln2_rstd, false, "ln2_rstd", {n}, DType::FP32);
  plan(&LayerActivations::mlp_up, rc.ffn, "mlp_up", {n, 2 * D}, dtype);
  plan(&LayerActivations::swiglu_out, rc.swiglu, "swiglu_out", {n, D}, dtype);
  final_out = act("final_out", {n, C}, dtype);
  final_rstd = act("final_rstd", {n}, DType::FP32);

  proj_out = act("proj_out", {n, C}, dtype);
  logits = act("logits", {lmhead_rows, V}, dtype);
  losses = act("losses", {n}, DType::FP32);

  d_residual = act("d_residual", {n, C}, dtype);
  d_ln = act("d_ln", {n, C}, dtype);
  d_att = act("d_att", {n, q_ch}, dtype);
  d_qkv = act("d_qkv", {n, qkv_ch}, dtype);
  d_swiglu = act("d_swiglu", {n, D}, dtype);
  if (mlp_up_gradient) d_mlp_up = act("d_mlp_up", {n, 2 * D}, dtype);

  inputs = alloc.allocate("inputs", DType::INT32, {n}, MemCategory::Other);
  targets = alloc.allocate("targets", DType::INT32, {n}, MemCategory::Other);
}

}  // namespace llmq
