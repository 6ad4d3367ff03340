#include "model/run_state.h"

#include <fmt/format.h>

namespace llmq {

RunState::RunState(Allocator& alloc, const ModelConfig& cfg, DType dtype, int B_, int T_, int lmhead_chunks)
    : B(B_), T(T_), N(B_ * T_) {
  LLMQ_REQUIRE(lmhead_chunks >= 1 && lmhead_chunks <= N, "--lmhead-chunks={} must be between 1 and B*T={}",
               lmhead_chunks, N);
  lmhead_rows = (N + lmhead_chunks - 1) / lmhead_chunks;
  const std::int64_t C = cfg.hidden_size, D = cfg.intermediate_size, V = cfg.vocab_size;
  const std::int64_t qkv_ch = cfg.qkv_channels(), q_ch = cfg.q_channels(), n = N;
  constexpr auto kAct = MemCategory::Activations;
  auto act = [&](const std::string& name, std::initializer_list<std::int64_t> shape, DType t) {
    return alloc.allocate(name, t, shape, kAct);
  };

  for (int l = 0; l <= cfg.num_layers; ++l) residual.push_back(act(fmt::format("residual.{}", l), {n, C}, dtype));
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = fmt::format("layers.{}.", l);
    LayerActivations a;
    a.ln1_out = act(p + "ln1_out", {n, C}, dtype);
    a.ln1_rstd = act(p + "ln1_rstd", {n}, DType::FP32);
    a.qkv = act(p + "qkv", {n, qkv_ch}, dtype);
    a.att = act(p + "att", {n, q_ch}, dtype);
    a.att_lse = act(p + "att_lse", {B, cfg.num_query_heads, T}, DType::FP32);
    a.residual_mid = act(p + "residual_mid", {n, C}, dtype);
    a.ln2_out = act(p + "ln2_out", {n, C}, dtype);
    a.ln2_rstd = act(p + "ln2_rstd", {n}, DType::FP32);
    a.mlp_up = act(p + "mlp_up", {n, 2 * D}, dtype);
    a.swiglu_out = act(p + "swiglu_out", {n, D}, dtype);
    layers.push_back(a);
  }
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
  d_mlp_up = act("d_mlp_up", {n, 2 * D}, dtype);

  inputs = alloc.allocate("inputs", DType::INT32, {n}, MemCategory::Other);
  targets = alloc.allocate("targets", DType::INT32, {n}, MemCategory::Other);
}

}  // namespace llmq
