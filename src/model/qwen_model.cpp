// QwenModel: construction, weight loading / random init, export and checkpoints.
// The training step itself is in qwen_step.cpp (forward, backward) and qwen_optimizer.cpp (AdamW).
#include "model/qwen_model.h"

#include <cuda_bf16.h>
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/planning_backend.h"
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
#include "model/layer_streamer.h"
#include "model/memory_hints.h"
#include "model/param_store.h"
#include "model/residual_streamer.h"
#include "model/state_streamer.h"
#include "model/fp8_linear.h"
#include "model/qwen_util.h"

namespace llmq {

template <typename T>
QwenModel<T>::QwenModel(const ModelConfig& cfg, const QwenModelOptions& opts)
    : cfg_(cfg),
      opts_(opts),
      layout_(cfg),
      alloc_(opts.plan_only ? std::nullopt : opts.memory_limit,
             opts.plan_only ? make_planning_backend(opts.memory_limit.value_or(0)) : make_cuda_backend()) {
  alloc_.set_shrink_hints(memory_shrink_hints());
  LLMQ_REQUIRE(opts.model_dtype == element_dtype<T>(), "internal error: model dtype mismatch");
  LLMQ_REQUIRE(opts.seq_len <= cfg.max_position_embeddings,
               "--seq-len={} exceeds the model's max_position_embeddings={} ({})", opts.seq_len,
               cfg.max_position_embeddings, cfg.name);
  LLMQ_REQUIRE(cfg.hidden_size % 8 == 0 && cfg.intermediate_size % 8 == 0 && cfg.head_size % 16 == 0,
               "model {}: hidden size, MLP width must be multiples of 8 and the head size of 16", cfg.name);
  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));

  make_state_stores();
  // FP8 gradients take the SwiGLU gradient straight to e5m2: no bf16 d_mlp_up (qwen_step.cpp).
  const KeptFp8Inputs kept_inputs = opts.kept_fp8_inputs();
  run_ = std::make_unique<RunState>(alloc_, cfg, element_dtype<T>(), opts.batch_size, opts.seq_len, opts.lmhead_chunks,
                                    opts.recompute, opts.offload_residual,
                                    /*mlp_up_gradient=*/!opts.fp8_backward(),
                                    kept_inputs);
  if (opts.offload_residual)
    residuals_ = std::make_unique<ResidualStreamer>(
        alloc_, cfg.num_layers + 1, run_->residual[0].bytes(),
        std::array<std::byte*, 2>{run_->residual_slots[0].bytes_ptr(), run_->residual_slots[1].bytes_ptr()});
  LLMQ_REQUIRE(!opts.offload_quants || opts.matmul_dtype == DType::E4M3,
               "--offload-quants needs --matmul-dtype=e4m3 (there are no FP8 weight copies otherwise)");
  if (opts.matmul_dtype == DType::E4M3) {
    LLMQ_REQUIRE((std::is_same_v<T, nv_bfloat16>), "--matmul-dtype=e4m3 needs --model-dtype=bf16");
    fp8_ = std::make_unique<Fp8Linear>(alloc_, cfg, layout_, run_->N, opts.gradient_dtype == DType::E5M2,
                                       /*transpose_per_use=*/opts.offload_master, kept_inputs,
                                       /*offload_weights=*/opts.offload_quants);
    LLMQ_REQUIRE(fp8_->kept_inputs() == kept_inputs,
                 "internal error: the FP8 layers and the activation plan disagree on keeping x^T");
  }
  stream_weights_forward_ = weights_->any_offloaded() && !fp8_;
  stream_weights_backward_ = weights_->any_offloaded() && !fp8_backward();

  matmul_workspace_ = alloc_.allocate_bytes("cuBLASLt workspace", kernels::MatmulContext::kRecommendedWorkspaceBytes,
                                            MemCategory::Workspace);
  matmul_ = std::make_unique<kernels::MatmulContext>(matmul_workspace_, kernels::MatmulContext::kRecommendedWorkspaceBytes);
  matmul_->set_autotune(opts.autotune_matmuls && !opts.plan_only);
  if constexpr (std::is_same_v<T, nv_bfloat16>) {
    attention_ = std::make_unique<kernels::AttentionContext>();
    attention_workspace_bytes_ = attention_->workspace_bytes(run_->B, run_->T, cfg.num_query_heads, cfg.num_kv_heads,
                                                             cfg.head_size);
    if (attention_workspace_bytes_)
      attention_workspace_ = alloc_.allocate_bytes("cuDNN attention workspace", attention_workspace_bytes_,
                                                   MemCategory::Workspace);
  }

  rope_table_ = alloc_.allocate("rope cos/sin", DType::FP32, {opts.seq_len, cfg.head_size}, MemCategory::Other);
  if (!opts.plan_only)
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
  const int num_params = static_cast<int>(layout_.params().size());
  norm_partials_ = alloc_.allocate("norm partials", DType::UINT8,
                                   {static_cast<std::int64_t>(kernels::global_norm_partials_bytes(num_params))},
                                   MemCategory::Other);
  const std::int64_t accum = opts.grad_accumulation;
  step_stats_ = alloc_.allocate("step stats", DType::FP32, {2 + accum}, MemCategory::Other);
  valid_counts_ = alloc_.allocate("valid counts", DType::INT32, {accum + 1}, MemCategory::Other);
  grad_scale_ = alloc_.allocate("loss gradient scale", DType::FP32, {1}, MemCategory::Other);
  micro_valid_.assign(accum, 0.f);
  step_graphs_.assign(accum, nullptr);
  // Offloading copies run on streams of their own, keyed to host-side slot bookkeeping that a replay
  // would not redo: those runs stay eager (the command line refuses an explicit request for both).
  const bool streams = residuals_ || weight_layers_ || grad_layers_ || (fp8_ && fp8_->streams_weights());
  cuda_graphs_off_ = opts.use_cuda_graphs && streams;
}

