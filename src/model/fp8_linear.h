// FP8 (e4m3) linear layers of the transformer blocks: quantized weight copies, per-tensor scales
// and the abs-max slots that the producing kernels fill.
//
// Formats (doc.md, "FP8 training", says why):
//   forward  y  = x @ W^T         x e4m3 (quantized from bf16 just before the GEMM), W e4m3
//   backward dx = dy @ W          dy e5m2, W^T e4m3 (a transposed copy)   } with --gradient-dtype=e5m2,
//            dW += dy^T @ x        dy^T e5m2, x^T e4m3                     } otherwise bf16 x bf16
// The data gradient reads dy K-major along the output features, the weight gradient along the
// tokens: one quantize+transpose pass writes both. The weight gradient's x^T is the forward's x
// quantized with the same abs-max slot, transposed; it comes from one of two places, same bytes:
//   kept (FP8 gradients, for the inputs KeptFp8Inputs names: those no recomputation needs in bf16):
//     the forward's quantization pass writes x (row-major, shared scratch, for its GEMM) and x^T
//     into a buffer of that block matrix's own (one per layer and GEMM: N * in_f bytes each,
//     category Quants), which the backward reads directly; the bf16 x is then not kept per layer
//     (run_state.h), so this costs less memory than keeping x, besides saving a pass;
//   otherwise (the input is recomputed, or a recomputation reads it in bf16): the backward
//     quantizes the bf16 x again, transposed. Recomputation refills x with the forward's bits and
//     the abs-max slot keeps its value, so both ways agree.
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
// With offload_weights (--offload-quants) that one copy per weight lives in pinned host memory,
// layer after layer, and reaches the GEMMs through two device layer slots (layer_streamer.h): the
// model brackets each layer's use with acquire_layer / release_layer and each re-quantization
// with discard_layer_slots, then begin_update / end_update per layer.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/allocator.h"
#include "model/config.h"
#include "model/param_layout.h"
#include "model/run_state.h"

namespace llmq {

namespace kernels {
class MatmulContext;
}
class LayerStreamer;

// Abs-max slots of one layer, in the order the step fills them.
enum class Fp8Slot : int { Ln1Out, Att, Ln2Out, SwigluOut, DResMlp, DMlpUp, DResAtt, DQkv, kCount };

class Fp8Linear {
 public:
  // rows: the most rows one GEMM sees (B*T). fp8_dgrad: activation-gradient GEMMs in e5m2 x e4m3.
  // transpose_per_use: keep one FP8 copy per weight, transposing it for each data gradient.
  // kept_inputs: the GEMM inputs whose e4m3 x^T the forward keeps for the weight gradient (see
  // above); honoured only with fp8_dgrad and rows % 16 == 0 (else the backward is not FP8).
  // offload_weights: the FP8 weight copies in pinned host memory (implies transpose_per_use).
  Fp8Linear(Allocator& alloc, const ModelConfig& cfg, const ParamLayout& layout, int rows, bool fp8_dgrad,
            bool transpose_per_use = false, KeptFp8Inputs kept_inputs = {}, bool offload_weights = false);
  ~Fp8Linear();

  bool fp8_dgrad() const { return fp8_dgrad_; }
  // Offloaded FP8 weights: layer l's copies are on the device for work enqueued between
  // acquire_layer(l, next) (which also starts copying layer `next`) and release_layer(l);
  // quantize_weight() of layer l's matrices goes between begin_update(l) and end_update(l).
  // All four are no-ops without offload_weights.
  bool streams_weights() const { return streamer_ != nullptr; }
  void acquire_layer(int l, int next, cudaStream_t stream);
  void release_layer(int l, cudaStream_t stream);
  void begin_update(int l, cudaStream_t stream);
  void end_update(int l, cudaStream_t stream);
  // Before re-quantizing: layer slots still holding the old copies must not be reused.
  void discard_layer_slots(cudaStream_t stream);
  const KeptFp8Inputs& kept_inputs() const { return kept_inputs_; }
  float* absmax(int layer, Fp8Slot slot) const;

  // Zeroes every abs-max slot (start of a micro-step or an evaluation batch). A backward uses only
  // x^T kept by a forward of the same micro-step.
  void begin_micro_step(cudaStream_t stream);
  void mark_weights_changed() { weights_current_ = false; }
  void mark_weights_current() { weights_current_ = true; }
  bool weights_current() const { return weights_current_; }
  // Quantizes block matrix `param` from its bf16 values `w` (a device pointer).
  void quantize_weight(int param, const nv_bfloat16* w, cudaStream_t stream);

