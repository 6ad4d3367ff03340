// The `train` command line: defaults (the seed tool's), aliases, implications, validation messages,
// needs/excludes, %n replacement, the not-implemented table, --memory-limit and --help.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "training/options.h"

namespace llmq {
namespace {

TrainOptions parse(std::initializer_list<const char*> flags) {
  std::vector<const char*> argv{"train"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return parse_options(static_cast<int>(argv.size()), argv.data());
}

// The message of the llmq::Error (or ParseExit) that parsing `flags` throws; "" when none is thrown.
std::string parse_error(std::initializer_list<const char*> flags) {
  try {
    parse(flags);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string implemented_error(std::initializer_list<const char*> flags) {
  const TrainOptions opts = parse(flags);
  try {
    check_implemented(opts);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Options, DefaultsMatchTheSeedTool) {
  const TrainOptions o = parse({});
  EXPECT_EQ(o.model, ".");
  EXPECT_FALSE(o.from_scratch);
  EXPECT_FALSE(o.init_proj_to_zero);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_EQ(o.model_dtype, DType::BF16);
  EXPECT_EQ(o.matmul_dtype, DType::BF16);
  EXPECT_EQ(o.gradient_dtype, DType::BF16);
  EXPECT_EQ(o.batch_size, 4);
  EXPECT_EQ(o.seq_len, 1024);
  EXPECT_EQ(o.grad_accumulation, 4);
  EXPECT_EQ(o.lmhead_chunks, 1);
  EXPECT_EQ(o.attn_bwd_chunks, 1);
  EXPECT_EQ(o.name, "llmq");
  EXPECT_EQ(o.debug_log_allocations, -1);
  EXPECT_FALSE(o.debug_time_breakdown);
  EXPECT_EQ(o.debug_log_abs_max, 0);
  EXPECT_DOUBLE_EQ(o.learning_rate, 1e-5);
  EXPECT_EQ(o.warmup, 0);
  EXPECT_EQ(o.cooldown, 0);
  EXPECT_DOUBLE_EQ(o.final_lr_fraction, 1.0);
  EXPECT_EQ(o.lr_schedule, LrScheduleType::Cosine);
  EXPECT_DOUBLE_EQ(o.beta1, 0.9);
  EXPECT_DOUBLE_EQ(o.beta2, 0.95);
  EXPECT_EQ(o.opt_m_dtype, DType::FP32);
  EXPECT_EQ(o.opt_v_dtype, DType::FP32);
  EXPECT_DOUBLE_EQ(o.grad_clip, 1.0);
  EXPECT_DOUBLE_EQ(o.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(o.z_loss, 0.0);
  EXPECT_DOUBLE_EQ(o.adam_epsilon, 1e-8);
  EXPECT_EQ(o.steps, -1);
  EXPECT_EQ(o.epochs, 1);
  EXPECT_EQ(o.log_gpu_util, 25);
  EXPECT_EQ(o.eval_every_n_steps, 100);
  EXPECT_EQ(o.eval_num_steps, 100);
  EXPECT_EQ(o.train_file, "data/tiny-shakespeare-qwen/train.bin");
  EXPECT_EQ(o.train_seed, 0x83b45442u);
  EXPECT_EQ(o.eval_file, "data/tiny-shakespeare-qwen/eval.bin");
  EXPECT_EQ(o.eval_seed, 0x384b4524u);
  EXPECT_EQ(o.out_dir, "output/llmq");
  EXPECT_EQ(o.out_file, "output/llmq/model.safetensors");
  EXPECT_EQ(o.checkpoint_dir, "ckpt/llmq");
  EXPECT_TRUE(o.save_training_state);
  EXPECT_EQ(o.ckpt_interval, 100);
  EXPECT_EQ(o.ckpt_keep_n, -1);
  EXPECT_EQ(o.ckpt_major, -1);
  EXPECT_FALSE(o.continue_from.has_value());
  EXPECT_FALSE(o.new_data);
  EXPECT_EQ(o.gpus, 0);
  EXPECT_EQ(o.zero_level, 1);
  EXPECT_TRUE(o.use_cuda_graphs);  // ours: on (the seed's default is off)
  EXPECT_FALSE(o.memory_limit.has_value());
  EXPECT_FALSE(o.auto_fit);
  for (bool b : {o.recompute_swiglu, o.recompute_norm, o.recompute_ffn, o.recompute_qkv, o.recompute_att,
                 o.recompute_block, o.offload_residual, o.offload_master, o.offload_quants, o.offload_opt_m,
                 o.offload_opt_v, o.offload_gradients, o.persistent_quants, o.use_zero_copy, o.write_combined,
                 o.shard_weights, o.shard_gradients, o.memcpy_all_gather, o.memcpy_send_recv, o.all_to_all_reduce,
                 o.custom_matmul})
    EXPECT_FALSE(b);
  // logs/<name>-YYYY-MM-DDTHH_MM.json
  EXPECT_EQ(o.log_file.rfind("logs/llmq-", 0), 0u) << o.log_file;
  EXPECT_EQ(o.log_file.size(), std::string("logs/llmq-2026-01-01T12_00.json").size()) << o.log_file;
}

TEST(Options, AliasesSetTheSameField) {
  EXPECT_EQ(parse({"--batch", "8"}).batch_size, 8);
  EXPECT_EQ(parse({"--batch-size=16"}).batch_size, 16);
  EXPECT_EQ(parse({"--seq-len", "512"}).seq_len, 512);
  EXPECT_EQ(parse({"--seq-length=256"}).seq_len, 256);
  EXPECT_DOUBLE_EQ(parse({"--lr", "3e-4"}).learning_rate, 3e-4);
  EXPECT_DOUBLE_EQ(parse({"--learning-rate=2e-4"}).learning_rate, 2e-4);
  EXPECT_TRUE(parse({"--write-combined"}).write_combined);
  EXPECT_TRUE(parse({"--use-write-combined"}).write_combined);
  EXPECT_FALSE(parse({"--no-use-cuda-graphs"}).use_cuda_graphs);
  EXPECT_TRUE(parse({"--use-cuda-graphs"}).use_cuda_graphs);
  // Default-on graphs step aside for per-layer offloading; an explicit request is refused (below).
  for (const char* offload : {"--offload-master", "--offload-gradients", "--offload-residual"})
    EXPECT_FALSE(parse({offload}).use_cuda_graphs) << offload;
  EXPECT_FALSE(parse({"--offload-quants", "--matmul-dtype=e4m3"}).use_cuda_graphs);
  EXPECT_TRUE(parse({"--offload-opt-m", "--offload-opt-v"}).use_cuda_graphs);  // outside the micro-steps
  EXPECT_TRUE(parse({}).autotune_matmuls);  // ours, on by default
  EXPECT_FALSE(parse({"--no-autotune-matmuls"}).autotune_matmuls);
  EXPECT_FALSE(parse({"--autotune-matmuls=false"}).autotune_matmuls);
  EXPECT_FALSE(parse({"--no-save-training-state"}).save_training_state);
  EXPECT_EQ(parse({"--batch", "8", "--batch", "2"}).batch_size, 2);  // last one wins
}

TEST(Options, ValuesAndSeedsParse) {
  const TrainOptions o = parse({"--train-seed", "0x10", "--eval-seed=7", "--seed", "123", "--model", "models/qwen",
                                "--steps", "50", "--warmup", "5", "--cooldown", "10", "--lr-schedule", "LINEAR",
                                "--final-lr-fraction", "0.1", "--opt-m-dtype", "bf16", "--model-dtype", "fp32",
                                "--debug-log-abs-max=5"});
  EXPECT_EQ(o.train_seed, 16u);
  EXPECT_EQ(o.eval_seed, 7u);
  EXPECT_EQ(o.seed, 123u);
  EXPECT_EQ(o.model, "models/qwen");
  EXPECT_EQ(o.steps, 50);
  EXPECT_EQ(o.lr_schedule, LrScheduleType::Linear);
  EXPECT_DOUBLE_EQ(o.final_lr_fraction, 0.1);
  EXPECT_EQ(o.opt_m_dtype, DType::BF16);
  EXPECT_EQ(o.model_dtype, DType::FP32);
  EXPECT_EQ(o.matmul_dtype, DType::FP32);  // follows the model dtype
  EXPECT_EQ(o.gradient_dtype, DType::FP32);  // follows the matmul dtype
  EXPECT_EQ(o.debug_log_abs_max, 5);
  EXPECT_EQ(parse({"--lr-schedule", "Cosine"}).lr_schedule, LrScheduleType::Cosine);
  EXPECT_EQ(parse({"--lr-schedule", "wsd"}).lr_schedule, LrScheduleType::Wsd);
}

TEST(Options, DtypeDefaultsFollowEachOther) {
  const TrainOptions fp8 = parse({"--matmul-dtype", "e4m3"});
  EXPECT_EQ(fp8.model_dtype, DType::BF16);
  EXPECT_EQ(fp8.matmul_dtype, DType::E4M3);
  EXPECT_EQ(fp8.gradient_dtype, DType::BF16);
  EXPECT_EQ(parse({"--matmul-dtype", "e4m3", "--gradient-dtype", "e5m2"}).gradient_dtype, DType::E5M2);
  const TrainOptions mixed = parse({"--model-dtype", "fp32", "--matmul-dtype", "bf16"});
  EXPECT_EQ(mixed.gradient_dtype, DType::BF16);
}

TEST(Options, RecomputeImplications) {
  const TrainOptions block = parse({"--recompute-block"});
  EXPECT_TRUE(block.recompute_att && block.recompute_ffn && block.recompute_norm);
  EXPECT_TRUE(block.recompute_qkv && block.recompute_swiglu);
  const TrainOptions att = parse({"--recompute-att"});
  EXPECT_TRUE(att.recompute_qkv);
  EXPECT_FALSE(att.recompute_swiglu || att.recompute_ffn || att.recompute_norm);
  const TrainOptions ffn = parse({"--recompute-ffn"});
  EXPECT_TRUE(ffn.recompute_swiglu);
  EXPECT_FALSE(ffn.recompute_qkv || ffn.recompute_att);
}

TEST(Options, ZeroLevelImplications) {
  const TrainOptions z1 = parse({"--zero-level", "1"});
  EXPECT_FALSE(z1.shard_gradients || z1.shard_weights);
  const TrainOptions z2 = parse({"--zero-level", "2"});
  EXPECT_TRUE(z2.shard_gradients);
  EXPECT_FALSE(z2.shard_weights);
  const TrainOptions z3 = parse({"--zero-level=3"});
  EXPECT_TRUE(z3.shard_gradients && z3.shard_weights);
}

TEST(Options, RunNameReplacesPercentN) {
  const TrainOptions o = parse({"--name", "run7", "--log-file", "logs/%n/%n.json"});
  EXPECT_EQ(o.out_dir, "output/run7");
  EXPECT_EQ(o.out_file, "output/run7/model.safetensors");
  EXPECT_EQ(o.checkpoint_dir, "ckpt/run7");
  EXPECT_EQ(o.log_file, "logs/run7/run7.json");
  EXPECT_EQ(parse({"--name", "x"}).log_file.rfind("logs/x-", 0), 0u);
  EXPECT_EQ(replace_run_name("a%nb%n", "Q"), "aQbQ");
  EXPECT_EQ(replace_run_name("no name", "Q"), "no name");
}

TEST(Options, OutFileSetsTheOutputFolder) {
  const TrainOptions o = parse({"--name", "r", "--out-file", "final/%n/model.safetensors"});
  EXPECT_EQ(o.out_file, "final/r/model.safetensors");
  EXPECT_EQ(o.out_dir, "final/r");
  EXPECT_EQ(parse({"--out-file", "m.safetensors"}).out_dir, ".");
  EXPECT_EQ(parse({"--out-dir", "x"}).out_file, "x/model.safetensors");
}

TEST(Options, ContinueTakesAnOptionalPath) {
  EXPECT_EQ(parse({"--continue"}).continue_from, std::optional<std::string>(""));
  EXPECT_EQ(parse({"--continue", "ckpt/run/step_100"}).continue_from, std::optional<std::string>("ckpt/run/step_100"));
  const TrainOptions o = parse({"--continue", "--new-data", "--from-scratch"});  // together is fine
  EXPECT_EQ(o.continue_from, std::optional<std::string>(""));
  EXPECT_TRUE(o.new_data);
  EXPECT_TRUE(o.from_scratch);
}

TEST(Options, MemoryLimitParsesSizes) {
  EXPECT_EQ(parse({"--memory-limit", "16GiB"}).memory_limit, std::optional<std::size_t>(16ull << 30));
  EXPECT_EQ(parse({"--memory-limit=512MiB"}).memory_limit, std::optional<std::size_t>(512ull << 20));
  EXPECT_EQ(parse({"--memory-limit", "24GB"}).memory_limit, std::optional<std::size_t>(24'000'000'000ull));
  EXPECT_TRUE(parse({"--memory-limit", "16GiB", "--auto-fit"}).auto_fit);
  const std::string bad = parse_error({"--memory-limit", "lots"});
  EXPECT_NE(bad.find("--memory-limit"), std::string::npos) << bad;
}

TEST(Options, ValidationErrorsNameTheFlag) {
  const std::vector<std::pair<std::vector<const char*>, std::string>> cases = {
      {{"--model-dtype", "fp16"}, "--model-dtype"},
      {{"--model-dtype", "e4m3"}, "--model-dtype"},
      {{"--matmul-dtype", "int8"}, "--matmul-dtype"},
      {{"--matmul-dtype", "fp32"}, "--matmul-dtype fp32 is wider than --model-dtype bf16"},
      {{"--gradient-dtype", "e4m3"}, "--gradient-dtype"},
      {{"--gradient-dtype", "e5m2"}, "--gradient-dtype e5m2 needs"},
      {{"--opt-m-dtype", "e4m3"}, "--opt-m-dtype"},
      {{"--opt-v-dtype", "fp16"}, "--opt-v-dtype"},
      {{"--zero-level", "0"}, "--zero-level"},
      {{"--zero-level", "4"}, "--zero-level"},
      {{"--gpus", "-1"}, "--gpus"},
      {{"--lmhead-chunks", "0"}, "--lmhead-chunks"},
      {{"--attn-bwd-chunks", "0"}, "--attn-bwd-chunks"},
      {{"--batch", "0"}, "--batch"},
      {{"--seq-len", "1"}, "--seq-len"},
      {{"--grad-accumulation", "0"}, "--grad-accumulation"},
      {{"--final-lr-fraction", "1.5"}, "--final-lr-fraction"},
      {{"--final-lr-fraction", "-0.1"}, "--final-lr-fraction"},
      {{"--beta-1", "1"}, "--beta-1"},
      {{"--beta-2", "-0.5"}, "--beta-2"},
      {{"--steps", "100", "--warmup", "60", "--cooldown", "50"}, "--warmup 60 + --cooldown 50 exceed --steps 100"},
      {{"--steps", "0"}, "--steps"},
      {{"--use-cuda-graphs", "--offload-master"}, "--use-cuda-graphs cannot be combined with --offload-master"},
      {{"--use-cuda-graphs", "--offload-gradients"}, "--use-cuda-graphs cannot be combined with --offload-master"},
      {{"--use-cuda-graphs", "--offload-residual"}, "--use-cuda-graphs cannot be combined with --offload-master"},
      {{"--use-cuda-graphs", "--offload-quants", "--matmul-dtype", "e4m3"},
       "--use-cuda-graphs cannot be combined with --offload-master"},
      {{"--offload-quants"}, "--offload-quants needs --matmul-dtype=e4m3"},
      {{"--epochs", "0"}, "--epochs"},
      {{"--lr", "-1"}, "--lr"},
      {{"--lr-schedule", "step"}, "--lr-schedule"},
      {{"--ckpt-keep-n", "0"}, "--ckpt-keep-n"},
      {{"--eval-every-n-steps", "-3"}, "--eval-every-n-steps"},
  };
  for (const auto& [flags, expected] : cases) {
    std::vector<const char*> argv{"train"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::string message;
    try {
      parse_options(static_cast<int>(argv.size()), argv.data());
    } catch (const Error& e) {
      message = e.what();
    }
    EXPECT_NE(message.find(expected), std::string::npos) << flags[0] << " gave: '" << message << "'";
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  // FP8 GEMMs read bf16 tensors: an fp32 model cannot use them. warmup + cooldown == steps is fine.
  EXPECT_THROW(parse({"--model-dtype", "fp32", "--matmul-dtype", "e4m3"}), Error);
  EXPECT_EQ(parse({"--model-dtype", "bf16", "--matmul-dtype", "e4m3", "--gradient-dtype", "e5m2"}).matmul_dtype,
            DType::E4M3);
  EXPECT_EQ(parse({"--steps", "10", "--warmup", "4", "--cooldown", "6"}).steps, 10);
}

TEST(Options, NeedsAndExcludesAreOneLineParseErrors) {
  const std::vector<std::pair<std::vector<const char*>, std::vector<std::string>>> cases = {
      {{"--init-proj-to-zero"}, {"--init-proj-to-zero", "--from-scratch"}},
      {{"--new-data"}, {"--new-data", "--continue"}},
      {{"--epochs", "2", "--steps", "10"}, {"--epochs", "--steps"}},
      {{"--shard-weights", "--zero-level", "3"}, {"--shard-weights", "--zero-level"}},
      {{"--shard-gradients", "--zero-level", "2"}, {"--shard-gradients", "--zero-level"}},
      {{"--auto-fit"}, {"--auto-fit", "--memory-limit"}},
      {{"--out-dir", "a", "--out-file", "b"}, {"--out-file", "--out-dir"}},
      {{"--no-such-flag"}, {"--no-such-flag"}},
      {{"--batch", "many"}, {"--batch"}},
  };
  for (const auto& [flags, expected] : cases) {
    std::vector<const char*> argv{"train"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    try {
      parse_options(static_cast<int>(argv.size()), argv.data());
      ADD_FAILURE() << flags[0] << " was accepted";
    } catch (const ParseExit& e) {
      EXPECT_NE(e.exit_code(), 0) << e.text();
      EXPECT_EQ(e.text().find('\n'), std::string::npos) << e.text();
      for (const auto& word : expected) EXPECT_NE(e.text().find(word), std::string::npos) << e.text();
    }
  }
  const TrainOptions chain =
      parse({"--shard-weights", "--persistent-quants", "--offload-quants", "--matmul-dtype", "e4m3"});
  EXPECT_TRUE(chain.offload_quants && chain.persistent_quants && chain.shard_weights);
  // On one GPU the FP8 copies are always persistent: --offload-quants alone implies it.
  const TrainOptions alone = parse({"--offload-quants", "--matmul-dtype", "e4m3"});
  EXPECT_TRUE(alone.offload_quants && alone.persistent_quants && !alone.shard_weights);
  EXPECT_TRUE(parse({"--persistent-quants"}).persistent_quants);
}

TEST(Options, HelpExitsZeroAndListsFlagsWithDefaults) {
  for (const char* help : {"--help", "-h"}) {
    try {
      parse({help});
      ADD_FAILURE() << help << " did not exit";
    } catch (const ParseExit& e) {
      EXPECT_EQ(e.exit_code(), 0);
      const std::string& text = e.text();
      for (const char* expected :
           {"--batch,--batch-size INT=4", "--seq-len,--seq-length INT=1024", "--lr,--learning-rate FLOAT=1e-05",
            "--model TEXT=.", "--train-seed UINT=0x83b45442", "--lr-schedule TEXT=cosine", "--zero-level INT=1",
            "--out-dir TEXT=output/%n", "--checkpoint-dir TEXT=ckpt/%n", "--grad-accumulation INT=4",
            "--log-file TEXT=logs/%n-<YYYY-MM-DDTHH_MM>.json", "--matmul-dtype TEXT=model dtype",
            "--memory-limit SIZE=none", "--no-use-cuda-graphs{false} [on]", "--from-scratch [off]",
            "--offload-master [off]", "--continue [PATH]",
            "--beta-2 FLOAT=0.95", "--steps INT=-1", "--eval-file TEXT=data/tiny-shakespeare-qwen/eval.bin"}) {
        EXPECT_NE(text.find(expected), std::string::npos) << "missing '" << expected << "' in\n" << text;
      }
      EXPECT_NE(text.find("(not implemented yet)"), std::string::npos);
    }
  }
  EXPECT_NE(options_help().find("--recompute-block"), std::string::npos);
}

TEST(Options, HelpMentionsEveryFlagOfTheSeedTool) {
  const std::string help = options_help();
  for (const char* flag :
       {"--model", "--from-scratch", "--init-proj-to-zero", "--matmul-dtype", "--gradient-dtype", "--model-dtype",
        "--batch", "--batch-size", "--seq-len", "--seq-length", "--lmhead-chunks", "--attn-bwd-chunks", "--name",
        "--debug-log-allocations", "--debug-time-breakdown", "--debug-log-abs-max", "--lr", "--learning-rate",
        "--warmup", "--cooldown", "--final-lr-fraction", "--lr-schedule", "--beta-1", "--beta-2", "--opt-m-dtype",
        "--opt-v-dtype", "--grad-accumulation", "--grad-clip", "--weight-decay", "--z-loss", "--adam-epsilon",
        "--steps", "--epochs", "--log-gpu-util", "--eval-every-n-steps", "--eval-num-steps", "--train-file",
        "--train-seed", "--eval-file", "--eval-seed", "--out-dir", "--out-file", "--checkpoint-dir",
        "--save-training-state", "--ckpt-interval", "--ckpt-keep-n", "--ckpt-major", "--continue", "--new-data",
        "--log-file", "--gpus", "--recompute-swiglu", "--recompute-norm", "--recompute-ffn", "--recompute-qkv",
        "--recompute-att", "--recompute-block", "--offload-residual", "--use-cuda-graphs", "--no-use-cuda-graphs",
        "--zero-level", "--offload-master", "--shard-weights", "--persistent-quants", "--offload-quants",
        "--offload-opt-m", "--offload-opt-v", "--offload-gradients", "--use-zero-copy", "--shard-gradients",
        "--memcpy-all-gather", "--memcpy-send-recv", "--all-to-all-reduce", "--write-combined",
        "--use-write-combined", "--custom-matmul", "--memory-limit", "--auto-fit", "--seed"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  }
}

TEST(Options, UnimplementedFlagsAreRefusedAtStartUp) {
  const std::vector<std::pair<std::vector<const char*>, std::string>> cases = {
      {{"--gpus", "2"}, "--gpus > 1"},
      {{"--zero-level", "2"}, "--zero-level 2 or 3"},
      {{"--shard-weights"}, "--shard-weights"},
      {{"--shard-gradients"}, "--shard-gradients"},
      {{"--memcpy-all-gather"}, "--memcpy-all-gather"},
      {{"--memcpy-send-recv"}, "--memcpy-send-recv"},
      {{"--all-to-all-reduce"}, "--all-to-all-reduce"},
      {{"--custom-matmul"}, "--custom-matmul"},
      {{"--attn-bwd-chunks", "2"}, "--attn-bwd-chunks > 1"},
      {{"--debug-log-allocations", "16"}, "--debug-log-allocations"},
      {{"--debug-time-breakdown"}, "--debug-time-breakdown"},
      {{"--debug-log-abs-max"}, "--debug-log-abs-max"},
  };
  for (const auto& [flags, expected] : cases) {
    std::vector<const char*> argv{"train"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    const TrainOptions opts = parse_options(static_cast<int>(argv.size()), argv.data());
    try {
      check_implemented(opts);
      ADD_FAILURE() << flags[0] << " was not refused";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind(expected + " is not implemented yet in this build", 0), 0u) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos);
    }
  }
}

TEST(Options, SingleGpuTrainingIsImplemented) {
  EXPECT_EQ(implemented_error({}), "");
  EXPECT_EQ(implemented_error({"--gpus", "1", "--model-dtype", "fp32", "--opt-m-dtype", "bf16", "--opt-v-dtype",
                               "bf16", "--lmhead-chunks", "4", "--memory-limit", "16GiB", "--continue",
                               "--from-scratch", "--no-use-cuda-graphs", "--steps", "10", "--warmup", "2",
                               "--z-loss", "1e-4", "--init-proj-to-zero"}),
            "");
  for (const char* recompute : {"--recompute-swiglu", "--recompute-norm", "--recompute-ffn", "--recompute-qkv",
                                "--recompute-att", "--recompute-block"})
    EXPECT_EQ(implemented_error({recompute}), "") << recompute;
  EXPECT_EQ(implemented_error({"--offload-opt-m", "--offload-opt-v"}), "");
  EXPECT_EQ(implemented_error({"--matmul-dtype", "e4m3", "--gradient-dtype", "e5m2"}), "");
  EXPECT_EQ(implemented_error({"--offload-opt-m", "--use-zero-copy", "--write-combined"}), "");
  EXPECT_EQ(implemented_error({"--offload-opt-v", "--use-write-combined"}), "");
  EXPECT_EQ(implemented_error({"--offload-master", "--offload-gradients", "--offload-opt-m", "--offload-opt-v"}), "");
  EXPECT_EQ(implemented_error({"--offload-residual", "--recompute-block"}), "");
  EXPECT_EQ(implemented_error({"--offload-quants", "--persistent-quants", "--matmul-dtype", "e4m3"}), "");
  int unimplemented = 0;
  for (const auto& row : feature_table()) {
    EXPECT_EQ(row.flag.rfind("--", 0), 0u) << row.flag;
    unimplemented += row.implemented ? 0 : 1;
  }
  EXPECT_GE(unimplemented, 10);  // multi-GPU, custom matmul, attention chunks, debugging flags
}

TEST(Options, MissingTokenFilesAreOneLineErrors) {
  const auto dir = std::filesystem::temp_directory_path() / "llmq_test_options_files";
  std::filesystem::create_directories(dir);
  const std::string train = (dir / "train.bin").string();
  std::ofstream(train) << "x";

  TrainOptions o = parse({"--train-file", "/nonexistent/train.bin"});
  try {
    check_input_files(o);
    ADD_FAILURE() << "missing train file accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "token file /nonexistent/train.bin not found: pass --train-file=PATH (make one with "
              "scripts/tokenize_data.py)");
  }
  o = parse({"--train-file", train.c_str(), "--eval-file", "/nonexistent/eval.bin"});
  try {
    check_input_files(o);
    ADD_FAILURE() << "missing eval file accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--eval-file=PATH"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--eval-every-n-steps=0"), std::string::npos) << e.what();
  }
  o = parse({"--train-file", train.c_str(), "--eval-file", "/nonexistent/eval.bin", "--eval-every-n-steps", "0"});
  EXPECT_NO_THROW(check_input_files(o));
  std::filesystem::remove_all(dir);
}

TEST(Options, DescribeListsEverySettingAligned) {
  const TrainOptions o = parse({"--name", "demo", "--batch", "8", "--memory-limit", "16GiB"});
  const std::string text = describe_options(o);
  EXPECT_EQ(text.rfind("[Options]\n", 0), 0u);
  EXPECT_NE(text.find("batch-size"), std::string::npos);
  EXPECT_NE(text.find(": 8\n"), std::string::npos);
  EXPECT_NE(text.find(": demo\n"), std::string::npos);
  EXPECT_NE(text.find(": 16.00 GiB\n"), std::string::npos);
  EXPECT_NE(text.find(": output/demo\n"), std::string::npos);
  // Every line after the header has its colon at the same column.
  std::size_t colon = std::string::npos;
  int lines = 0;
  std::size_t start = text.find('\n') + 1;
  while (start < text.size()) {
    const std::size_t end = text.find('\n', start);
    const std::string line = text.substr(start, end - start);
    EXPECT_EQ(line.rfind("  ", 0), 0u) << line;
    const std::size_t pos = line.find(" : ");
    if (colon == std::string::npos) colon = pos;
    EXPECT_EQ(pos, colon) << line;
    ++lines;
    start = end + 1;
  }
  EXPECT_EQ(lines, static_cast<int>(option_entries(o).size()));
  const nlohmann::json j = options_to_json(o);
  EXPECT_EQ(j.at("batch-size"), 8);
  EXPECT_EQ(j.at("model-dtype"), "bf16");
  EXPECT_EQ(j.at("memory-limit"), 16ull << 30);
  EXPECT_TRUE(j.at("continue").is_null());
}

}  // namespace
}  // namespace llmq

TEST(OptionsValidation, PathFlagSwallowingTheNextFlagIsRefused) {
  const char* argv[] = {"train", "--eval-file=", "--steps=20"};
  try {
    llmq::parse_options(3, argv);
    FAIL() << "expected an error";
  } catch (const llmq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--eval-file"), std::string::npos) << e.what();
  }
}
