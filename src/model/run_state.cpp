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

KeptFp8Inputs KeptFp8Inputs::unless_recomputed(const RecomputeOptions& recompute) {
  const RecomputeOptions rc = recompute.resolved();
  KeptFp8Inputs k;
  k.ln1 = !rc.norm && !rc.qkv;  // the QKV recomputation reads ln1_out
  k.att = !rc.any();            // memory on top of att: only where nothing is recomputed to save some
  k.ln2 = !rc.norm && !rc.ffn;  // the MLP-up recomputation reads ln2_out
  k.swiglu = !rc.swiglu;
  return k;
}

RunState::RunState(Allocator& alloc, const ModelConfig& cfg, DType dtype, int B_, int T_, int lmhead_chunks,
                   const RecomputeOptions& recompute_, bool offload_residual, bool mlp_up_gradient,
                   KeptFp8Inputs kept_fp8_inputs_)
    : B(B_), T(T_), N(B_ * T_), recompute(recompute_.resolved()), kept_fp8_inputs(kept_fp8_inputs_) {
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
  // One buffer per layer, or (when the backward pass recomputes it or never reads it) one buffer all
  // layers share.
  layers.resize(L);
  enum class Keep { PerLayer, Recomputed, KeptAsFp8 };
  auto plan = [&](Tensor LayerActivations::*field, Keep keep, const char* name, std::initializer_list<std::int64_t> shape,
                  DType t) {
    const char* why = keep == Keep::Recomputed ? "recomputed" : "kept as FP8 x^T";
    const Tensor shared = keep != Keep::PerLayer ? act(fmt::format("{} ({}, all layers)", name, why), shape, t) : Tensor{};
    for (int l = 0; l < L; ++l)
      layers[l].*field = keep != Keep::PerLayer ? shared : act(fmt::format("layers.{}.{}", l, name), shape, t);
  };
  auto keep_if = [](bool recomputed) { return recomputed ? Keep::Recomputed : Keep::PerLayer; };
  // A GEMM input the backward reads only as the forward's FP8 x^T, if kept.
  auto gemm_input = [&](bool recomputed, bool kept_as_fp8) {
    return kept_as_fp8 ? Keep::KeptAsFp8 : keep_if(recomputed);
  };

  if (offload_residual) {
    for (int s = 0; s < 2; ++s) residual_slots[s] = act(fmt::format("residual (offloaded, slot {})", s), {n, C}, dtype);
    for (int l = 0; l <= L; ++l) residual.push_back(residual_slots[l % 2]);
  } else {
    for (int l = 0; l <= L; ++l) residual.push_back(act(fmt::format("residual.{}", l), {n, C}, dtype));
  }
  const RecomputeOptions& rc = recompute;
  const KeptFp8Inputs& kept = kept_fp8_inputs;
  const KeptFp8Inputs allowed = KeptFp8Inputs::unless_recomputed(rc);
  LLMQ_REQUIRE((!kept.ln1 || allowed.ln1) && (!kept.att || allowed.att) && (!kept.ln2 || allowed.ln2) &&
                   (!kept.swiglu || allowed.swiglu),
               "internal error: a GEMM input kept as FP8 x^T that recomputation reads or refills");
  plan(&LayerActivations::ln1_out, gemm_input(rc.norm, kept.ln1), "ln1_out", {n, C}, dtype);
  plan(&LayerActivations::ln1_rstd, Keep::PerLayer, "ln1_rstd", {n}, DType::FP32);
  plan(&LayerActivations::qkv, keep_if(rc.qkv), "qkv", {n, qkv_ch}, dtype);
  plan(&LayerActivations::att, keep_if(rc.att), "att", {n, q_ch}, dtype);
  plan(&LayerActivations::att_lse, keep_if(rc.att), "att_lse", {B, cfg.num_query_heads, T}, DType::FP32);
  plan(&LayerActivations::residual_mid, keep_if(rc.block), "residual_mid", {n, C}, dtype);
  plan(&LayerActivations::ln2_out, gemm_input(rc.norm, kept.ln2), "ln2_out", {n, C}, dtype);
  plan(&LayerActivations::ln2_rstd, Keep::PerLayer, "ln2_rstd", {n}, DType::FP32);
  plan(&LayerActivations::mlp_up, keep_if(rc.ffn), "mlp_up", {n, 2 * D}, dtype);
  plan(&LayerActivations::swiglu_out, gemm_input(rc.swiglu, kept.swiglu), "swiglu_out", {n, D}, dtype);
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
