// The `train` command line: every setting of a training run in one struct, parsed with CLI11.
// Flag names and defaults stay compatible with the seed tool LLM.Q so that its command lines keep
// working; flags we added are marked "ours" below. parse_options() also applies the implications
// between flags (e.g. --recompute-block => att+ffn+norm) and validates values; check_implemented()
// refuses flags whose feature this build does not have yet (one table in options.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/errors.h"
#include "training/lr_schedule.h"

namespace llmq {

struct TrainOptions {
  // Model
  std::string model = ".";          // HF model folder (config.json + model.safetensors) or preset name
  bool from_scratch = false;        // random initialisation instead of loading weights
  bool init_proj_to_zero = false;   // zero-init attention-out and MLP-down projections (needs from_scratch)
  std::uint64_t seed = 42;          // ours: weight-initialisation seed
  DType model_dtype = DType::BF16;  // weights / activations / gradients used by forward and backward
  DType matmul_dtype = DType::BF16;    // resolved: defaults to model_dtype
  DType gradient_dtype = DType::BF16;  // resolved: defaults to matmul_dtype (bf16 when matmuls are e4m3)

  // Batch shape
  int batch_size = 4;      // B, sequences per micro-batch
  int seq_len = 1024;      // T
  int grad_accumulation = 4;
  int lmhead_chunks = 1;
  int attn_bwd_chunks = 1;

  // Optimizer and LR schedule
  double learning_rate = 1e-5;
  int warmup = 0;
  int cooldown = 0;
  double final_lr_fraction = 1.0;
  LrScheduleType lr_schedule = LrScheduleType::Cosine;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_epsilon = 1e-8;
  double grad_clip = 1.0;      // 0: no clipping
  double weight_decay = 0.1;
  double z_loss = 0.0;
  DType opt_m_dtype = DType::FP32;
  DType opt_v_dtype = DType::FP32;

  // Run length
  int steps = -1;  // -1: run `epochs` passes over the training data
  int epochs = 1;

  // Data
  std::string train_file = "data/tiny-shakespeare-qwen/train.bin";
  std::uint64_t train_seed = 0x83b45442ull;
  std::string eval_file = "data/tiny-shakespeare-qwen/eval.bin";
  std::uint64_t eval_seed = 0x384b4524ull;
  int eval_every_n_steps = 100;  // 0: no periodic evaluation
  int eval_num_steps = 100;      // eval batches per evaluation

  // Outputs (with %n already replaced by `name`)
  std::string name = "llmq";
  std::string out_dir = "output/llmq";
  std::string out_file = "output/llmq/model.safetensors";  // final model; --out-file sets it (and out_dir)
  std::string checkpoint_dir = "ckpt/llmq";
  bool save_training_state = true;  // the seed always wrote the final checkpoint; --no-save-training-state skips it
  int ckpt_interval = 100;          // 0: no periodic checkpoints
  int ckpt_keep_n = -1;             // -1: keep all
  int ckpt_major = -1;              // every n-th checkpoint survives ckpt_keep_n clean-up; -1: none
  std::optional<std::string> continue_from;  // set by --continue; "" = latest checkpoint of this run
  bool new_data = false;            // with --continue: do not restore the data-loader position
  std::string log_file;             // JSON-lines log
  int log_gpu_util = 25;            // log GPU utilisation every n steps; 0: never

  // Debugging
  int debug_log_allocations = -1;   // log allocations of at least this many MiB; -1: off
  bool debug_time_breakdown = false;
  int debug_log_abs_max = 0;        // log activation abs-maxes every n steps; 0: off

  // Multi-GPU
  int gpus = 0;  // 0: all visible
  int zero_level = 1;
  bool shard_weights = false;
  bool shard_gradients = false;
  bool memcpy_all_gather = false;
  bool memcpy_send_recv = false;
  bool all_to_all_reduce = false;

  // Activation recomputation (implications already applied)
  bool recompute_swiglu = false;
  bool recompute_norm = false;
  bool recompute_ffn = false;
  bool recompute_qkv = false;
  bool recompute_att = false;
  bool recompute_block = false;

  // Offloading to pinned host memory
  bool offload_residual = false;
  bool offload_master = false;
  bool offload_quants = false;
  bool offload_opt_m = false;
  bool offload_opt_v = false;
  bool offload_gradients = false;
  bool persistent_quants = false;
  bool use_zero_copy = false;
  bool write_combined = false;

  // Execution
  // Ours: on (the seed's default is off). Runs that offload per layer stay eager: unless asked for
  // explicitly (then refused), graphs are switched off for them.
  bool use_cuda_graphs = true;
  bool custom_matmul = false;
  bool autotune_matmuls = true;  // ours: time cuBLASLt's top algorithms per GEMM on first use
  std::optional<std::size_t> memory_limit;  // ours: device-memory budget in bytes
  bool auto_fit = false;                    // ours: pick batch/recompute to fit memory_limit

  // Offloading whose copies run per layer inside a micro-step (on streams a CUDA graph cannot replay).
  bool offloads_per_layer() const { return offload_master || offload_gradients || offload_residual || offload_quants; }
};

// Thrown by parse_options when the program should stop right away: --help (exit_code 0, `text` is the
// help for stdout) or a command-line error CLI11 detected (exit_code != 0, `text` is one line for stderr).
class ParseExit : public Error {
 public:
  ParseExit(int exit_code, std::string text) : Error(text), exit_code_(exit_code), text_(std::move(text)) {}
  int exit_code() const { return exit_code_; }
  const std::string& text() const { return text_; }

 private:
  int exit_code_;
  std::string text_;
};

// Parses argv (argv[0] is the program name). Throws ParseExit for --help and syntax errors, and
// llmq::Error (one line naming the flag and the fix) for values that are parsed but not valid.
TrainOptions parse_options(int argc, const char* const* argv);

// The full --help text (the same text ParseExit carries for --help).
std::string options_help();

// Throws llmq::Error when a flag in use needs a feature this build does not have yet.
void check_implemented(const TrainOptions& opts);

// One row of the feature table in options.cpp: `flag` plus an optional `condition` on its value
// ("e4m3", "> 1"); `implemented` says whether this build supports it.
struct FeatureStatus {
  std::string flag;
  std::string condition;
  bool implemented;
};
std::vector<FeatureStatus> feature_table();

// Throws llmq::Error when --train-file (or --eval-file, if evaluation is enabled) does not exist.
void check_input_files(const TrainOptions& opts);

// Every setting as {name, value}, in a stable order; `options_to_json` and `describe_options` use it.
std::vector<std::pair<std::string, nlohmann::json>> option_entries(const TrainOptions& opts);
nlohmann::json options_to_json(const TrainOptions& opts);
// The `[Options]` block: a header line, then "  name : value" per setting with aligned colons.
std::string describe_options(const TrainOptions& opts);

// Replaces every "%n" in `pattern` by `name`.
std::string replace_run_name(const std::string& pattern, const std::string& name);

}  // namespace llmq
