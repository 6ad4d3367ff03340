// Helpers shared by the whole-model GPU tests (recompute, CUDA graphs, offload, FP8): the tiny
// Qwen2-shaped test model, seeded token batches, a training driver that records every optimizer
// step, the bytes a model writes (exported files, checkpoint tensors), and bit-identity checks.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../unit/test_util.h"
#include "core/errors.h"
#include "core/safetensors.h"
#include "model/config.h"
#include "model/qwen_model.h"
#include "training/model.h"

namespace llmq::test {

// The sizes of the tiny model that differ between tests; everything else is fixed.
struct TinyQwen2Shape {
  bool tied = false;    // tie_word_embeddings
  int vocab = 1000;     // V
  int mlp_width = 512;  // D
};

// A tiny Qwen2-shaped config: 3 layers, C 256, 4 query / 2 kv heads of 64 (cuDNN SDPA needs a
// multiple of 8, at most 256), q/k/v biases, rope theta 1e6, eps 1e-6, 4096 positions.
inline ModelConfig tiny_qwen2_config(const TinyQwen2Shape& shape = {}) {
  ModelConfig c;
  c.name = shape.tied ? "tiny-qwen2-tied" : "tiny-qwen2";
  c.architecture = Architecture::Qwen2;
  c.hidden_size = 256;
  c.intermediate_size = shape.mlp_width;
  c.num_layers = 3;
  c.num_query_heads = 4;
  c.num_kv_heads = 2;
  c.head_size = 64;
  c.vocab_size = shape.vocab;
  c.tie_word_embeddings = shape.tied;
  c.rope_theta = 1e6;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 4096;
  c.qkv_bias = true;
  validate_config(c, c.name);
  return c;
}

// Options of a bf16 run with B x T tokens per micro-batch, `accum` micro-batches per optimizer step
// and weight-init / stochastic-rounding seed `seed`; everything else at its default.
inline QwenModelOptions tiny_qwen2_options(int batch, int seq_len, int accum, std::uint64_t seed) {
  QwenModelOptions o;
  o.model_dtype = DType::BF16;
  o.batch_size = batch;
  o.seq_len = seq_len;
  o.grad_accumulation = accum;
  o.seed = seed;
  return o;
}

// The tiny model with `opts`, randomly initialised from opts.seed.
inline std::unique_ptr<Model> make_tiny_qwen2(const QwenModelOptions& opts, const TinyQwen2Shape& shape = {}) {
  return make_qwen_model(tiny_qwen2_config(shape), opts, {});
}

// AdamW at learning rate `lr`, every other setting at its default (weight decay 0.1, clip 1.0).
inline AdamWSettings adamw_at(float lr) {
  AdamWSettings s;
  s.learning_rate = lr;
  return s;
}

// ---- token batches (host arrays of `rows` = B*T int32; target -1 = no loss) ----

// Next micro-batch of a seeded stream: per position, the input and then the target are drawn
// uniformly from [0, vocab); with ignore_every > 0, every target with i % ignore_every == 0 is -1
// instead (and takes no draw).
inline void random_batch(std::mt19937& rng, int vocab, int rows, int ignore_every, std::vector<std::int32_t>& inputs,
                         std::vector<std::int32_t>& targets) {
  std::uniform_int_distribution<std::int32_t> token(0, vocab - 1);
  inputs.resize(rows);
  targets.resize(rows);
  for (int i = 0; i < rows; ++i) {
    inputs[i] = token(rng);
    targets[i] = ignore_every > 0 && i % ignore_every == 0 ? -1 : token(rng);
  }
}

// Micro-batch `micro` of step `step`, a function of (step, micro) alone, so a resumed run sees the
// same tokens: rows + 1 uniform tokens from mt19937(1000 * step + micro), targets = inputs shifted by one.
inline void seeded_batch(int step, int micro, int vocab, int rows, std::vector<std::int32_t>& inputs,
                         std::vector<std::int32_t>& targets) {
  std::mt19937 rng(1000u * step + micro);
  std::uniform_int_distribution<std::int32_t> token(0, vocab - 1);
  std::vector<std::int32_t> seq(rows + 1);
  for (auto& t : seq) t = token(rng);
  inputs.assign(seq.begin(), seq.end() - 1);
  targets.assign(seq.begin() + 1, seq.end());
}

// Fills the inputs and targets of micro-batch `micro` (from 0) of optimizer step `step` (from 1).
using BatchSource =
    std::function<void(int step, int micro, std::vector<std::int32_t>& inputs, std::vector<std::int32_t>& targets)>;

// seeded_batch of `vocab` tokens and `rows` rows as a BatchSource.
inline BatchSource seeded_batches(int vocab, int rows) {
  return [vocab, rows](int step, int micro, std::vector<std::int32_t>& inputs, std::vector<std::int32_t>& targets) {
    seeded_batch(step, micro, vocab, rows, inputs, targets);
  };
}

// Runs optimizer steps first_step..last_step, each over `accum` micro-batches from `batch`, and
// returns every step's loss and gradient norm.
inline std::vector<StepResult> train_steps(Model& model, const AdamWSettings& adam, int accum, int first_step,
                                           int last_step, const BatchSource& batch) {
  std::vector<StepResult> steps;
  std::vector<std::int32_t> inputs, targets;
  for (int step = first_step; step <= last_step; ++step) {
    for (int micro = 0; micro < accum; ++micro) {
      batch(step, micro, inputs, targets);
      model.forward_backward(inputs.data(), targets.data(), micro);
    }
    steps.push_back(model.optimizer_step(adam, step));
  }
  return steps;
}

// ---- bytes a model writes, for bit-identity comparisons ----

using Bytes = std::vector<std::byte>;

// Every regular file directly in `dir`, by file name.
inline std::map<std::string, Bytes> read_dir_files(const std::filesystem::path& dir) {
  std::map<std::string, Bytes> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    Bytes& bytes = files[entry.path().filename().string()];
    bytes.resize(entry.file_size());
    std::ifstream in(entry.path(), std::ios::binary);
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    LLMQ_REQUIRE(in.gcount() == static_cast<std::streamsize>(bytes.size()), "{}: read {} of {} bytes",
                 entry.path().string(), in.gcount(), bytes.size());
  }
  return files;
}

