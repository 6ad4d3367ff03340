// QwenModel: construction, weight loading / random init, export and checkpoints.
// The training step itself is in qwen_step.cpp (forward, backward) and qwen_optimizer.cpp (AdamW).
#include "model/qwen_model.h"

#include <cuda_bf16.h>
#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "kernels/attention.h"
#include "kernels/bias.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/global_norm.h"
#include "kernels/init.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "model/moment_streamer.h"
#include "model/fp8_linear.h"
#include "model/qwen_util.h"

namespace llmq {

template <typename T>
QwenModel<T>::QwenModel(const ModelConfig& cfg, const QwenModelOptions& opts)
    : cfg_(cfg), opts_(opts), layout_(cfg), alloc_(opts.memory_limit) {
  LLMQ_REQUIRE(opts.model_dtype == element_dtype<T>(), "internal error: model dtype mismatch");
  LLMQ_REQUIRE(opts.seq_len <= cfg.max_position_embeddings,
               "--seq-len={} exceeds the model's max_position_embeddings={} ({})", opts.seq_len,
               cfg.max_position_embeddings, cfg.name);
  LLMQ_REQUIRE(cfg.hidden_size % 8 == 0 && cfg.intermediate_size % 8 == 0 && cfg.head_size % 16 == 0,
               "model {}: hidden size, MLP width must be multiples of 8 and the head size of 16", cfg.name);
  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));

  const std::int64_t P = layout_.total_elements();
  weights_ = alloc_.allocate("weights", element_dtype<T>(), {P}, MemCategory::Weights);
  grads_ = alloc_.allocate("gradients", element_dtype<T>(), {P}, MemCategory::Gradients);
  const MemKind offload_kind = opts.write_combined ? MemKind::WriteCombined : MemKind::Pinned;
  adam_m_ = alloc_.allocate("adam m", opts.opt_m_dtype, {P}, MemCategory::AdamM,
                            opts.offload_opt_m ? offload_kind : MemKind::Device);
  adam_v_ = alloc_.allocate("adam v", opts.opt_v_dtype, {P}, MemCategory::AdamV,
                            opts.offload_opt_v ? offload_kind : MemKind::Device);
  for (const Tensor& t : {grads_, adam_m_, adam_v_}) {
    if (t.location == Location::Host)
      std::memset(t.data, 0, t.bytes());
    else
      LLMQ_CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.bytes(), stream_));
  }
  moments_ = std::make_unique<MomentStreamer>(alloc_, adam_m_, adam_v_, opts.use_zero_copy, opts.offload_chunk_elements);

  run_ = std::make_unique<RunState>(alloc_, cfg, element_dtype<T>(), opts.batch_size, opts.seq_len, opts.lmhead_chunks,
                                    opts.recompute);
  if (opts.matmul_dtype == DType::E4M3) {
    LLMQ_REQUIRE((std::is_same_v<T, nv_bfloat16>), "--matmul-dtype=e4m3 needs --model-dtype=bf16");
    fp8_ = std::make_unique<Fp8Linear>(alloc_, cfg, layout_, run_->N, opts.gradient_dtype == DType::E5M2);
  }

  matmul_workspace_ = alloc_.allocate_bytes("cuBLASLt workspace", kernels::MatmulContext::kRecommendedWorkspaceBytes,
                                            MemCategory::Workspace);
  matmul_ = std::make_unique<kernels::MatmulContext>(matmul_workspace_, kernels::MatmulContext::kRecommendedWorkspaceBytes);
  if constexpr (std::is_same_v<T, nv_bfloat16>) {
    attention_ = std::make_unique<kernels::AttentionContext>();
    attention_workspace_bytes_ = attention_->workspace_bytes(run_->B, run_->T, cfg.num_query_heads, cfg.num_kv_heads,
                                                             cfg.head_size);
    if (attention_workspace_bytes_)
      attention_workspace_ = alloc_.allocate_bytes("cuDNN attention workspace", attention_workspace_bytes_,
                                                   MemCategory::Workspace);
  }

  rope_table_ = alloc_.allocate("rope cos/sin", DType::FP32, {opts.seq_len, cfg.head_size}, MemCategory::Other);
  kernels::rope_cos_sin_table(reinterpret_cast<float2*>(rope_table_.data), opts.seq_len, cfg.head_size,
                              static_cast<float>(cfg.rope_theta), std::is_same_v<T, nv_bfloat16>, stream_);
  embedding_plan_ = alloc_.allocate("embedding plan", DType::INT32,
                                    {static_cast<std::int64_t>(kernels::embedding_backward_plan_elements(run_->N))},
                                    MemCategory::Other);
  const std::size_t norm_scratch =
      std::max(kernels::rmsnorm_backward_scratch_bytes(run_->N, cfg.hidden_size), kernels::bias_backward_scratch_bytes(run_->N, cfg.qkv_channels()));
  norm_scratch_ = alloc_.allocate("reduction scratch", DType::UINT8, {static_cast<std::int64_t>(norm_scratch)}, MemCategory::Other);
  loss_scratch_ = alloc_.allocate("loss scratch", DType::UINT8, {static_cast<std::int64_t>(kernels::loss_sum_scratch_bytes())},
                                  MemCategory::Other);
  norm_partials_ = alloc_.allocate("norm partials", DType::UINT8,
                                   {static_cast<std::int64_t>(kernels::global_norm_partials_bytes(1))}, MemCategory::Other);
  const std::int64_t accum = opts.grad_accumulation;
  step_stats_ = alloc_.allocate("step stats", DType::FP32, {2 + accum}, MemCategory::Other);
  valid_counts_ = alloc_.allocate("valid counts", DType::INT32, {accum + 1}, MemCategory::Other);
  micro_valid_.assign(accum, 0.f);
}

