#include "model/model_factory.h"

#include <fmt/format.h>

#include "core/gpu_info.h"
#include "core/sol.h"
#include "model/auto_fit.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/qwen_model.h"

namespace llmq {

namespace {
ModelConfig config_for(const TrainOptions& opts, const ModelFiles& files) {
  if (files.config_json) return load_config_json(*files.config_json);
  if (opts.from_scratch) {
    if (auto preset = find_preset(opts.model)) return *preset;
    throw Error(fmt::format("--model={}: no config.json found and not a built-in preset; with --from-scratch use one "
                            "of: {}", opts.model, fmt::join(preset_names(), ", ")));
  }
  throw Error(model_not_found_message(opts.model));
}

QwenModelOptions model_options(const TrainOptions& opts) {
  QwenModelOptions m;
  m.model_dtype = opts.model_dtype;
  m.opt_m_dtype = opts.opt_m_dtype;
  m.opt_v_dtype = opts.opt_v_dtype;
  m.matmul_dtype = opts.matmul_dtype;
  m.gradient_dtype = opts.gradient_dtype;
  m.batch_size = opts.batch_size;
  m.seq_len = opts.seq_len;
  m.grad_accumulation = opts.grad_accumulation;
  m.lmhead_chunks = opts.lmhead_chunks;
  m.seed = opts.seed;
  m.z_loss = static_cast<float>(opts.z_loss);
  m.init_proj_to_zero = opts.init_proj_to_zero;
  m.memory_limit = opts.memory_limit;
  m.offload_master = opts.offload_master;
  m.offload_gradients = opts.offload_gradients;
  m.offload_opt_m = opts.offload_opt_m;
  m.offload_opt_v = opts.offload_opt_v;
  m.offload_residual = opts.offload_residual;
  m.offload_quants = opts.offload_quants;
  m.use_zero_copy = opts.use_zero_copy;
  m.write_combined = opts.write_combined;
  m.use_cuda_graphs = opts.use_cuda_graphs;
  m.autotune_matmuls = opts.autotune_matmuls;
  m.recompute.swiglu = opts.recompute_swiglu;
  m.recompute.norm = opts.recompute_norm;
  m.recompute.ffn = opts.recompute_ffn;
  m.recompute.qkv = opts.recompute_qkv;
  m.recompute.att = opts.recompute_att;
  m.recompute.block = opts.recompute_block;
  return m;
}

}  // namespace

std::unique_ptr<Model> build_model(const TrainOptions& opts) {
  const ModelFiles files = resolve_model(opts.model);
  const ModelConfig cfg = config_for(opts, files);
  std::filesystem::path weights;
  if (!opts.from_scratch) {
    LLMQ_REQUIRE(files.weights.has_value(), "--model={}: {} has config.json but no model.safetensors (or index); "
                 "pass --from-scratch to train from a random initialisation", opts.model, files.dir.string());
    weights = *files.weights;
    fmt::print("Loading model from {}\n", weights.string());
  } else {
    fmt::print("Initialising {} from scratch (seed {})\n", cfg.name, opts.seed);
  }
  return make_qwen_model(cfg, model_options(opts), weights);
}

void apply_auto_fit(TrainOptions& opts) {
  LLMQ_REQUIRE(opts.memory_limit.has_value(), "--auto-fit needs --memory-limit (the budget to fit)");
  const ModelFiles files = resolve_model(opts.model);
  const ModelConfig cfg = config_for(opts, files);
  const GpuInfo gpu = query_gpu(0);
  // An unknown GPU is costed like an H100: only the order of the estimates matters.
  const double fallback = opts.matmul_dtype == DType::E4M3 ? 1979e12 : 989e12;
  const double peak = peak_flops(gpu.name, opts.matmul_dtype).value_or(fallback);
  const AutoFitResult fit = auto_fit(cfg, model_options(opts), *opts.memory_limit, peak);
  fmt::print("{}\n", fit.summary);
  const QwenModelOptions& m = fit.choice.opts;
  opts.batch_size = m.batch_size;
  opts.grad_accumulation = m.grad_accumulation;
  opts.recompute_swiglu = m.recompute.swiglu;
  opts.recompute_norm = m.recompute.norm;
  opts.recompute_ffn = m.recompute.ffn;
  opts.recompute_qkv = m.recompute.qkv;
  opts.recompute_att = m.recompute.att;
  opts.recompute_block = m.recompute.block;
  opts.offload_master = m.offload_master;
  opts.offload_gradients = m.offload_gradients;
  opts.offload_opt_m = m.offload_opt_m;
  opts.offload_opt_v = m.offload_opt_v;
  opts.offload_residual = m.offload_residual;
  opts.offload_quants = m.offload_quants;
  opts.persistent_quants = opts.persistent_quants || m.offload_quants;
  opts.use_zero_copy = m.use_zero_copy;
  if (opts.use_cuda_graphs && opts.offloads_per_layer()) {
    opts.use_cuda_graphs = false;
    fmt::print("--auto-fit: CUDA graphs off (offloaded layers are copied on streams a graph cannot replay)\n");
  }
}

}  // namespace llmq
