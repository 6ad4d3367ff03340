// FP8 training (--matmul-dtype=e4m3, optionally --gradient-dtype=e5m2) of a tiny Qwen2-shaped model
// against the same run in bf16. FP8 GEMMs round their inputs to 3 (e4m3) or 2 (e5m2) mantissa bits,
// so the runs differ; the checks are that FP8 learns like bf16 on a learnable sequence:
//   every loss and gradient norm finite; first loss within 1% of bf16 (forward quantization only);
//   the loss falls by more than half of what bf16's falls; the mean of the last 5 losses within 10%
//   of bf16's (the tiny model's single-batch losses are noisy; the 300-step Shakespeare comparison in
//   scripts/gpu_check.sh fp8quality is the real quality check);
// and that FP8 stays deterministic under activation recomputation (bit-identical losses).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/errors.h"
#include "model/config.h"
#include "model/qwen_model.h"

using namespace llmq;

namespace {

constexpr int kB = 4, kT = 128, kSteps = 30;

ModelConfig tiny_qwen(int intermediate = 512) {
  ModelConfig c;
  c.name = "tiny-qwen2-fp8";
  c.architecture = Architecture::Qwen2;
  c.hidden_size = 256;
  c.intermediate_size = intermediate;
  c.num_layers = 3;
  c.num_query_heads = 4;
  c.num_kv_heads = 2;
  c.head_size = 64;
  c.vocab_size = 512;
  c.tie_word_embeddings = false;
  c.rope_theta = 1e6;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 4096;
  c.qkv_bias = true;
  validate_config(c, c.name);
  return c;
}

QwenModelOptions options(DType matmul, DType gradient, bool recompute_block = false) {
  QwenModelOptions o;
  o.model_dtype = DType::BF16;
  o.matmul_dtype = matmul;
  o.gradient_dtype = gradient;
  o.batch_size = kB;
  o.seq_len = kT;
  o.seed = 7;
  o.recompute.block = recompute_block;
  return o;
}

// A learnable stream: each row is an arithmetic sequence mod 61 with its own start and stride, so the
// next token follows from the previous two.
void pattern_batch(int step, std::vector<std::int32_t>& inputs, std::vector<std::int32_t>& targets) {
  inputs.resize(kB * kT);
  targets.resize(kB * kT);
  for (int b = 0; b < kB; ++b) {
    const int start = (step * 7 + b * 13) % 61, stride = 1 + (step + b) % 5;
    for (int t = 0; t < kT; ++t) {
      inputs[b * kT + t] = (start + stride * t) % 61;
      targets[b * kT + t] = (start + stride * (t + 1)) % 61;
    }
  }
}

struct TrainingRun {
  std::vector<float> loss, grad_norm;
  std::size_t quant_bytes = 0;
};

TrainingRun train(const QwenModelOptions& o) {
  std::unique_ptr<Model> model = make_qwen_model(tiny_qwen(), o, {});
  TrainingRun r;
  r.quant_bytes = model->allocator().in_use(MemCategory::Quants, MemKind::Device);
  AdamWSettings adam;
  adam.learning_rate = 3e-3f;
  std::vector<std::int32_t> inputs, targets;
  for (int step = 1; step <= kSteps; ++step) {
    pattern_batch(step, inputs, targets);
    model->forward_backward(inputs.data(), targets.data(), 0);
    const StepResult s = model->optimizer_step(adam, step);
    r.loss.push_back(s.loss);
    r.grad_norm.push_back(s.grad_norm);
  }
  return r;
}

void expect_learns_like(const TrainingRun& fp8, const TrainingRun& bf16, const char* what) {
  SCOPED_TRACE(what);
  for (int i = 0; i < kSteps; ++i)
    ASSERT_TRUE(std::isfinite(fp8.loss[i]) && std::isfinite(fp8.grad_norm[i])) << "step " << i + 1;
  EXPECT_NEAR(fp8.loss[0], bf16.loss[0], 0.01 * bf16.loss[0]);
  const float bf16_drop = bf16.loss.front() - bf16.loss.back(), fp8_drop = fp8.loss.front() - fp8.loss.back();
  EXPECT_GT(bf16_drop, 1.0f) << "the pattern should be learnable";
  EXPECT_GT(fp8_drop, 0.5f * bf16_drop);
  // Single-batch losses at lr 3e-3 move by several percent from step to step: compare the last 5.
  auto tail_mean = [](const std::vector<float>& v) { return (v[kSteps - 1] + v[kSteps - 2] + v[kSteps - 3] +
                                                             v[kSteps - 4] + v[kSteps - 5]) / 5.f; };
  EXPECT_NEAR(tail_mean(fp8.loss), tail_mean(bf16.loss), 0.1 * tail_mean(bf16.loss));
  std::printf("[ fp8 ] %s: loss %.4f -> %.4f (bf16 %.4f -> %.4f)\n", what, fp8.loss.front(), fp8.loss.back(),
              bf16.loss.front(), bf16.loss.back());
}

}  // namespace

TEST(Fp8Model, E4m3ForwardLearnsLikeBf16) {
  const TrainingRun bf16 = train(options(DType::BF16, DType::BF16));
  const TrainingRun fp8 = train(options(DType::E4M3, DType::BF16));
  EXPECT_EQ(bf16.quant_bytes, 0u);
  EXPECT_GT(fp8.quant_bytes, 0u);
  expect_learns_like(fp8, bf16, "e4m3 forward, bf16 backward");
}

TEST(Fp8Model, E5m2GradientsLearnLikeBf16) {
  const TrainingRun bf16 = train(options(DType::BF16, DType::BF16));
  const TrainingRun fp8 = train(options(DType::E4M3, DType::E5M2));
  expect_learns_like(fp8, bf16, "e4m3 forward, e5m2 data gradients");
}

TEST(Fp8Model, RecomputationStaysBitIdentical) {
  const TrainingRun plain = train(options(DType::E4M3, DType::E5M2));
  const TrainingRun recomputed = train(options(DType::E4M3, DType::E5M2, /*recompute_block=*/true));
  for (int i = 0; i < kSteps; ++i) {
    EXPECT_EQ(recomputed.loss[i], plain.loss[i]) << "step " << i + 1;
    EXPECT_EQ(recomputed.grad_norm[i], plain.grad_norm[i]) << "step " << i + 1;
  }
}

TEST(Fp8Model, ShapesThatAreNotMultiplesOf16AreRefused) {
  try {
    make_qwen_model(tiny_qwen(/*intermediate=*/520), options(DType::E4M3, DType::BF16), {});
    ADD_FAILURE() << "an MLP width of 520 was accepted for FP8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 16"), std::string::npos) << e.what();
  }
}
