// FP8 (e4m3) linear layers of the transformer blocks: quantized weight copies, per-tensor scales
// and the abs-max slots that the producing kernels fill.
//
// Formats (doc.md, "FP8 training", says why):
//   forward  y  = x @ W^T         x e4m3 (quantized from bf16 just before the GEMM), W e4m3
//   backward dx = dy @ W          dy e5m2, W^T e4m3 (a transposed copy)   } with --gradient-dtype=e5m2,
//            dW += dy^T @ x        dy^T e5m2, x^T e4m3                     } otherwise bf16 x bf16
// The data gradient reads dy K-major along the output features, the weight gradient along the
// tokens: one quantize+transpose pass writes both. x^T is quantized from the bf16 activation the
// forward kept, with the forward's abs-max (so recomputation changes nothing).
// Scales are "current": scale = fp8_max / abs-max of the tensor being quantized, where the abs-max
// of activations and activation gradients comes from the kernel that produced the tensor
// (RMSNorm, SwiGLU, RoPE backward, ...), written into a slot of absmax(layer, slot). The slots are
// zeroed at the start of every micro-step; the producers only max into them.
//
// Weights are quantized once per optimizer step (mark_weights_changed(); the model then calls
// quantize_weight() for every block matrix and mark_weights_current()) and reused by every
// micro-step. The data gradient needs W^T K-major: a second, transposed copy made at the same time,
// or (transpose_per_use, when memory is short: --offload-master) a byte transpose of the one copy
// into a scratch buffer just before each data-gradient GEMM; same bytes either way.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/allocator.h"
#include "model/config.h"
#include "model/param_layout.h"

namespace llmq {

namespace kernels {
class MatmulContext;
}

// Abs-max slots of one layer, in the order the step fills them.
enum class Fp8Slot : int { Ln1Out, Att, Ln2Out, SwigluOut, DResMlp, DMlpUp, DResAtt, DQkv, kCount };

class Fp8Linear {
 public:
  // rows: the most rows one GEMM sees (B*T). fp8_dgrad: activation-gradient GEMMs in e5m2 x e4m3.
  // transpose_per_use: keep one FP8 copy per weight, transposing it for each data gradient.
  Fp8Linear(Allocator& alloc, const ModelConfig& cfg, const ParamLayout& layout, int rows, bool fp8_dgrad,
            bool transpose_per_use = false);

  bool fp8_dgrad() const { return fp8_dgrad_; }
  float* absmax(int layer, Fp8Slot slot) const;

  // Zeroes every abs-max slot (start of a micro-step or an evaluation batch).
  void begin_micro_step(cudaStream_t stream);
  void mark_weights_changed() { weights_current_ = false; }
  void mark_weights_current() { weights_current_ = true; }
  bool weights_current() const { return weights_current_; }
  // Quantizes block matrix `param` from its bf16 values `w` (a device pointer).
  void quantize_weight(int param, const nv_bfloat16* w, cudaStream_t stream);

  // y[rows, out_f] = x[rows, in_f] @ W[out_f, in_f]^T (+ bias), x quantized to e4m3 with x_absmax.
  void forward(kernels::MatmulContext& mm, nv_bfloat16* y, const nv_bfloat16* x, const float* x_absmax, int param,
               const nv_bfloat16* bias, int rows, int in_f, int out_f, cudaStream_t stream);
  // dx[rows, in_f] = dy[rows, out_f] @ W[out_f, in_f] and dW[out_f, in_f] += dy^T @ x, dy quantized
  // to e5m2 with dy_absmax, x to e4m3 with x_absmax (the forward's slot).
  void backward(kernels::MatmulContext& mm, nv_bfloat16* dx, nv_bfloat16* dw, const nv_bfloat16* dy,
                const float* dy_absmax, const nv_bfloat16* x, const float* x_absmax, int param, int rows, int in_f,
                int out_f, cudaStream_t stream);

 private:
  struct QuantWeight {
    int param = -1;
    std::int64_t rows = 0, cols = 0;
    void* q = nullptr;    // e4m3 [rows, cols]
    void* q_t = nullptr;  // e4m3 [cols, rows], only with fp8_dgrad and not transpose_per_use
    int scale_slot = 0;   // index into weight_absmax_ / weight_scale_inv_
  };
  const QuantWeight& quant(int param) const;

  bool fp8_dgrad_;
  bool weights_current_ = false;
  int layers_;
  std::vector<int> param_to_quant_;  // -1 for parameters that stay bf16
  std::vector<QuantWeight> quants_;
  float* weight_absmax_ = nullptr;     // [quants]
  float* weight_scale_inv_ = nullptr;  // [quants * 4]: 16-byte aligned slots
  float* act_absmax_ = nullptr;        // [layers * Fp8Slot::kCount]
  float* act_scale_inv_ = nullptr;     // x, dy, 16 bytes apart (stream order makes one slot each enough)
  void* x_q_ = nullptr;                // e4m3 [rows, max in_f]; in the backward x^T [in_f, rows]
  void* dy_q_ = nullptr;               // e5m2 [rows, max out_f], only with fp8_dgrad
  void* dy_q_t_ = nullptr;             // e5m2 [max out_f, rows], only with fp8_dgrad
  void* w_t_ = nullptr;                // e4m3 W^T of the current GEMM, only with transpose_per_use
};

}  // namespace llmq
