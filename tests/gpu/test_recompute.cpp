// Activation recomputation (--recompute-*) on the GPU. The backward pass reruns the dropped forward
// pieces with the forward's own kernels and arguments, so training with any flag set must give
// EXACTLY the baseline's losses, gradient norms, evaluation loss and final weights (EXPECT_EQ, no
// tolerance), while the allocator's Activations category shrinks. A tiny Qwen2-shaped model
// (3 layers, C 256, D 512, 4 query / 2 kv heads of 64, V 1000, q/k/v biases), random init, B 2 x T 128,
// 3 optimizer steps of 2 accumulated micro-batches of seeded random tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "model/config.h"
#include "model/qwen_model.h"
#include "model_test_utils.h"

using namespace llmq;

namespace {

constexpr int kB = 2, kT = 128, kAccum = 2, kSteps = 3;

ModelConfig tiny_qwen(bool tied) { return test::tiny_qwen2_config({.tied = tied}); }

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
  std::vector<StepResult> steps;
  float eval_loss = 0;
  std::map<std::string, test::Bytes> exported;  // file name -> bytes of the exported model
  std::size_t activation_bytes = 0;
};

QwenModelOptions model_options(DType dtype, const RecomputeOptions& recompute) {
  QwenModelOptions o = test::tiny_qwen2_options(kB, kT, kAccum, /*seed=*/1234);
  o.model_dtype = dtype;
  o.recompute = recompute;
  return o;
}

// Seeded random micro-batch; every 17th target is ignored (-1).
void next_batch(std::mt19937& rng, int V, std::vector<std::int32_t>& inputs, std::vector<std::int32_t>& targets) {
  test::random_batch(rng, V, kB * kT, /*ignore_every=*/17, inputs, targets);
}

RunResult train(const ModelConfig& cfg, DType dtype, const RecomputeOptions& recompute) {
  std::unique_ptr<Model> model = make_qwen_model(cfg, model_options(dtype, recompute), {});
  RunResult r;
  r.activation_bytes = model->allocator().in_use(MemCategory::Activations, MemKind::Device);
  std::mt19937 rng(20261122);
  auto batch = [&](int, int, auto& inputs, auto& targets) { next_batch(rng, cfg.vocab_size, inputs, targets); };
  r.steps = test::train_steps(*model, test::adamw_at(1e-3f), kAccum, 1, kSteps, batch);
  std::vector<std::int32_t> inputs, targets;
  next_batch(rng, cfg.vocab_size, inputs, targets);
  r.eval_loss = model->evaluate(inputs.data(), targets.data());
  r.exported = test::exported_files(*model);
  return r;
}

void expect_bit_identical(const RunResult& run, const RunResult& baseline) {
  test::expect_same_steps(run.steps, baseline.steps);
  EXPECT_EQ(run.eval_loss, baseline.eval_loss);
  test::expect_same_bytes(run.exported, baseline.exported, "exported file");
}

void expect_sane(const RunResult& r, int vocab) {
  // Random init (std 0.02) gives near-uniform logits: the first loss is about ln(V).
  ASSERT_EQ(r.steps.size(), static_cast<std::size_t>(kSteps));
  EXPECT_NEAR(r.steps[0].loss, std::log(static_cast<float>(vocab)), 0.3f);
  for (std::size_t i = 0; i < r.steps.size(); ++i) {
    EXPECT_TRUE(std::isfinite(r.steps[i].loss) && std::isfinite(r.steps[i].grad_norm)) << "step " << i + 1;
    EXPECT_GT(r.steps[i].grad_norm, 0.f) << "step " << i + 1;
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
