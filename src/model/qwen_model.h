// QwenModel: a Qwen2-style decoder on one GPU, implementing the training loop's Model interface.
// Element type T is float (fp32 models) or nv_bfloat16 (bf16 models); weights, activations and
// gradients use T, Adam m/v use their own dtypes, all accumulation is fp32.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "kernels/cross_entropy.h"
#include "model/config.h"
#include "model/param_layout.h"
#include "model/run_state.h"
#include "training/model.h"

namespace llmq {

struct QwenModelOptions {
  DType model_dtype = DType::BF16;
  DType opt_m_dtype = DType::FP32;
  DType opt_v_dtype = DType::FP32;
  DType matmul_dtype = DType::BF16;    // E4M3: FP8 block GEMMs (bf16 models only), see fp8_linear.h
  DType gradient_dtype = DType::BF16;  // E5M2: FP8 activation-gradient GEMMs too
  int batch_size = 4;          // B
  int seq_len = 1024;          // T
  int grad_accumulation = 1;   // micro-batches per optimizer step (scales the loss gradient)
  int lmhead_chunks = 1;
  std::uint64_t seed = 42;     // weight init and stochastic rounding
  float z_loss = 0.f;          // adds z_loss * logsumexp^2 to each token's loss
  bool init_proj_to_zero = false;  // random init: attention-out and MLP-down projections start at zero
  std::optional<std::size_t> memory_limit;
  RecomputeOptions recompute;  // activations the backward pass recomputes (see run_state.h)
  // Parameter state in pinned host memory (see param_store.h). The optimizer streams it through
  // device staging buffers in chunks (state_streamer.h), or reads and writes it in place with
  // use_zero_copy. Offloaded weights and gradients are the block matrices (QKV, attention out, MLP
  // up and down); the forward and backward passes reach them one layer at a time through two
  // device slots (layer_streamer.h). Embeddings, LM head, norms and biases stay on the device.
  bool offload_master = false;
  bool offload_gradients = false;
  bool offload_opt_m = false;
  bool offload_opt_v = false;
  // The residual stream residual[0..L] in pinned host memory, two device slots (residual_streamer.h).
  bool offload_residual = false;
  // FP8 weight copies in pinned host memory, one layer at a time in two device slots (fp8_linear.h).
  bool offload_quants = false;
  bool use_zero_copy = false;
  bool write_combined = false;              // offloaded buffers are write-combined pinned memory
  std::int64_t offload_chunk_elements = 0;  // streamed chunk; 0 = automatic (tests use small ones)
  bool use_cuda_graphs = false;  // replay each micro-step's kernels as a CUDA graph (see qwen_step.cpp)
  // FP8 gradients: the forward keeps x^T e4m3 of the block GEMM inputs that no recomputation needs
  // in bf16 (kept_fp8_inputs()) for the weight gradient (fp8_linear.h), and those bf16 inputs are not
  // kept per layer (run_state.h); false re-quantizes x in the backward instead (tests compare the two).
  bool keep_fp8_input_transposes = true;
  // Time cuBLASLt's candidate algorithms per GEMM on first use (matmul.h); checkpoints keep the choice.
  bool autotune_matmuls = false;
  // Sizing only (plan_qwen_memory): allocations are recorded, never backed by memory, never touched.
  bool plan_only = false;

  // The GEMM inputs whose x^T the FP8 forward keeps: with keep_fp8_input_transposes and FP8 weight
  // gradients (e4m3 x e5m2, B*T a multiple of 16), those that no recomputation reads or refills in
  // bf16 (KeptFp8Inputs::unless_recomputed). Per token and layer an input of width W takes W bytes
  // of x^T instead of 2W bytes of bf16 (att's comes on top of the bf16 copy the attention backward
  // needs, so only without recomputation), and the backward skips its quantization pass.
  KeptFp8Inputs kept_fp8_inputs() const {
    if (!fp8_backward() || !keep_fp8_input_transposes) return {};
    return KeptFp8Inputs::unless_recomputed(recompute);
  }
  // The block GEMMs' gradients run in FP8 (e5m2 x e4m3): that needs the weight gradient's K, the
  // B*T tokens, to be a multiple of 16.
  bool fp8_backward() const {
    return matmul_dtype == DType::E4M3 && gradient_dtype == DType::E5M2 && batch_size * seq_len % 16 == 0;
  }
};

// What a configuration needs: device bytes (the allocator's peak, library workspaces included,
// which must fit --memory-limit) and pinned host bytes, without allocating either.
struct MemoryPlan {
  std::size_t device_bytes = 0;
  std::size_t host_bytes = 0;
  std::string report;  // the [Allocator State] table of the planned run
};
MemoryPlan plan_qwen_memory(const ModelConfig& cfg, QwenModelOptions opts);

// Builds the model: weights from `weights_path` (a safetensors file, index or directory) or, when
// it is empty, random initialisation the way transformers does it.
std::unique_ptr<Model> make_qwen_model(const ModelConfig& cfg, const QwenModelOptions& opts,
                                       const std::filesystem::path& weights_path);

namespace kernels {
class MatmulContext;
class AttentionContext;
struct AdamWConfig;
struct AdamWPiece;
}  // namespace kernels
class ParamStore;
class LayerStreamer;
class StateStreamer;
class ResidualStreamer;
class Fp8Linear;
enum class Fp8Slot : int;

template <typename T>
class QwenModel final : public Model {
 public:
  QwenModel(const ModelConfig& cfg, const QwenModelOptions& opts);
  ~QwenModel() override;