template <typename T>
QwenModel<T>::~QwenModel() {
  if (stream_) cudaStreamSynchronize(stream_);
  for (cudaGraphExec_t graph : step_graphs_)
    if (graph) cudaGraphExecDestroy(graph);
  attention_.reset();
  matmul_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

// Weights, gradients and the Adam moments, each a ParamStore: the block matrices of a store whose
// --offload-* flag is set live in pinned host memory, everything else on the device.
template <typename T>
void QwenModel<T>::make_state_stores() {
  const std::vector<ParamSpec>& params = layout_.params();
  std::vector<bool> block_matrix(params.size(), false), none(params.size(), false), all(params.size(), true);
  for (int l = 0; l < layout_.num_layers(); ++l)
    for (int id : layout_.layer(l).matrices()) block_matrix[id] = true;
  const MemKind host = opts_.write_combined ? MemKind::WriteCombined : MemKind::Pinned;
  const DType t = element_dtype<T>();
  weights_ = std::make_unique<ParamStore>(alloc_, "weights", t, MemCategory::Weights, layout_,
                                          opts_.offload_master ? block_matrix : none, host);
  grads_ = std::make_unique<ParamStore>(alloc_, "gradients", t, MemCategory::Gradients, layout_,
                                        opts_.offload_gradients ? block_matrix : none, host);
  adam_m_ = std::make_unique<ParamStore>(alloc_, "adam m", opts_.opt_m_dtype, MemCategory::AdamM, layout_,
                                         opts_.offload_opt_m ? all : none, host);
  adam_v_ = std::make_unique<ParamStore>(alloc_, "adam v", opts_.opt_v_dtype, MemCategory::AdamV, layout_,
                                         opts_.offload_opt_v ? all : none, host);
  if (!opts_.plan_only)
    for (const ParamStore* store : {grads_.get(), adam_m_.get(), adam_v_.get()}) store->zero(stream_);
  if (weights_->any_offloaded())
    weight_layers_ = std::make_unique<LayerStreamer>(alloc_, *weights_, layout_, "weights", MemCategory::Weights);
  if (grads_->any_offloaded())
    grad_layers_ = std::make_unique<LayerStreamer>(alloc_, *grads_, layout_, "gradients", MemCategory::Gradients);
  state_ = std::make_unique<StateStreamer>(
      alloc_,
      std::vector<StateStreamer::Role>{{weights_.get(), true}, {grads_.get(), false}, {adam_m_.get(), true},
                                       {adam_v_.get(), true}},
      opts_.use_zero_copy, opts_.offload_chunk_elements);
}

template <typename T>
T* QwenModel<T>::weight(int param) const {
  if (weights_->offloaded(param)) return reinterpret_cast<T*>(weight_layers_->device_ptr(param));
  return reinterpret_cast<T*>(weights_->param_ptr(param));
}
template <typename T>
T* QwenModel<T>::grad(int param) const {
  if (grads_->offloaded(param)) return reinterpret_cast<T*>(grad_layers_->device_ptr(param));
  return reinterpret_cast<T*>(grads_->param_ptr(param));
}

template <typename T>
double QwenModel<T>::training_flops_per_token() const {
  return static_cast<double>(cfg_.training_flops_per_token(opts_.seq_len));
}

template <typename T>
void QwenModel<T>::init_random(std::uint64_t seed) {
  weights_->zero(stream_);  // alignment padding too
  constexpr float kInitStd = 0.02f;  // transformers' initializer_range for Qwen2
  std::vector<bool> zero_init(layout_.params().size(), false);
  if (opts_.init_proj_to_zero)
    for (int l = 0; l < layout_.num_layers(); ++l)
      zero_init[layout_.layer(l).att_out_w] = zero_init[layout_.layer(l).mlp_down_w] = true;
  auto init = [&](int i) {
    const ParamSpec& p = layout_[i];
    T* w = weight(i);
    switch (zero_init[i] ? ParamSpec::Init::Zeros : p.init) {
      case ParamSpec::Init::Normal:
        kernels::init_normal(w, p.numel(), kInitStd, param_seed(seed, i), stream_);
        break;
      case ParamSpec::Init::Ones: kernels::fill_constant(w, p.numel(), 1.f, stream_); break;
      case ParamSpec::Init::Zeros: kernels::fill_constant(w, p.numel(), 0.f, stream_); break;
    }
  };
  // Offloaded block matrices are made in a layer slot and written back to host memory.
  for (int l = 0; weight_layers_ && l < layout_.num_layers(); ++l) {
    weight_layers_->acquire_for_update(l, /*from_host=*/false, stream_);
    for (int i : layout_.layer(l).matrices())
      if (weights_->offloaded(i)) init(i);
    weight_layers_->write_back(l, stream_);
  }
  for (int i = 0; i < static_cast<int>(layout_.params().size()); ++i)
    if (!weights_->offloaded(i)) init(i);
  weights_changed();
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
  weights_->upload(reinterpret_cast<const std::byte*>(host.data()), stream_);
  weights_changed();
}

// Everything that caches the weights (offloaded layer slots, FP8 copies) must reread them.
template <typename T>
void QwenModel<T>::weights_changed() {
  if (weight_layers_) {
    weight_layers_->synchronize_into(stream_);
    weight_layers_->invalidate(stream_);
  }
  if (fp8_) fp8_->mark_weights_changed();
}

template <typename T>
void QwenModel<T>::write_hf_tensors(const ParamStore& flat, const std::filesystem::path& file, bool as_fp32) const {
  const std::vector<std::byte> bytes = flat.download(stream_);
  const T* host = reinterpret_cast<const T*>(bytes.data());  // new[]'d: aligned for T
  std::vector<float> host_f32;
  if (as_fp32) host_f32 = to_float_host(std::vector<T>(host, host + bytes.size() / sizeof(T)));
  SafeTensorsWriter writer;
  for (const HfSlice& s : layout_.hf_slices()) {
    const ParamSpec& p = layout_[s.param];
    const std::int64_t begin = p.offset + s.row_begin * p.cols();
    std::vector<std::int64_t> shape = p.shape.size() == 1 ? std::vector<std::int64_t>{s.rows}
                                                          : std::vector<std::int64_t>{s.rows, p.cols()};
    if (as_fp32)
      writer.add(s.hf_name, DType::FP32, shape, host_f32.data() + begin);
    else
      writer.add(s.hf_name, element_dtype<T>(), shape, host + begin);
  }
  if (file.extension() == ".safetensors")
    writer.write(file);
  else
    writer.write_sharded(file, std::size_t{4} << 30);
}

template <typename T>
void QwenModel<T>::export_model(const std::filesystem::path& dir) const {
  std::filesystem::create_directories(dir);
  write_hf_tensors(*weights_, dir, /*as_fp32=*/false);
  std::ofstream(dir / "config.json") << to_hf_config_json(cfg_, element_dtype<T>()).dump(2) << "\n";
}

template <typename T>
void QwenModel<T>::export_gradients(const std::filesystem::path& file) const {
  if (grad_layers_) grad_layers_->synchronize_into(stream_);
  write_hf_tensors(*grads_, file, /*as_fp32=*/true);
}

namespace {
constexpr const char* kCheckpointFile = "model_state.safetensors";
// The matmul algorithm of each problem (MatmulContext::choices), so that a resumed run computes
// exactly what the uninterrupted one would have, also where the algorithms were tuned by timing.
constexpr const char* kMatmulChoicesFile = "matmul_algorithms.json";

void save_matmul_choices(const kernels::MatmulContext& matmul, const std::filesystem::path& file) {
  const nlohmann::json j = {{"environment", kernels::MatmulContext::environment()}, {"choices", matmul.choices()}};
  std::ofstream(file) << j.dump(1) << "\n";
}

// A missing file (a checkpoint from before the file existed) or one from another GPU or cuBLASLt
// leaves the choice to this run; the warning says what that costs.
void load_matmul_choices(kernels::MatmulContext& matmul, const std::filesystem::path& file) {
  if (!std::filesystem::exists(file)) return;
  const std::string here = kernels::MatmulContext::environment();
  std::string problem;
  try {
    const nlohmann::json j = nlohmann::json::parse(std::ifstream(file));
    const std::string there = j.at("environment").get<std::string>();
    if (there == here) {
      matmul.preset_choices(j.at("choices").get<std::map<std::string, int>>());
      return;
    }
    problem = fmt::format("they were chosen on {}, this is {}", there, here);
  } catch (const nlohmann::json::exception& e) {
    problem = fmt::format("unreadable ({})", e.what());
  }
  fmt::print(stderr, "warning: {}: {}; the matmul algorithms are chosen again, so the resumed run may differ from an "
             "uninterrupted one in the last bits\n", file.string(), problem);
}
}  // namespace

template <typename T>
void QwenModel<T>::save_checkpoint(const std::filesystem::path& dir) const {
  SafeTensorsWriter writer;
  const std::int64_t P = layout_.total_elements();
  std::vector<std::vector<std::byte>> bytes;
  bytes.reserve(3);
  for (auto [name, store] : {std::pair<const char*, const ParamStore*>{"weights", weights_.get()},
                             {"adam_m", adam_m_.get()}, {"adam_v", adam_v_.get()}}) {
    bytes.push_back(store->download(stream_));
    writer.add(name, store->dtype(), {P}, bytes.back().data());
  }
  writer.set_metadata({{"format", "pt"}, {"model", cfg_.name}, {"layout_elements", std::to_string(P)}});
  writer.write(dir / kCheckpointFile);
  save_matmul_choices(*matmul_, dir / kMatmulChoicesFile);
}

template <typename T>
void QwenModel<T>::load_checkpoint(const std::filesystem::path& dir) {
  SafeTensorsFile file = SafeTensorsFile::open(dir / kCheckpointFile);
  const std::int64_t P = layout_.total_elements();
  for (auto [name, store] : {std::pair<const char*, const ParamStore*>{"weights", weights_.get()},
                             {"adam_m", adam_m_.get()}, {"adam_v", adam_v_.get()}}) {
    const SafeTensorInfo& info = file.get(name);
    LLMQ_REQUIRE(info.dtype == store->dtype() && info.numel() == P,
                 "checkpoint {}: '{}' is {}{} but this run needs {}[{}] (different model or dtype flags?)",
                 dir.string(), name, dtype_name(info.dtype), info.shape_string(), dtype_name(store->dtype()), P);
    std::vector<std::byte> host(static_cast<std::size_t>(P) * dtype_size(store->dtype()));
    read_into(info, host.data(), store->dtype(), {P});
    store->upload(host.data(), stream_);  // waits for everything that still reads the old values
  }
  weights_changed();
  load_matmul_choices(*matmul_, dir / kMatmulChoicesFile);
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
  LLMQ_REQUIRE(!opts.plan_only, "internal error: a planning model cannot train (use plan_qwen_memory)");
  if (opts.model_dtype == DType::FP32) return build(std::make_unique<QwenModel<float>>(cfg, opts));
  LLMQ_REQUIRE(opts.model_dtype == DType::BF16, "--model-dtype={} is not supported (use fp32 or bf16)",
               dtype_name(opts.model_dtype));
  return build(std::make_unique<QwenModel<nv_bfloat16>>(cfg, opts));
}

MemoryPlan plan_qwen_memory(const ModelConfig& cfg, QwenModelOptions opts) {
  opts.plan_only = true;
  auto plan = [](const Model& model) {
    const Allocator& alloc = model.allocator();
    MemoryPlan p;
    p.device_bytes = alloc.device_peak();
    for (int c = 0; c < static_cast<int>(MemCategory::kCount); ++c)
      for (MemKind kind : {MemKind::Pinned, MemKind::WriteCombined})
        p.host_bytes += alloc.in_use(static_cast<MemCategory>(c), kind);
    p.report = alloc.state_report();
    return p;
  };
  if (opts.model_dtype == DType::FP32) return plan(QwenModel<float>(cfg, opts));
  return plan(QwenModel<nv_bfloat16>(cfg, opts));
}

}  // namespace llmq
