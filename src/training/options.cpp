// The `train` command line: flag definitions (CLI11), implications, validation and the table of
// features this build implements (the summary of the parsed options is in options_summary.cpp).
#include "training/options.h"

#include <CLI/CLI.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>

#include "core/allocator.h"

namespace llmq {

namespace {

// ---------------------------------------------------------------------------------------------
// Features not every build has. A flag in use whose row says `false` is refused at start-up by
// check_implemented(); flip a row to `true` when the feature lands. Rows are checked in order and
// the first hit is reported, so umbrella flags come before the flags they imply.
// ---------------------------------------------------------------------------------------------
struct FeatureGate {
  const char* flag;
  const char* condition;  // "" when any use of the flag counts, else the value that does ("e4m3")
  bool implemented;
  int issue;  // tracking issue number, 0 when there is none yet
  bool (*used)(const TrainOptions&);
};

constexpr FeatureGate kFeatureGates[] = {
    // multi-GPU
    {"--gpus", "> 1", false, 0, [](const TrainOptions& o) { return o.gpus > 1; }},
    {"--zero-level", "2 or 3", false, 0, [](const TrainOptions& o) { return o.zero_level > 1; }},
    {"--shard-weights", "", false, 0, [](const TrainOptions& o) { return o.shard_weights; }},
    {"--shard-gradients", "", false, 0, [](const TrainOptions& o) { return o.shard_gradients; }},
    {"--memcpy-all-gather", "", false, 0, [](const TrainOptions& o) { return o.memcpy_all_gather; }},
    {"--memcpy-send-recv", "", false, 0, [](const TrainOptions& o) { return o.memcpy_send_recv; }},
    {"--all-to-all-reduce", "", false, 0, [](const TrainOptions& o) { return o.all_to_all_reduce; }},
    // offloading
    {"--offload-master", "", true, 5, [](const TrainOptions& o) { return o.offload_master; }},
    {"--offload-gradients", "", true, 5, [](const TrainOptions& o) { return o.offload_gradients; }},
    {"--offload-residual", "", true, 5, [](const TrainOptions& o) { return o.offload_residual; }},
    {"--offload-quants", "", true, 5, [](const TrainOptions& o) { return o.offload_quants; }},
    {"--persistent-quants", "", true, 5, [](const TrainOptions& o) { return o.persistent_quants; }},
    // numerics
    {"--matmul-dtype", "e4m3", true, 0, [](const TrainOptions& o) { return o.matmul_dtype == DType::E4M3; }},
    {"--gradient-dtype", "e5m2", true, 0, [](const TrainOptions& o) { return o.gradient_dtype == DType::E5M2; }},
    {"--z-loss", "!= 0", true, 0, [](const TrainOptions& o) { return o.z_loss != 0; }},
    {"--init-proj-to-zero", "", true, 0, [](const TrainOptions& o) { return o.init_proj_to_zero; }},
    {"--custom-matmul", "", false, 0, [](const TrainOptions& o) { return o.custom_matmul; }},
    {"--attn-bwd-chunks", "> 1", false, 0, [](const TrainOptions& o) { return o.attn_bwd_chunks > 1; }},
    // memory planning and debugging
    {"--auto-fit", "", true, 5, [](const TrainOptions& o) { return o.auto_fit; }},
    {"--debug-log-allocations", "", false, 0, [](const TrainOptions& o) { return o.debug_log_allocations >= 0; }},
    {"--debug-time-breakdown", "", false, 0, [](const TrainOptions& o) { return o.debug_time_breakdown; }},
    {"--debug-log-abs-max", "", false, 0, [](const TrainOptions& o) { return o.debug_log_abs_max > 0; }},
    // implemented: single-GPU fp32/bf16 training
    {"--matmul-dtype", "bf16 or fp32", true, 0, [](const TrainOptions& o) { return o.matmul_dtype != DType::E4M3; }},
    {"--lmhead-chunks", "> 1", true, 0, [](const TrainOptions& o) { return o.lmhead_chunks > 1; }},
    {"--opt-m-dtype", "bf16", true, 0, [](const TrainOptions& o) { return o.opt_m_dtype == DType::BF16; }},
    {"--opt-v-dtype", "bf16", true, 0, [](const TrainOptions& o) { return o.opt_v_dtype == DType::BF16; }},
    {"--use-cuda-graphs", "", true, 0, [](const TrainOptions& o) { return o.use_cuda_graphs; }},
    {"--memory-limit", "", true, 0, [](const TrainOptions& o) { return o.memory_limit.has_value(); }},
    {"--continue", "", true, 0, [](const TrainOptions& o) { return o.continue_from.has_value(); }},
    {"--from-scratch", "", true, 0, [](const TrainOptions& o) { return o.from_scratch; }},
};

std::string gate_usage(const FeatureGate& g) {
  return *g.condition ? fmt::format("{} {}", g.flag, g.condition) : std::string(g.flag);
}

// Values that arrive as text and are resolved after parsing.
struct RawOptions {
  std::string model_dtype = "bf16";
  std::string matmul_dtype;    // "" = model dtype
  std::string gradient_dtype;  // "" = matmul dtype
  std::string opt_m_dtype = "fp32";
  std::string opt_v_dtype = "fp32";
  std::string lr_schedule = "cosine";
  std::string memory_limit;
  std::string out_dir = "output/%n";
  std::string out_file;
  std::string checkpoint_dir = "ckpt/%n";
  std::string log_file;
  std::string continue_from;
};

constexpr const char* kLogFileDefault = "logs/%n-<YYYY-MM-DDTHH_MM>.json";

// Flags show their default as "[off]" / "[on]" in --help (CLI11 prints "=value" only for options).
CLI::Option* flag(CLI::App& app, const std::string& names, bool& target, const std::string& help) {
  return app.add_flag(names, target, help)->option_text(target ? "[on]" : "[off]");
}

void add_model_options(CLI::App& app, TrainOptions& o, RawOptions& r) {
  app.add_option("--model", o.model,
                 "HF model folder (config.json + model.safetensors); with --from-scratch also a preset name")
      ->group("Model");
  auto* scratch = flag(app, "--from-scratch", o.from_scratch, "Start from random weights instead of loading them")
                      ->group("Model");
  flag(app, "--init-proj-to-zero", o.init_proj_to_zero, "Initialise attention-out and MLP-down projections to zero")
      ->needs(scratch)
      ->group("Model");
  app.add_option("--seed", o.seed, "Seed of the random weight initialisation (--from-scratch)")->group("Model");
  app.add_option("--model-dtype", r.model_dtype, "Weight/activation dtype: fp32 or bf16")->group("Model");
  app.add_option("--matmul-dtype", r.matmul_dtype, "Matmul dtype: fp32, bf16 or e4m3")
      ->default_str("model dtype")
      ->group("Model");
  app.add_option("--gradient-dtype", r.gradient_dtype,
                 "Activation-gradient dtype: fp32, bf16, or e5m2 with e4m3 matmuls")
      ->default_str("matmul dtype")
      ->group("Model");
}

void add_batch_options(CLI::App& app, TrainOptions& o) {
  app.add_option("--batch,--batch-size", o.batch_size, "Sequences per micro-batch (B)")->group("Batch");
  app.add_option("--seq-len,--seq-length", o.seq_len, "Tokens per sequence (T)")->group("Batch");
  app.add_option("--grad-accumulation", o.grad_accumulation, "Micro-batches per optimizer step")->group("Batch");
  app.add_option("--lmhead-chunks", o.lmhead_chunks, "Run the LM head + loss in this many chunks to save memory")
      ->group("Batch");
  app.add_option("--attn-bwd-chunks", o.attn_bwd_chunks, "Run the attention backward pass in this many chunks")
      ->group("Batch");
}

void add_optimizer_options(CLI::App& app, TrainOptions& o, RawOptions& r) {
  const char* g = "Optimizer";
  app.add_option("--lr,--learning-rate", o.learning_rate, "Base learning rate")->group(g);
  app.add_option("--warmup", o.warmup, "Linear warmup steps")->group(g);
  app.add_option("--cooldown", o.cooldown, "Final steps over which the LR is annealed to zero (1 - sqrt)")->group(g);
  app.add_option("--final-lr-fraction", o.final_lr_fraction, "LR at the end of the decay, as a fraction of --lr")
      ->group(g);
  app.add_option("--lr-schedule", r.lr_schedule, "LR decay: cosine, linear or wsd (constant until --cooldown)")
      ->group(g);
  app.add_option("--beta-1", o.beta1, "AdamW beta 1")->group(g);
  app.add_option("--beta-2", o.beta2, "AdamW beta 2")->group(g);
  app.add_option("--adam-epsilon", o.adam_epsilon, "AdamW epsilon")->group(g);
  app.add_option("--grad-clip", o.grad_clip, "Clip the global gradient norm to this value (0: no clipping)")
      ->group(g);
  app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay of matrix parameters")->group(g);
  app.add_option("--z-loss", o.z_loss, "Z-loss regularisation strength")->group(g);
  app.add_option("--opt-m-dtype", r.opt_m_dtype, "Dtype of Adam's first moment: fp32 or bf16")->group(g);
  app.add_option("--opt-v-dtype", r.opt_v_dtype, "Dtype of Adam's second moment: fp32 or bf16")->group(g);
}

void add_run_options(CLI::App& app, TrainOptions& o, RawOptions& r) {
  const char* g = "Run";
  app.add_option("--name", o.name, "Run name; %n in --out-dir, --checkpoint-dir and --log-file is replaced by it")
      ->group(g);
  auto* steps = app.add_option("--steps", o.steps, "Optimizer steps to run (-1: run --epochs)")->group(g);
  app.add_option("--epochs", o.epochs, "Passes over the training data (when --steps is not given)")
      ->excludes(steps)
      ->group(g);
  app.add_option("--train-file", o.train_file, "Training tokens (.bin; make one with scripts/tokenize_data.py)")
      ->group(g);
  app.add_option("--train-seed", o.train_seed, "Seed of the training data order")->default_str("0x83b45442")->group(g);
  app.add_option("--eval-file", o.eval_file, "Validation tokens (.bin)")->group(g);
  app.add_option("--eval-seed", o.eval_seed, "Seed of the validation data order")->default_str("0x384b4524")->group(g);
  app.add_option("--eval-every-n-steps", o.eval_every_n_steps, "Optimizer steps between evaluations (0: none)")
      ->group(g);
  app.add_option("--eval-num-steps", o.eval_num_steps, "Validation batches per evaluation")->group(g);
  app.add_option("--log-file", r.log_file, "JSON-lines training log")->default_str(kLogFileDefault)->group(g);
  app.add_option("--log-gpu-util", o.log_gpu_util, "Log GPU utilisation every n steps (0: never)")->group(g);
}

void add_output_options(CLI::App& app, TrainOptions& o, RawOptions& r) {
  const char* g = "Output and checkpoints";
  auto* out_dir = app.add_option("--out-dir", r.out_dir, "Folder of the final model.safetensors + config.json")
                      ->group(g);
  app.add_option("--out-file", r.out_file, "Path of the final model.safetensors (older spelling; sets --out-dir)")
      ->default_str("<out-dir>/model.safetensors")
      ->excludes(out_dir)
      ->group(g);
  app.add_option("--checkpoint-dir", r.checkpoint_dir, "Folder of the checkpoints")->group(g);
  flag(app, "--save-training-state,!--no-save-training-state", o.save_training_state,
       "Write a full checkpoint (optimizer state included) at the end of the run")
      ->group(g);
  app.add_option("--ckpt-interval", o.ckpt_interval, "Optimizer steps between checkpoints (0: none)")->group(g);
  app.add_option("--ckpt-keep-n", o.ckpt_keep_n, "Keep only the newest n checkpoints (-1: keep all)")->group(g);
  app.add_option("--ckpt-major", o.ckpt_major, "Every n-th checkpoint is never cleaned up (-1: none)")->group(g);
  auto* cont = app.add_option("--continue", r.continue_from,
                              "Resume from a checkpoint: a step_N folder, a checkpoint folder, a step number, "
                              "or nothing for the newest checkpoint of this run")
                   ->expected(0, 1)
                   ->default_str("")
                   ->option_text("[PATH]")
                   ->group(g);
  flag(app, "--new-data", o.new_data, "With --continue: the data changed, start the data loader afresh")
      ->needs(cont)
      ->group(g);
}

void add_debug_options(CLI::App& app, TrainOptions& o) {
  const char* g = "Debugging";
  app.add_option("--debug-log-allocations", o.debug_log_allocations, "Log allocations of at least n MiB (-1: off)")
      ->group(g);
  flag(app, "--debug-time-breakdown", o.debug_time_breakdown, "Log a per-phase timing breakdown")->group(g);
  app.add_flag("--debug-log-abs-max", o.debug_log_abs_max,
               "Log activation abs-maxes every step (--debug-log-abs-max=N: every N steps)")
      ->option_text("[off]")
      ->group(g);
}

void add_parallel_options(CLI::App& app, TrainOptions& o) {
  const char* g = "Multi-GPU";
  app.add_option("--gpus", o.gpus, "GPUs to train on (0: all visible)")->group(g);
  auto* zero = app.add_option("--zero-level", o.zero_level,
                              "ZeRO level: 1 shards optimizer state, 2 also gradients, 3 also weights")
                   ->group(g);
  flag(app, "--shard-weights", o.shard_weights, "Shard weights across GPUs")->excludes(zero)->group(g);
  flag(app, "--shard-gradients", o.shard_gradients, "Shard gradients across GPUs")->excludes(zero)->group(g);
  flag(app, "--memcpy-all-gather", o.memcpy_all_gather, "All-gather with copy engines (one process, threads)")
      ->group(g);
  flag(app, "--memcpy-send-recv", o.memcpy_send_recv, "Send/receive with copy engines (one process, threads)")
      ->group(g);
  flag(app, "--all-to-all-reduce", o.all_to_all_reduce, "All-to-all based gradient reduction")->group(g);
}

void add_memory_options(CLI::App& app, TrainOptions& o, RawOptions& r) {
  const char* g = "Memory";
  flag(app, "--recompute-swiglu", o.recompute_swiglu, "Recompute SwiGLU in the backward pass")->group(g);
  flag(app, "--recompute-norm", o.recompute_norm, "Recompute RMSNorms in the backward pass")->group(g);
  flag(app, "--recompute-ffn", o.recompute_ffn, "Recompute the MLP block (implies --recompute-swiglu)")->group(g);
  flag(app, "--recompute-qkv", o.recompute_qkv, "Recompute the QKV projection")->group(g);
  flag(app, "--recompute-att", o.recompute_att, "Recompute the attention block (implies --recompute-qkv)")->group(g);
  flag(app, "--recompute-block", o.recompute_block, "Recompute the whole block (implies att, ffn and norm)")
      ->group(g);
  flag(app, "--offload-residual", o.offload_residual, "Keep the residual stream in pinned host memory")->group(g);
  flag(app, "--persistent-quants", o.persistent_quants,
       "Keep the FP8 weight copies for the whole optimizer step (always so on one GPU)")
      ->group(g);
  flag(app, "--offload-quants", o.offload_quants,
       "Keep the FP8 weight copies in pinned host memory (implies --persistent-quants)")
      ->group(g);
  flag(app, "--offload-master", o.offload_master,
       "Keep the block weight matrices in pinned host memory (streamed per layer)")->group(g);
  flag(app, "--offload-opt-m", o.offload_opt_m, "Keep Adam's first moment in pinned host memory")->group(g);
  flag(app, "--offload-opt-v", o.offload_opt_v, "Keep Adam's second moment in pinned host memory")->group(g);
  flag(app, "--offload-gradients", o.offload_gradients,
       "Keep the block weight gradients in pinned host memory (streamed per layer)")->group(g);
  flag(app, "--use-zero-copy", o.use_zero_copy, "The optimizer reads offloaded state in place instead of copying")
      ->group(g);
  flag(app, "--write-combined,--use-write-combined", o.write_combined,
       "Use write-combined memory for offloaded tensors")
      ->group(g);
  auto* limit = app.add_option("--memory-limit", r.memory_limit,
                               "Device-memory budget, e.g. 16GiB, 24GB, 512MiB (default: the whole GPU)")
                    ->option_text("SIZE=none")
                    ->group(g);
  flag(app, "--auto-fit", o.auto_fit, "Choose the fastest recompute/offload flags (and micro-batch) that fit --memory-limit")
      ->needs(limit)
      ->group(g);
}

void add_execution_options(CLI::App& app, TrainOptions& o) {
  const char* g = "Execution";
  flag(app, "--use-cuda-graphs,!--no-use-cuda-graphs", o.use_cuda_graphs,
       "Replay each micro-step's kernels as a CUDA graph")
      ->group(g);
  flag(app, "--custom-matmul", o.custom_matmul, "Use llmq's own matmul kernel instead of cuBLASLt")->group(g);
  flag(app, "--autotune-matmuls,!--no-autotune-matmuls", o.autotune_matmuls,
       "Time cuBLASLt's top algorithms per matmul shape at the first step (off: fresh runs repeat bit for bit)")
      ->group(g);
}

// Appends "(not implemented yet)" to the help of flags whose feature this build lacks.
void mark_unimplemented(CLI::App& app) {
  for (const auto& g : kFeatureGates) {
    if (g.implemented) continue;
    CLI::Option* opt = app.get_option_no_throw(g.flag);
    if (opt == nullptr) continue;
    const std::string note = *g.condition ? fmt::format(" ({} not implemented yet)", g.condition)
                                          : std::string(" (not implemented yet)");
    opt->description(opt->get_description() + note);
  }
}

void build_app(CLI::App& app, TrainOptions& o, RawOptions& r) {
  app.name("train");
  app.description("llmq: train or fine-tune a Qwen2.5 model on one or more GPUs.");
  app.footer("Flags keep the spelling and defaults of LLM.Q, except that CUDA graphs are on by default (off for\n"
             "runs that offload per layer); any flag may also be written --flag=value.");
  app.option_defaults()->always_capture_default()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.get_formatter()->column_width(44);
  add_model_options(app, o, r);
  add_batch_options(app, o);
  add_optimizer_options(app, o, r);
  add_run_options(app, o, r);
  add_output_options(app, o, r);
  add_memory_options(app, o, r);
  add_parallel_options(app, o);
  add_execution_options(app, o);
  add_debug_options(app, o);
  mark_unimplemented(app);
}

std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

DType parse_dtype_flag(const std::string& flag, const std::string& text, std::initializer_list<DType> allowed) {
  std::string names;
  for (DType t : allowed) names += fmt::format("{}{}", names.empty() ? "" : ", ", dtype_name(t));
  auto t = parse_dtype(text);
  LLMQ_REQUIRE(t.has_value() && std::find(allowed.begin(), allowed.end(), *t) != allowed.end(),
               "{} {} is not supported: use one of {}", flag, text, names);
  return *t;
}

// Resolves text-valued options, defaults that depend on other options, and the seed tool's implications.
void resolve(TrainOptions& o, const RawOptions& r, bool out_file_given, bool continue_given) {
  o.model_dtype = parse_dtype_flag("--model-dtype", r.model_dtype, {DType::FP32, DType::BF16});
  o.matmul_dtype = r.matmul_dtype.empty()
                       ? o.model_dtype
                       : parse_dtype_flag("--matmul-dtype", r.matmul_dtype, {DType::FP32, DType::BF16, DType::E4M3});
  // An fp8 gradient type is a separate decision (DESIGN: e5m2 or bf16), so e4m3 matmuls keep bf16 gradients.
  const DType gradient_default = o.matmul_dtype == DType::E4M3 ? DType::BF16 : o.matmul_dtype;
  o.gradient_dtype = r.gradient_dtype.empty() ? gradient_default
                                              : parse_dtype_flag("--gradient-dtype", r.gradient_dtype,
                                                                 {DType::FP32, DType::BF16, DType::E5M2});
  o.opt_m_dtype = parse_dtype_flag("--opt-m-dtype", r.opt_m_dtype, {DType::FP32, DType::BF16});
  o.opt_v_dtype = parse_dtype_flag("--opt-v-dtype", r.opt_v_dtype, {DType::FP32, DType::BF16});

  auto schedule = parse_lr_schedule_type(r.lr_schedule);
  LLMQ_REQUIRE(schedule.has_value(), "--lr-schedule {} is not known: use cosine, linear or wsd", r.lr_schedule);
  o.lr_schedule = *schedule;

  if (!r.memory_limit.empty()) {
    try {
      o.memory_limit = parse_byte_size(r.memory_limit);
    } catch (const Error& e) {
      throw Error(fmt::format("--memory-limit: {}", e.what()));
    }
  }

  if (o.zero_level >= 2) o.shard_gradients = true;
  if (o.zero_level >= 3) o.shard_weights = true;
  if (o.offload_quants) o.persistent_quants = true;
  if (o.recompute_block) o.recompute_att = o.recompute_ffn = o.recompute_norm = true;
  if (o.recompute_att) o.recompute_qkv = true;
  if (o.recompute_ffn) o.recompute_swiglu = true;

  o.checkpoint_dir = replace_run_name(r.checkpoint_dir, o.name);
  if (out_file_given) {
    o.out_file = replace_run_name(r.out_file, o.name);
    auto parent = std::filesystem::path(o.out_file).parent_path();
    o.out_dir = parent.empty() ? "." : parent.string();
  } else {
    o.out_dir = replace_run_name(r.out_dir, o.name);
    o.out_file = (std::filesystem::path(o.out_dir) / "model.safetensors").string();
  }
  const std::string log_pattern =
      r.log_file.empty() ? fmt::format("logs/%n-{:%Y-%m-%dT%H_%M}.json", fmt::localtime(std::time(nullptr)))
                         : r.log_file;
  o.log_file = replace_run_name(log_pattern, o.name);
  if (continue_given) o.continue_from = r.continue_from;
}

void require_at_least(const char* flag, long value, long min, const char* meaning = "") {
  LLMQ_REQUIRE(value >= min, "{} {} is out of range: use a value >= {}{}", flag, value, min, meaning);
}

void validate(const TrainOptions& o) {
  LLMQ_REQUIRE(!(o.model_dtype == DType::BF16 && o.matmul_dtype == DType::FP32),
               "--matmul-dtype fp32 is wider than --model-dtype bf16: use --matmul-dtype bf16 or --model-dtype fp32");
  LLMQ_REQUIRE(o.matmul_dtype != DType::E4M3 || o.model_dtype == DType::BF16,
               "--matmul-dtype e4m3 needs --model-dtype bf16 (FP8 GEMMs read bf16 weights and activations)");
  LLMQ_REQUIRE(o.gradient_dtype != DType::E5M2 || o.matmul_dtype == DType::E4M3,
               "--gradient-dtype e5m2 needs fp8 matmuls: add --matmul-dtype e4m3 or use --gradient-dtype bf16");
  require_at_least("--batch", o.batch_size, 1);
  require_at_least("--seq-len", o.seq_len, 2);
  require_at_least("--grad-accumulation", o.grad_accumulation, 1);
  require_at_least("--lmhead-chunks", o.lmhead_chunks, 1);
  require_at_least("--attn-bwd-chunks", o.attn_bwd_chunks, 1);
  require_at_least("--warmup", o.warmup, 0);
  require_at_least("--cooldown", o.cooldown, 0);
  require_at_least("--epochs", o.epochs, 1);
  require_at_least("--gpus", o.gpus, 0, " (0 uses every visible GPU)");
  require_at_least("--eval-every-n-steps", o.eval_every_n_steps, 0, " (0 turns evaluation off)");
  require_at_least("--eval-num-steps", o.eval_num_steps, 1);
  require_at_least("--ckpt-interval", o.ckpt_interval, 0, " (0 turns checkpoints off)");
  require_at_least("--log-gpu-util", o.log_gpu_util, 0, " (0 turns it off)");
  require_at_least("--debug-log-allocations", o.debug_log_allocations, -1, " (-1 turns it off)");
  require_at_least("--debug-log-abs-max", o.debug_log_abs_max, 0);
  LLMQ_REQUIRE(o.steps == -1 || o.steps >= 1,
               "--steps {} is out of range: use a positive number of steps, or -1 to train for --epochs", o.steps);
  LLMQ_REQUIRE(o.ckpt_keep_n == -1 || o.ckpt_keep_n >= 1,
               "--ckpt-keep-n {} is out of range: use -1 (keep all) or n >= 1", o.ckpt_keep_n);
  LLMQ_REQUIRE(o.ckpt_major == -1 || o.ckpt_major >= 1, "--ckpt-major {} is out of range: use -1 (none) or n >= 1",
               o.ckpt_major);
  LLMQ_REQUIRE(o.zero_level >= 1 && o.zero_level <= 3,
               "--zero-level {} is not supported: use 1 (optimizer state), 2 (+ gradients) or 3 (+ weights)",
               o.zero_level);
  LLMQ_REQUIRE(std::isfinite(o.learning_rate) && o.learning_rate >= 0, "--lr {} is out of range: use a value >= 0",
               o.learning_rate);
  LLMQ_REQUIRE(o.final_lr_fraction >= 0 && o.final_lr_fraction <= 1,
               "--final-lr-fraction {} is out of range: use a value in [0, 1]", o.final_lr_fraction);
  LLMQ_REQUIRE(o.beta1 >= 0 && o.beta1 < 1, "--beta-1 {} is out of range: use a value in [0, 1)", o.beta1);
  LLMQ_REQUIRE(o.beta2 >= 0 && o.beta2 < 1, "--beta-2 {} is out of range: use a value in [0, 1)", o.beta2);
  LLMQ_REQUIRE(o.adam_epsilon >= 0, "--adam-epsilon {} is out of range: use a value >= 0", o.adam_epsilon);
  LLMQ_REQUIRE(o.grad_clip >= 0, "--grad-clip {} is out of range: use a value >= 0 (0: no clipping)", o.grad_clip);
  LLMQ_REQUIRE(o.weight_decay >= 0, "--weight-decay {} is out of range: use a value >= 0", o.weight_decay);
  LLMQ_REQUIRE(o.z_loss >= 0, "--z-loss {} is out of range: use a value >= 0", o.z_loss);
  LLMQ_REQUIRE(o.steps == -1 || static_cast<long>(o.warmup) + o.cooldown <= o.steps,
               "--warmup {} + --cooldown {} exceed --steps {}: shorten them or raise --steps", o.warmup, o.cooldown,
               o.steps);
  LLMQ_REQUIRE(!(o.use_cuda_graphs && o.offloads_per_layer()),
               "--use-cuda-graphs cannot be combined with --offload-master, --offload-gradients, --offload-residual "
               "or --offload-quants (their per-layer copies run on streams outside the graph): leave out "
               "--use-cuda-graphs");
  LLMQ_REQUIRE(!o.offload_quants || o.matmul_dtype == DType::E4M3,
               "--offload-quants needs --matmul-dtype=e4m3: without FP8 matmuls there are no quantized weight "
               "copies to offload (leave it out)");
  LLMQ_REQUIRE(!o.name.empty(), "--name must not be empty");
  LLMQ_REQUIRE(!o.train_file.empty(), "--train-file must not be empty: pass --train-file=PATH");
  // `--eval-file= --steps=20` makes CLI11 take "--steps=20" as the file name: refuse such values.
  for (auto [flag, value] : {std::pair<const char*, const std::string*>{"--model", &o.model}, {"--train-file", &o.train_file},
                             {"--eval-file", &o.eval_file}, {"--out-dir", &o.out_dir}, {"--checkpoint-dir", &o.checkpoint_dir},
                             {"--log-file", &o.log_file}})
    LLMQ_REQUIRE(value->rfind("--", 0) != 0,
                 "{} got '{}' as its value: a flag needs a value after '=' (to skip evaluation use "
                 "--eval-every-n-steps=0)", flag, *value);
}

}  // namespace

std::string replace_run_name(const std::string& pattern, const std::string& name) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern.compare(i, 2, "%n") == 0) {
      out += name;
      ++i;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

std::string options_help() {
  CLI::App app;
  TrainOptions o;
  RawOptions r;
  build_app(app, o, r);
  return app.help();
}

TrainOptions parse_options(int argc, const char* const* argv) {
  TrainOptions o;
  RawOptions r;
  CLI::App app;
  build_app(app, o, r);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    throw ParseExit(0, app.help());
  } catch (const CLI::CallForAllHelp&) {
    throw ParseExit(0, app.help("", CLI::AppFormatMode::All));
  } catch (const CLI::ParseError& e) {
    throw ParseExit(e.get_exit_code() != 0 ? e.get_exit_code() : 1,
                    one_line(fmt::format("{} (run with --help to list the flags)", e.what())));
  }
  resolve(o, r, app.count("--out-file") > 0, app.count("--continue") > 0);
  // On by default, but not for offloading runs; an explicit --use-cuda-graphs with them is refused.
  if (app.count("--use-cuda-graphs") == 0 && o.offloads_per_layer()) o.use_cuda_graphs = false;
  validate(o);
  return o;
}