  void init_random(std::uint64_t seed);
  void load_hf_weights(const std::filesystem::path& weights_path);

  void forward_backward(const std::int32_t* inputs, const std::int32_t* targets, int micro_step) override;
  StepResult optimizer_step(const AdamWSettings& settings, int step) override;
  float evaluate(const std::int32_t* inputs, const std::int32_t* targets) override;
  void save_checkpoint(const std::filesystem::path& dir) const override;
  void load_checkpoint(const std::filesystem::path& dir) override;
  void export_model(const std::filesystem::path& dir) const override;
  double training_flops_per_token() const override;
  int vocab_size() const override { return cfg_.vocab_size; }
  const Allocator& allocator() const override { return alloc_; }

  // Current gradients under HF names, as fp32 (tests compare them with PyTorch).
  void export_gradients(const std::filesystem::path& file) const;
  // Micro-steps that ran as a CUDA graph so far, and graphs captured (tests check that graphs were
  // really used, and captured once per micro-step position).
  int cuda_graph_launches() const { return graph_launches_; }
  int cuda_graph_captures() const { return graph_captures_; }

 private:
  // Forward pass through the final norm; the loss and its gradient come from lm_head_loss.
  void forward();
  // LM head + cross-entropy, chunked; with `backward` also d(final_out) and the LM head gradient.
  void lm_head_loss(bool backward, kernels::GradScale grad_scale);
  void backward(int micro_step);
  // Everything of a micro-step after its host-dependent uploads: no host input (the loss gradient
  // scale is read from grad_scale_), so capturable.
  void micro_step_kernels(int micro_step);
  // Launches the graph of this micro-step position, capturing and instantiating it on first use.
  // False when capture or instantiation failed: nothing ran, graphs are off for the rest of the run.
  bool launch_step_graph(int micro_step);
  cudaGraphExec_t instantiate_micro_step(int micro_step);
  void disable_cuda_graphs(const std::string& reason);
  // Pieces of layer l's forward (data flow in run_state.h). forward() runs them all in order;
  // recompute_layer() reruns, with the same kernels and arguments, those whose outputs the
  // recompute plan dropped, so the recomputed values are bit-identical to the forward's.
  // `save_rstd`: also write the rstd vector (the forward does, a recomputation keeps the forward's).
  void ln1_forward(int l, bool save_rstd);                // residual[l] -> ln1_out
  void qkv_forward(int l);                                // ln1_out -> qkv (GEMM + bias, RoPE)
  void attention_forward(int l);                          // qkv -> att, att_lse
  void attention_out_forward(int l, bool save_rstd);      // att -> residual_mid, ln2_out
  void ln2_forward(int l, bool save_rstd);                // residual_mid -> ln2_out
  void mlp_up_forward(int l);                             // ln2_out -> mlp_up
  void swiglu_forward(int l);                             // mlp_up -> swiglu_out
  void mlp_down_forward(int l);                           // swiglu_out -> residual[l+1], next ln1_out / final_out
  void attention_block_forward(int l);
  // Refills the shared (recomputed) activations of layer l before its backward.
  void recompute_layer(int l);
  void upload_batch(const std::int32_t* inputs, const std::int32_t* targets);
  void upload_embedding_plan(const std::int32_t* host_inputs);  // for embedding_backward
  // Linear layer y[rows, out_f] = x[rows, in_f] @ W[out_f, in_f]^T (+ bias) and its two gradients.
  void linear_forward(T* y, const T* x, const T* w, const T* bias, int rows, int in_f, int out_f);
  void linear_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int rows, int in_f, int out_f);
  void weight_gradient(T* dw, const T* dy, const T* x, int rows, int in_f, int out_f);
  // Block linear layers (N rows) of parameter `param` in layer l: FP8 with --matmul-dtype=e4m3, the
  // slot names the abs-max of the input (forward) or of dy (backward) that its producer recorded.
  void block_linear_forward(T* y, const T* x, Fp8Slot x_slot, int l, int param, const T* bias, int in_f, int out_f);
  void block_linear_backward(T* dx, const T* dy, Fp8Slot dy_slot, const T* x, Fp8Slot x_slot, int l, int param,
                             int in_f, int out_f);
  bool fp8_backward() const;  // block GEMM gradients in FP8 (e5m2 x e4m3)
  void swiglu_up_backward(int l);  // d_swiglu -> d_ln, through the SwiGLU and the gate_up GEMM
  float* fp8_absmax(int l, Fp8Slot slot) const;
  void prepare_fp8();  // re-quantizes changed weights, zeroes the abs-max slots
  // Offloaded block weights / gradients of layer l: into a device slot before its work, and out
  // after it (see layer_streamer.h); no-ops when nothing is offloaded.
  void acquire_layer_weights(int l, int next);
  void release_layer_weights(int l);
  void acquire_layer_grads(int l, int micro_step);
  void finish_layer_grads(int l, int micro_step);
  // Sum of squares of parameter `param`'s gradient into its global-norm slot.
  void gradient_norm_partial(int param);
  // AdamW on the pieces of parameters in one chunk; `at` holds device-accessible addresses of the
  // chunk's first element of the weights, gradients, Adam m and Adam v.
  using StatePointers = std::array<void*, 4>;
  void apply_adamw(const std::vector<kernels::AdamWPiece>& pieces, const StatePointers& at,
                   const kernels::AdamWConfig& shared, const float* clip_scale);
  void write_hf_tensors(const ParamStore& flat, const std::filesystem::path& file, bool as_fp32) const;

