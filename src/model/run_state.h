// Activation and scratch buffers of one GPU for micro-batches of B x T tokens, planned and allocated
// once from the recompute flags.
//
// Forward data flow of layer l (N = B*T rows; fused kernels in brackets):
//   ln1_out, ln1_rstd      = rmsnorm(residual[l])           [fused with the previous layer's add]
//   qkv                    = ln1_out @ qkv_w^T + qkv_b, then RoPE on q and k (in place)
//   att, att_lse           = causal attention(qkv)
//   residual_mid[l],
//   ln2_out, ln2_rstd      = rmsnorm(residual[l] + att @ att_out_w^T)   [fused add + norm]
//   mlp_up                 = ln2_out @ mlp_up_w^T            (gate | up)
//   swiglu_out             = silu(gate) * up
//   residual[l+1], next ln1 (or final_out for the last layer)
//                          = rmsnorm(residual_mid[l] + swiglu_out @ mlp_down_w^T)
//
// Recomputation: a tensor the backward pass recomputes is allocated ONCE and every layer's entry in
// `layers` points at that one buffer (forward overwrites it layer after layer, the backward pass
// refills it for layer l just before layer l's backward). Everything else is kept per layer.
//   flag     dropped (shared) tensors              recomputed in backward from
//   swiglu   swiglu_out                            mlp_up
//   ffn      mlp_up, swiglu_out                    ln2_out (up-projection GEMM, SwiGLU)
//   norm     ln1_out, ln2_out                      residual[l], residual_mid (rmsnorm; rstd is kept)
//   qkv      qkv                                   ln1_out (QKV GEMM + bias, RoPE)
//   att      att, att_lse (and qkv)                qkv (attention forward)
//   block    all of the above and residual_mid     residual[l] (attention-out GEMM + fused add + norm)
// FP8 gradients (kept_fp8_inputs): the forward keeps x^T e4m3 of a block GEMM input whose bf16 copy
// the backward would otherwise read only to quantize it again; such an ln1_out, ln2_out or
// swiglu_out is shared too and never recomputed (KeptFp8Inputs says which).
// The rstd vectors (fp32 [N], under 0.5% of a layer) and residual[0..L] are always kept per layer;
// with offload_residual (--offload-residual) residual[0..L] live in pinned host memory and
// residual[i] points at device slot i % 2 (residual_streamer.h moves them).
// Gradients flowing backward use one set of buffers shared by all layers.
#pragma once
#include <array>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"
#include "model/config.h"

namespace llmq {

// Which activations the backward pass recomputes instead of keeping (--recompute-* flags).
struct RecomputeOptions {
  bool swiglu = false;
  bool norm = false;
  bool ffn = false;    // implies swiglu
  bool qkv = false;
  bool att = false;    // implies qkv
  bool block = false;  // implies att, ffn and norm

  // The same set with the implications applied (block => att + ffn + norm, att => qkv, ffn => swiglu).
  RecomputeOptions resolved() const;
  bool any() const { return swiglu || norm || ffn || qkv || att || block; }
};

// Which block GEMM inputs the FP8 forward keeps as x^T e4m3 for the weight gradient (fp8_linear.h):
// ln1_out (QKV), att (attention out), ln2_out (MLP up) and swiglu_out (MLP down). Kept x^T takes
// N x width bytes per layer and saves the backward a quantization pass; the bf16 copy it replaces
// takes twice that, except att's, which the attention backward reads anyway.
struct KeptFp8Inputs {
  bool ln1 = false, att = false, ln2 = false, swiglu = false;

  // With FP8 weight gradients (`recompute` is resolved here): every input whose bf16 copy no
  // recomputation reads or refills, so a recompute flag drops only its own tensors and never swaps a
  // kept x^T for a bf16 copy per layer; att's x^T, which costs memory, only without recomputation.
  static KeptFp8Inputs unless_recomputed(const RecomputeOptions& recompute);
  bool any() const { return ln1 || att || ln2 || swiglu; }
  bool operator==(const KeptFp8Inputs&) const = default;
};

struct LayerActivations {
  Tensor ln1_out, ln1_rstd;      // [N, C], fp32 [N]
  Tensor qkv;                    // [N, (Hq + 2*Hkv) * Hs], after RoPE
  Tensor att, att_lse;           // [N, Hq*Hs], fp32 [B, Hq, T]
  Tensor residual_mid;           // [N, C]
  Tensor ln2_out, ln2_rstd;      // [N, C], fp32 [N]
  Tensor mlp_up;                 // [N, 2*D]
  Tensor swiglu_out;             // [N, D]
};

struct RunState {
  // `recompute` is resolved (implications applied) before planning.
  // mlp_up_gradient: allocate d_mlp_up (FP8 gradients do without it).
  // kept_fp8_inputs: the GEMM inputs the FP8 forward keeps as x^T e4m3 for the weight gradient
  // (fp8_linear.h); the backward never reads those of ln1_out, ln2_out and swiglu_out, so each is one
  // buffer all layers share (att stays per layer: the attention backward reads it).
  RunState(Allocator& alloc, const ModelConfig& cfg, DType dtype, int B, int T, int lmhead_chunks,
           const RecomputeOptions& recompute = {}, bool offload_residual = false, bool mlp_up_gradient = true,
           KeptFp8Inputs kept_fp8_inputs = {});

  int B, T, N;
  int lmhead_rows;                 // rows of logits materialised at once
  RecomputeOptions recompute;      // resolved
  KeptFp8Inputs kept_fp8_inputs;
  std::vector<Tensor> residual;    // L+1 tensors [N, C]: residual[l] is the input of layer l
  std::array<Tensor, 2> residual_slots;  // with offload_residual: the device buffers residual[] share
  std::vector<LayerActivations> layers;  // recomputed (or FP8-kept) entries alias one buffer across layers
  Tensor final_out, final_rstd;    // [N, C], fp32 [N]

  // Forward scratch (not needed by backward).
  Tensor proj_out;                 // [N, C]: output of att_out / mlp_down before the residual add
  Tensor logits;                   // [lmhead_rows, V]; overwritten in place by its gradient
  Tensor losses;                   // fp32 [N], per-token loss

  // Backward buffers shared by all layers.
  Tensor d_residual;               // [N, C]
  Tensor d_ln;                     // [N, C]
  Tensor d_att;                    // [N, Hq*Hs]
  Tensor d_qkv;                    // [N, (Hq + 2*Hkv) * Hs]
  Tensor d_swiglu;                 // [N, D]
  Tensor d_mlp_up;                 // [N, 2*D]; empty with FP8 gradients (mlp_up_gradient false)

  // Per-micro-batch token data on the device.
  Tensor inputs, targets;          // int32 [N]
};

}  // namespace llmq
