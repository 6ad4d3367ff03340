// Activation recomputation (--recompute-*) on the GPU. The backward pass reruns the dropped forward
// pieces with the forward's own kernels and arguments, so training with any flag set must give
// EXACTLY the baseline's losses, gradient norms, evaluation loss and final weights (EXPECT_EQ, no
// tolerance), while the allocator's Activations category shrinks. A tiny Qwen2-shaped model
// (3 layers, C 256, D 512, 4 query / 2 kv heads of 64, V 1000, q/k/v biases), random init, B 2 x T 128,
// 3 optimizer steps of 2 accumulated micro-batches of seeded random tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../unit/test_util.h"
#include "core/allocator.h"
#include "model/config.h"
#include "model/qwen_model.h"

using namespace llmq;

namespace {

constexpr int kB = 2, kT = 128, kAccum = 2, kSteps = 3;

ModelConfig tiny_qwen(bool tied) {
  ModelConfig c;
  c.name = tied ? "tiny-qwen2-tied" : "tiny-qwen2";
  c.architecture = Architecture::Qwen2;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_layers = 3;
  c.num_query_heads = 4;
  c.num_kv_heads = 2;
  c.head_size = 64;  // cuDNN SDPA: a multiple of 8, at most 256
  c.vocab_size = 1000;
  c.tie_word_embeddings = tied;
  c.rope_theta = 1e6;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 4096;
  c.qkv_bias = true;
  validate_config(c, c.name);
  return c;
}

struct NamedFlags {
  std::string name;
  RecomputeOptions flags;
};

std::vector<NamedFlags> flag_sets() {
  std::vector<NamedFlags> sets;
  auto add = [&](const std::string& name, auto set) {
    RecomputeOptions r;
    set(r);
    sets.push_back({name, r});
  };
  add("swiglu", [](RecomputeOptions& r) { r.swiglu = true; });
  add("ffn", [](RecomputeOptions& r) { r.ffn = true; });
  add("norm", [](RecomputeOptions& r) { r.norm = true; });
  add("qkv", [](RecomputeOptions& r) { r.qkv = true; });
  add("att", [](RecomputeOptions& r) { r.att = true; });
  add("norm+qkv", [](RecomputeOptions& r) { r.norm = r.qkv = true; });
  add("att+ffn+norm", [](RecomputeOptions& r) { r.att = r.ffn = r.norm = true; });
  add("block", [](RecomputeOptions& r) { r.block = true; });
  return sets;
}

// Everything a run produces that recomputation must not change, and what it must change.
struct RunResult {
  std::vector<float> loss, grad_norm;
  float eval_loss = 0;
  std::map<std::string, std::string> exported;  // file name -> bytes of the exported model
  std::size_t activation_bytes = 0;
};

// Seeded random micro-batch; every 17th target is ignored (-1).
void random_batch(std::mt19937& rng, int V, std::vector<std::int32_t>& inputs, std::vector<std::int32_t>& targets) {
  std::uniform_int_distribution<std::int32_t> token(0, V - 1);
  inputs.resize(kB * kT);
  targets.resize(kB * kT);
  for (int i = 0; i < kB * kT; ++i) {
    inputs[i] = token(rng);
    targets[i] = i % 17 == 0 ? -1 : token(rng);
  }
}

std::map<std::string, std::string> read_files(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    files[entry.path().filename().string()] = bytes.str();
  }
  return files;
}

QwenModelOptions model_options(DType dtype, const RecomputeOptions& recompute) {
  QwenModelOptions o;
  o.model_dtype = dtype;
  o.batch_size = kB;
  o.seq_len = kT;
  o.grad_accumulation = kAccum;
  o.seed = 1234;
  o.recompute = recompute;
  return o;
}

RunResult train(const ModelConfig& cfg, DType dtype, const RecomputeOptions& recompute) {
  std::unique_ptr<Model> model = make_qwen_model(cfg, model_options(dtype, recompute), {});
  RunResult r;
  r.activation_bytes = model->allocator().in_use(MemCategory::Activations, MemKind::Device);
  AdamWSettings adam;
  adam.learning_rate = 1e-3f;
  std::mt19937 rng(20261122);
  std::vector<std::int32_t> inputs, targets;
  for (int step = 1; step <= kSteps; ++step) {
    for (int micro = 0; micro < kAccum; ++micro) {
      random_batch(rng, cfg.vocab_size, inputs, targets);
      model->forward_backward(inputs.data(), targets.data(), micro);
    }
    const StepResult s = model->optimizer_step(adam, step);
    r.loss.push_back(s.loss);
    r.grad_norm.push_back(s.grad_norm);
  }
  random_batch(rng, cfg.vocab_size, inputs, targets);
  r.eval_loss = model->evaluate(inputs.data(), targets.data());
  test::TempDir dir;
  model->export_model(dir.path());
  r.exported = read_files(dir.path());
  return r;
}