  void make_state_stores();
  void weights_changed();  // after the weights were rewritten: layer slots and FP8 copies are stale
  T* weight(int param) const;
  T* grad(int param) const;

  ModelConfig cfg_;
  QwenModelOptions opts_;
  ParamLayout layout_;
  Allocator alloc_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<kernels::MatmulContext> matmul_;
  std::unique_ptr<kernels::AttentionContext> attention_;
  void* matmul_workspace_ = nullptr;
  void* attention_workspace_ = nullptr;
  std::size_t attention_workspace_bytes_ = 0;

  // Flat state, see ParamLayout; each store may keep parts in pinned host memory.
  std::unique_ptr<ParamStore> weights_, grads_, adam_m_, adam_v_;
  std::unique_ptr<LayerStreamer> weight_layers_, grad_layers_;  // only for offloaded stores
  std::unique_ptr<StateStreamer> state_;      // how the optimizer reaches all four stores
  std::unique_ptr<ResidualStreamer> residuals_;  // only with offload_residual
  bool stream_weights_forward_ = false;      // the forward reads offloaded bf16/fp32 block matrices
  bool stream_weights_backward_ = false;     // so does the backward
  std::unique_ptr<Fp8Linear> fp8_;            // only with --matmul-dtype=e4m3
  std::unique_ptr<RunState> run_;
  Tensor rope_table_;                         // float2 [T, Hs/2]
  Tensor embedding_plan_;                     // int32, see kernels/embedding.h
  Tensor norm_scratch_;                       // scratch of the rmsnorm / bias gradient reductions
  Tensor loss_scratch_, norm_partials_;       // scratch of loss_sum; global-norm partials, one slot per parameter
  Tensor step_stats_;                         // fp32 [2 + accum]: norm, clip scale, loss sum per micro-batch
  Tensor valid_counts_;                       // int32 [accum + 1]: valid targets per micro-batch (+ eval)
  std::vector<float> micro_valid_;            // host copy of the valid target counts of this step
  std::vector<std::int32_t> host_plan_;       // embedding backward plan of the current micro-batch
  Tensor grad_scale_;                         // fp32 [1]: loss gradient scale of the current micro-batch
  // With use_cuda_graphs, one executable graph per micro-step position (the loss slot and the
  // gradient bookkeeping differ between positions, nothing else does), captured once and replayed.
  std::vector<cudaGraphExec_t> step_graphs_;
  bool first_micro_step_done_ = false;
  bool cuda_graphs_off_ = false;              // after a failed capture, or for runs that stream layers
  int graph_launches_ = 0;
  int graph_captures_ = 0;
};

}  // namespace llmq
