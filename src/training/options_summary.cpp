// The summary of a parsed TrainOptions: every setting as {name, value} in a stable order, written
// to the training log as JSON and printed at start-up as the [Options] table.
#include <fmt/format.h>

#include <algorithm>

#include "core/allocator.h"
#include "training/options.h"

namespace llmq {

std::vector<std::pair<std::string, nlohmann::json>> option_entries(const TrainOptions& o) {
  using nlohmann::json;
  auto dt = [](DType t) { return json(std::string(dtype_name(t))); };
  auto opt_string = [](const std::optional<std::string>& s) { return s ? json(s->empty() ? "latest" : *s) : json(); };
  auto opt_bytes = [](const std::optional<std::size_t>& b) { return b ? json(*b) : json(); };
  return {
      {"model", o.model},
      {"from-scratch", o.from_scratch},
      {"init-proj-to-zero", o.init_proj_to_zero},
      {"seed", o.seed},
      {"model-dtype", dt(o.model_dtype)},
      {"matmul-dtype", dt(o.matmul_dtype)},
      {"gradient-dtype", dt(o.gradient_dtype)},
      {"batch-size", o.batch_size},
      {"seq-len", o.seq_len},
      {"grad-accumulation", o.grad_accumulation},
      {"lmhead-chunks", o.lmhead_chunks},
      {"attn-bwd-chunks", o.attn_bwd_chunks},
      {"learning-rate", o.learning_rate},
      {"warmup", o.warmup},
      {"cooldown", o.cooldown},
      {"final-lr-fraction", o.final_lr_fraction},
      {"lr-schedule", std::string(lr_schedule_name(o.lr_schedule))},
      {"beta-1", o.beta1},
      {"beta-2", o.beta2},
      {"adam-epsilon", o.adam_epsilon},
      {"grad-clip", o.grad_clip},
      {"weight-decay", o.weight_decay},
      {"z-loss", o.z_loss},
      {"opt-m-dtype", dt(o.opt_m_dtype)},
      {"opt-v-dtype", dt(o.opt_v_dtype)},
      {"steps", o.steps},
      {"epochs", o.epochs},
      {"train-file", o.train_file},
      {"train-seed", o.train_seed},
      {"eval-file", o.eval_file},
      {"eval-seed", o.eval_seed},
      {"eval-every-n-steps", o.eval_every_n_steps},
      {"eval-num-steps", o.eval_num_steps},
      {"name", o.name},
      {"out-dir", o.out_dir},
      {"out-file", o.out_file},
      {"checkpoint-dir", o.checkpoint_dir},
      {"save-training-state", o.save_training_state},
      {"ckpt-interval", o.ckpt_interval},
      {"ckpt-keep-n", o.ckpt_keep_n},
      {"ckpt-major", o.ckpt_major},
      {"continue", opt_string(o.continue_from)},
      {"new-data", o.new_data},
      {"log-file", o.log_file},
      {"log-gpu-util", o.log_gpu_util},
      {"debug-log-allocations", o.debug_log_allocations},
      {"debug-time-breakdown", o.debug_time_breakdown},
      {"debug-log-abs-max", o.debug_log_abs_max},
      {"gpus", o.gpus},
      {"zero-level", o.zero_level},
      {"shard-weights", o.shard_weights},
      {"shard-gradients", o.shard_gradients},
      {"memcpy-all-gather", o.memcpy_all_gather},
      {"memcpy-send-recv", o.memcpy_send_recv},
      {"all-to-all-reduce", o.all_to_all_reduce},
      {"recompute-swiglu", o.recompute_swiglu},
      {"recompute-norm", o.recompute_norm},
      {"recompute-ffn", o.recompute_ffn},
      {"recompute-qkv", o.recompute_qkv},
      {"recompute-att", o.recompute_att},
      {"recompute-block", o.recompute_block},
      {"offload-residual", o.offload_residual},
      {"offload-master", o.offload_master},
      {"offload-quants", o.offload_quants},
      {"offload-opt-m", o.offload_opt_m},
      {"offload-opt-v", o.offload_opt_v},
      {"offload-gradients", o.offload_gradients},
      {"persistent-quants", o.persistent_quants},
      {"use-zero-copy", o.use_zero_copy},
      {"write-combined", o.write_combined},
      {"use-cuda-graphs", o.use_cuda_graphs},
      {"custom-matmul", o.custom_matmul},
      {"autotune-matmuls", o.autotune_matmuls},
      {"memory-limit", opt_bytes(o.memory_limit)},
      {"auto-fit", o.auto_fit},
  };
}

nlohmann::json options_to_json(const TrainOptions& opts) {
  nlohmann::json j = nlohmann::json::object();
  for (auto& [name, value] : option_entries(opts)) j[name] = value;
  return j;
}

std::string describe_options(const TrainOptions& opts) {
  const auto entries = option_entries(opts);
  std::size_t width = 0;
  for (const auto& e : entries) width = std::max(width, e.first.size());
  std::string out = "[Options]\n";
  for (const auto& [name, value] : entries) {
    std::string text;
    if (value.is_string()) text = value.get<std::string>();
    else if (value.is_null()) text = "-";
    else if (name == "memory-limit") text = format_bytes(value.get<std::size_t>());
    else text = value.dump();
    out += fmt::format("  {:<{}} : {}\n", name, width, text);
  }
  return out;
}

}  // namespace llmq