void expect_bit_identical(const RunResult& run, const RunResult& baseline) {
  ASSERT_EQ(run.loss.size(), baseline.loss.size());
  for (std::size_t i = 0; i < baseline.loss.size(); ++i) {
    EXPECT_EQ(run.loss[i], baseline.loss[i]) << "loss of step " << i + 1;
    EXPECT_EQ(run.grad_norm[i], baseline.grad_norm[i]) << "gradient norm of step " << i + 1;
  }
  EXPECT_EQ(run.eval_loss, baseline.eval_loss);
  ASSERT_EQ(run.exported.size(), baseline.exported.size());
  for (const auto& [name, bytes] : baseline.exported) {
    const auto it = run.exported.find(name);
    ASSERT_NE(it, run.exported.end()) << name << " was not exported";
    EXPECT_TRUE(it->second == bytes) << name << ": exported weights differ after " << kSteps << " steps";
  }
}

void expect_sane(const RunResult& r, int vocab) {
  // Random init (std 0.02) gives near-uniform logits: the first loss is about ln(V).
  EXPECT_NEAR(r.loss[0], std::log(static_cast<float>(vocab)), 0.3f);
  for (std::size_t i = 0; i < r.loss.size(); ++i) {
    EXPECT_TRUE(std::isfinite(r.loss[i]) && std::isfinite(r.grad_norm[i])) << "step " << i + 1;
    EXPECT_GT(r.grad_norm[i], 0.f) << "step " << i + 1;
  }
  ASSERT_TRUE(r.exported.count("model.safetensors")) << "export wrote no model.safetensors";
}

}  // namespace

// Without this, the comparisons below could not tell recomputation bugs from run-to-run noise.
TEST(Recompute, BaselineIsBitReproducible) {
  const ModelConfig cfg = tiny_qwen(false);
  const RunResult first = train(cfg, DType::BF16, {});
  expect_sane(first, cfg.vocab_size);
  expect_bit_identical(train(cfg, DType::BF16, {}), first);
}

TEST(Recompute, EveryFlagSetMatchesTheBaselineBitForBitInBf16) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied embeddings" : "untied embeddings");
    const ModelConfig cfg = tiny_qwen(tied);
    const RunResult baseline = train(cfg, DType::BF16, {});
    expect_sane(baseline, cfg.vocab_size);
    for (const NamedFlags& set : flag_sets()) {
      SCOPED_TRACE("--recompute " + set.name);
      const RunResult run = train(cfg, DType::BF16, set.flags);
      expect_bit_identical(run, baseline);
      EXPECT_LT(run.activation_bytes, baseline.activation_bytes);
    }
  }
}

TEST(Recompute, BlockRecomputeSavesTheMostActivationMemory) {
  const ModelConfig cfg = tiny_qwen(false);
  auto activation_bytes = [&](const RecomputeOptions& rc) {
    return make_qwen_model(cfg, model_options(DType::BF16, rc), {})
        ->allocator()
        .in_use(MemCategory::Activations, MemKind::Device);
  };
  RecomputeOptions block;
  block.block = true;
  const std::size_t block_bytes = activation_bytes(block);
  for (const NamedFlags& set : flag_sets())
    if (set.name != "block") EXPECT_LT(block_bytes, activation_bytes(set.flags)) << set.name;
}

// fp32 model: attention through the fp32 fallback kernels, fp32 norms (the plain rmsnorm that
// recomputes ln1_out must match the fused add + norm of the forward in fp32 too).
TEST(Recompute, Fp32ModelMatchesTheBaselineBitForBit) {
  const ModelConfig cfg = tiny_qwen(false);
  const RunResult baseline = train(cfg, DType::FP32, {});
  expect_sane(baseline, cfg.vocab_size);
  RecomputeOptions block;
  block.block = true;
  const RunResult run = train(cfg, DType::FP32, block);
  expect_bit_identical(run, baseline);
  EXPECT_LT(run.activation_bytes, baseline.activation_bytes);
}

// The point of the flags: a --memory-limit that the plan without recomputation exceeds still fits
// the model with --recompute-block.
TEST(Recompute, MemoryLimitThatOnlyRecomputationFits) {
  const ModelConfig cfg = tiny_qwen(false);
  RecomputeOptions block;
  block.block = true;
  auto device_bytes = [&](const RecomputeOptions& rc) {
    return make_qwen_model(cfg, model_options(DType::BF16, rc), {})->allocator().device_in_use();
  };
  const std::size_t none = device_bytes({}), with_block = device_bytes(block);
  ASSERT_LT(with_block, none);
  QwenModelOptions limited = model_options(DType::BF16, {});
  limited.memory_limit = (none + with_block) / 2;
  EXPECT_THROW(make_qwen_model(cfg, limited, {}), OutOfMemory);
  limited.recompute = block;
  EXPECT_NO_THROW(make_qwen_model(cfg, limited, {}));
}
