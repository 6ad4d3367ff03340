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
#include "model_test_utils.h"

using namespace llmq;

namespace {

constexpr int kB = 4, kT = 128, kSteps = 30;

test::TinyQwen2Shape tiny_shape(int mlp_width = 512) { return {.vocab = 512, .mlp_width = mlp_width}; }

QwenModelOptions options(DType matmul, DType gradient, bool recompute_block = false) {
  QwenModelOptions o = test::tiny_qwen2_options(kB, kT, /*accum=*/1, /*seed=*/7);
  o.matmul_dtype = matmul;
  o.gradient_dtype = gradient;
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
  std::vector<StepResult> steps;
  std::size_t quant_bytes = 0;
};

TrainingRun train(const QwenModelOptions& o) {
  std::unique_ptr<Model> model = test::make_tiny_qwen2(o, tiny_shape());
  TrainingRun r;
  r.quant_bytes = model->allocator().in_use(MemCategory::Quants, MemKind::Device);
  auto batch = [](int step, int, auto& inputs, auto& targets) { pattern_batch(step, inputs, targets); };
  r.steps = test::train_steps(*model, test::adamw_at(3e-3f), /*accum=*/1, 1, kSteps, batch);
  return r;
}

void expect_learns_like(const TrainingRun& fp8, const TrainingRun& bf16, const char* what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(fp8.steps.size(), static_cast<std::size_t>(kSteps));
  ASSERT_EQ(bf16.steps.size(), static_cast<std::size_t>(kSteps));
  for (int i = 0; i < kSteps; ++i)
    ASSERT_TRUE(std::isfinite(fp8.steps[i].loss) && std::isfinite(fp8.steps[i].grad_norm)) << "step " << i + 1;
  const float fp8_first = fp8.steps.front().loss, fp8_last = fp8.steps.back().loss;
  const float bf16_first = bf16.steps.front().loss, bf16_last = bf16.steps.back().loss;
  EXPECT_NEAR(fp8_first, bf16_first, 0.01 * bf16_first);
  const float bf16_drop = bf16_first - bf16_last, fp8_drop = fp8_first - fp8_last;
  EXPECT_GT(bf16_drop, 1.0f) << "the pattern should be learnable";
  EXPECT_GT(fp8_drop, 0.5f * bf16_drop);
  // Single-batch losses at lr 3e-3 move by several percent from step to step: compare the last 5.
  auto tail_mean = [](const std::vector<StepResult>& v) {
    return (v[kSteps - 1].loss + v[kSteps - 2].loss + v[kSteps - 3].loss + v[kSteps - 4].loss + v[kSteps - 5].loss) /
           5.f;
  };
  EXPECT_NEAR(tail_mean(fp8.steps), tail_mean(bf16.steps), 0.1 * tail_mean(bf16.steps));
  std::printf("[ fp8 ] %s: loss %.4f -> %.4f (bf16 %.4f -> %.4f)\n", what, fp8_first, fp8_last, bf16_first, bf16_last);
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
  test::expect_same_steps(recomputed.steps, plain.steps);
}

TEST(Fp8Model, ShapesThatAreNotMultiplesOf16AreRefused) {
  try {
    test::make_tiny_qwen2(options(DType::E4M3, DType::BF16), tiny_shape(/*mlp_width=*/520));
    ADD_FAILURE() << "an MLP width of 520 was accepted for FP8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 16"), std::string::npos) << e.what();
  }
}