// The files export_model writes (model.safetensors, config.json), by file name.
inline std::map<std::string, Bytes> exported_files(const Model& model) {
  TempDir dir;
  model.export_model(dir.path());
  return read_dir_files(dir.path());
}

// The raw data of every tensor in the model's checkpoint (weights, adam_m, adam_v), by tensor name.
inline std::map<std::string, Bytes> checkpoint_tensors(const Model& model) {
  TempDir dir;
  model.save_checkpoint(dir.path());
  std::map<std::string, Bytes> tensors;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    if (entry.path().extension() != ".safetensors") continue;
    const SafeTensorsFile file = SafeTensorsFile::open(entry.path());
    for (const SafeTensorInfo& info : file.tensors()) tensors[info.name] = Bytes(info.data, info.data + info.bytes);
  }
  return tensors;
}

// Bytes that differ between a and b (all of the longer one when the sizes differ).
inline std::size_t differing_bytes(const Bytes& a, const Bytes& b) {
  if (a.size() != b.size()) return std::max(a.size(), b.size());
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

// ---- bit-identity expectations (EXPECT_EQ, no tolerance) ----

// Same number of steps, and every step's loss and gradient norm equal to the reference's.
inline void expect_same_steps(const std::vector<StepResult>& run, const std::vector<StepResult>& ref) {
  ASSERT_EQ(run.size(), ref.size()) << "number of optimizer steps";
  for (std::size_t i = 0; i < ref.size(); ++i) {
    EXPECT_EQ(run[i].loss, ref[i].loss) << "loss of step " << i + 1;
    EXPECT_EQ(run[i].grad_norm, ref[i].grad_norm) << "gradient norm of step " << i + 1;
  }
}

// The same names as the reference, each with byte-identical contents; `what` names the entries
// in messages ("exported file", "checkpoint tensor").
inline void expect_same_bytes(const std::map<std::string, Bytes>& run, const std::map<std::string, Bytes>& ref,
                              const std::string& what) {
  EXPECT_EQ(run.size(), ref.size()) << "number of " << what << "s";
  for (const auto& [name, bytes] : ref) {
    const auto it = run.find(name);
    if (it == run.end()) {
      ADD_FAILURE() << what << " " << name << " is missing";
      continue;
    }
    EXPECT_EQ(differing_bytes(it->second, bytes), 0u) << what << " " << name << " differs";
  }
}

}  // namespace llmq::test