template <typename T>
QwenModel<T>::~QwenModel() {
  if (stream_) cudaStreamSynchronize(stream_);
  if (step_graph_) cudaGraphExecDestroy(step_graph_);
  attention_.reset();
  matmul_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

template <typename T>
T* QwenModel<T>::weight(int param) const {
  return weights_.get<T>() + layout_[param].offset;
}
template <typename T>
T* QwenModel<T>::grad(int param) const {
  return grads_.get<T>() + layout_[param].offset;
}

template <typename T>
double QwenModel<T>::training_flops_per_token() const {
  return static_cast<double>(cfg_.training_flops_per_token(opts_.seq_len));
}

template <typename T>
void QwenModel<T>::init_random(std::uint64_t seed) {
  LLMQ_CUDA_CHECK(cudaMemsetAsync(weights_.data, 0, weights_.bytes(), stream_));  // alignment padding too
  constexpr float kInitStd = 0.02f;  // transformers' initializer_range for Qwen2
  std::vector<bool> zero_init(layout_.params().size(), false);
  if (opts_.init_proj_to_zero)
    for (int l = 0; l < layout_.num_layers(); ++l)
      zero_init[layout_.layer(l).att_out_w] = zero_init[layout_.layer(l).mlp_down_w] = true;
  for (std::size_t i = 0; i < layout_.params().size(); ++i) {
    const ParamSpec& p = layout_.params()[i];
    T* w = weight(static_cast<int>(i));
    switch (zero_init[i] ? ParamSpec::Init::Zeros : p.init) {
      case ParamSpec::Init::Normal:
        kernels::init_normal(w, p.numel(), kInitStd, param_seed(seed, i), stream_);
        break;
      case ParamSpec::Init::Ones: kernels::fill_constant(w, p.numel(), 1.f, stream_); break;
      case ParamSpec::Init::Zeros: kernels::fill_constant(w, p.numel(), 0.f, stream_); break;
    }
  }
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename T>
void QwenModel<T>::load_hf_weights(const std::filesystem::path& weights_path) {
  SafeTensorsModel file = SafeTensorsModel::open(weights_path);
  std::vector<T> host(static_cast<std::size_t>(layout_.total_elements()), from_float_host<T>(0.f));
  for (const HfSlice& s : layout_.hf_slices()) {
    const ParamSpec& p = layout_[s.param];
    T* dst = host.data() + p.offset + s.row_begin * p.cols();
    if (p.shape.size() == 1)
      read_into(file.get(s.hf_name), dst, element_dtype<T>(), {s.rows});
    else
      read_into(file.get(s.hf_name), dst, element_dtype<T>(), {s.rows, p.cols()});
  }
  LLMQ_CUDA_CHECK(cudaMemcpy(weights_.data, host.data(), weights_.bytes(), cudaMemcpyHostToDevice));
}

template <typename T>
void QwenModel<T>::write_hf_tensors(const Tensor& flat, const std::filesystem::path& file, bool as_fp32) const {
  std::vector<T> host = download<T>(flat, stream_);
  std::vector<float> host_f32;
  if (as_fp32) host_f32 = to_float_host(host);
  SafeTensorsWriter writer;
  for (const HfSlice& s : layout_.hf_slices()) {
    const ParamSpec& p = layout_[s.param];
    const std::int64_t begin = p.offset + s.row_begin * p.cols();
    std::vector<std::int64_t> shape = p.shape.size() == 1 ? std::vector<std::int64_t>{s.rows}
                                                          : std::vector<std::int64_t>{s.rows, p.cols()};
    if (as_fp32)
      writer.add(s.hf_name, DType::FP32, shape, host_f32.data() + begin);
    else
      writer.add(s.hf_name, element_dtype<T>(), shape, host.data() + begin);
  }
  if (file.extension() == ".safetensors")
    writer.write(file);
  else
    writer.write_sharded(file, std::size_t{4} << 30);
}

template <typename T>
void QwenModel<T>::export_model(const std::filesystem::path& dir) const {
  std::filesystem::create_directories(dir);
  write_hf_tensors(weights_, dir, /*as_fp32=*/false);
  std::ofstream(dir / "config.json") << to_hf_config_json(cfg_, element_dtype<T>()).dump(2) << "\n";
}

template <typename T>
void QwenModel<T>::export_gradients(const std::filesystem::path& file) const {
  write_hf_tensors(grads_, file, /*as_fp32=*/true);
}

namespace {
constexpr const char* kCheckpointFile = "model_state.safetensors";

// The bytes of a tensor in device or pinned host memory (offloaded Adam moments), once `stream` is done.
std::vector<std::byte> tensor_bytes(const Tensor& t, cudaStream_t stream) {
  std::vector<std::byte> host(t.bytes());
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  LLMQ_CUDA_CHECK(cudaMemcpy(host.data(), t.data, t.bytes(), cudaMemcpyDefault));
  return host;
}
}  // namespace

template <typename T>
void QwenModel<T>::save_checkpoint(const std::filesystem::path& dir) const {
  std::vector<std::byte> w = tensor_bytes(weights_, stream_), m = tensor_bytes(adam_m_, stream_),
                         v = tensor_bytes(adam_v_, stream_);
  SafeTensorsWriter writer;
  const std::int64_t P = layout_.total_elements();
  writer.add("weights", weights_.dtype, {P}, w.data());
  writer.add("adam_m", adam_m_.dtype, {P}, m.data());
  writer.add("adam_v", adam_v_.dtype, {P}, v.data());
  writer.set_metadata({{"format", "pt"}, {"model", cfg_.name}, {"layout_elements", std::to_string(P)}});
  writer.write(dir / kCheckpointFile);
}

template <typename T>
void QwenModel<T>::load_checkpoint(const std::filesystem::path& dir) {
  SafeTensorsFile file = SafeTensorsFile::open(dir / kCheckpointFile);
  const std::int64_t P = layout_.total_elements();
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));  // nothing may still read the tensors being replaced
  for (auto [name, tensor] : {std::pair<const char*, const Tensor*>{"weights", &weights_}, {"adam_m", &adam_m_},
                              {"adam_v", &adam_v_}}) {
    const SafeTensorInfo& info = file.get(name);
    LLMQ_REQUIRE(info.dtype == tensor->dtype && info.numel() == P,
                 "checkpoint {}: '{}' is {}{} but this run needs {}[{}] (different model or dtype flags?)",
                 dir.string(), name, dtype_name(info.dtype), info.shape_string(), dtype_name(tensor->dtype), P);
    std::vector<std::byte> host(tensor->bytes());
    read_into(info, host.data(), tensor->dtype, {P});
    LLMQ_CUDA_CHECK(cudaMemcpy(tensor->data, host.data(), host.size(), cudaMemcpyDefault));  // device or pinned
  }
  if (fp8_) fp8_->mark_weights_changed();
}

template class QwenModel<float>;
template class QwenModel<nv_bfloat16>;

std::unique_ptr<Model> make_qwen_model(const ModelConfig& cfg, const QwenModelOptions& opts,
                                       const std::filesystem::path& weights_path) {
  auto build = [&](auto model) -> std::unique_ptr<Model> {
    if (weights_path.empty())
      model->init_random(opts.seed);
    else
      model->load_hf_weights(weights_path);
    return model;
  };
  if (opts.model_dtype == DType::FP32) return build(std::make_unique<QwenModel<float>>(cfg, opts));
  LLMQ_REQUIRE(opts.model_dtype == DType::BF16, "--model-dtype={} is not supported (use fp32 or bf16)",
               dtype_name(opts.model_dtype));
  return build(std::make_unique<QwenModel<nv_bfloat16>>(cfg, opts));
}

}  // namespace llmq