  // y[rows, out_f] = x[rows, in_f] @ W[out_f, in_f]^T (+ bias), x quantized to e4m3 with x_absmax
  // (if kept_inputs() names this GEMM's input, also kept as x^T for backward() of the same param).
  void forward(kernels::MatmulContext& mm, nv_bfloat16* y, const nv_bfloat16* x, const float* x_absmax, int param,
               const nv_bfloat16* bias, int rows, int in_f, int out_f, cudaStream_t stream);
  // dx[rows, in_f] = dy[rows, out_f] @ W[out_f, in_f] and dW[out_f, in_f] += dy^T @ x, dy quantized
  // to e5m2 with dy_absmax, x to e4m3 with x_absmax (the forward's slot). For a kept input x and
  // x_absmax are not read: the x^T this micro-step's forward kept is.
  void backward(kernels::MatmulContext& mm, nv_bfloat16* dx, nv_bfloat16* dw, const nv_bfloat16* dy,
                const float* dy_absmax, const nv_bfloat16* x, const float* x_absmax, int param, int rows, int in_f,
                int out_f, cudaStream_t stream);
  // The same, for a dy that its producer wrote straight into gradient_buffers() (e5m2, both layouts,
  // with its scale_inv): e.g. kernels::swiglu_backward_e5m2, which skips the bf16 dy.
  struct GradientBuffers {
    void* q;           // e5m2 [rows, out_f]
    void* q_t;         // e5m2 [out_f, rows]
    float* scale_inv;  // 16-byte aligned
  };
  GradientBuffers gradient_buffers() const;
  void backward_quantized(kernels::MatmulContext& mm, nv_bfloat16* dx, nv_bfloat16* dw, const nv_bfloat16* x,
                          const float* x_absmax, int param, int rows, int in_f, int out_f, cudaStream_t stream);

 private:
  struct QuantWeight {
    int param = -1;
    std::int64_t rows = 0, cols = 0;
    int layer = -1;
    void* q = nullptr;    // e4m3 [rows, cols]; null when offloaded
    std::size_t offset_in_layer = 0;  // offloaded: byte offset of this weight in its layer's slot
    void* q_t = nullptr;  // e4m3 [cols, rows], only with fp8_dgrad and not transpose_per_use
    int scale_slot = 0;   // index into weight_absmax_ / weight_scale_inv_ / input_scale_inv_
    void* x_t = nullptr;  // e4m3 [cols, rows_]: the GEMM input x^T, only for kept inputs
    std::uint64_t x_t_micro_step = 0;  // micro_step_ of the forward that wrote x_t (0: none)
  };
  const QuantWeight& quant(int param) const;
  QuantWeight& quant(int param);
  void* weight_q(const QuantWeight& w) const;  // the e4m3 copy on the device (a layer slot if offloaded)
  // Offloaded layout: layer after layer in one pinned buffer, every weight 16-byte aligned.
  void make_offloaded_weights(Allocator& alloc);

  bool fp8_dgrad_;
  KeptFp8Inputs kept_inputs_;
  bool weights_current_ = false;
  int layers_;
  int rows_;
  std::uint64_t micro_step_ = 0;  // begin_micro_step() calls so far
  std::vector<int> param_to_quant_;  // -1 for parameters that stay bf16
  std::vector<QuantWeight> quants_;
  float* weight_absmax_ = nullptr;     // [quants]
  float* weight_scale_inv_ = nullptr;  // [quants * 4]: 16-byte aligned slots
  float* act_absmax_ = nullptr;        // [layers * Fp8Slot::kCount]
  float* act_scale_inv_ = nullptr;     // x, dy, 16 bytes apart (stream order makes one slot each enough)
  float* input_scale_inv_ = nullptr;   // [quants * 4]: scale of each kept x^T, only if any is kept
  void* x_q_ = nullptr;                // e4m3 [rows, max in_f]; in the backward x^T [in_f, rows] unless kept
  void* dy_q_ = nullptr;               // e5m2 [rows, max out_f], only with fp8_dgrad
  void* dy_q_t_ = nullptr;             // e5m2 [max out_f, rows], only with fp8_dgrad
  void* w_t_ = nullptr;                // e4m3 W^T of the current GEMM, only with transpose_per_use
  std::unique_ptr<LayerStreamer> streamer_;  // only with offload_weights
};

}  // namespace llmq