void check_implemented(const TrainOptions& opts) {
  for (const auto& g : kFeatureGates) {
    if (g.implemented || !g.used(opts)) continue;
    const std::string tracked = g.issue > 0 ? fmt::format(" (tracked in issue #{})", g.issue) : "";
    throw Error(fmt::format("{} is not implemented yet in this build{}: leave it out to train without it",
                            gate_usage(g), tracked));
  }
}

std::vector<FeatureStatus> feature_table() {
  std::vector<FeatureStatus> rows;
  for (const auto& g : kFeatureGates) rows.push_back({g.flag, g.condition, g.implemented});
  return rows;
}

void check_input_files(const TrainOptions& opts) {
  namespace fs = std::filesystem;
  LLMQ_REQUIRE(fs::is_regular_file(opts.train_file),
               "token file {} not found: pass --train-file=PATH (make one with scripts/tokenize_data.py)",
               opts.train_file);
  if (opts.eval_every_n_steps > 0) {
    LLMQ_REQUIRE(fs::is_regular_file(opts.eval_file),
                 "token file {} not found: pass --eval-file=PATH, or --eval-every-n-steps=0 to train without "
                 "evaluation (make one with scripts/tokenize_data.py)",
                 opts.eval_file);
  }
}

}  // namespace llmq
