// --autotune-matmuls and checkpoints: the matmul algorithms chosen by timing go into the checkpoint
// (matmul_algorithms.json), and a model that loads it replays them, so a resumed run is
// BIT-IDENTICAL to the uninterrupted one although each fresh run may time its way to other
// algorithms. A tiny random-init Qwen2 (bf16 and FP8 GEMMs) trains 3 optimizer steps of 2
// micro-batches; the resumed model loads the checkpoint of step 2 and trains step 3.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../unit/test_util.h"
#include "gpu_test_utils.h"
#include "model/qwen_model.h"
#include "model_test_utils.h"

namespace llmq::test {
namespace {

constexpr int kB = 2, kT = 128, kAccum = 2, kSteps = 3;

QwenModelOptions autotuned_options(DType matmul) {
  QwenModelOptions o = tiny_qwen2_options(kB, kT, kAccum, /*seed=*/11);
  o.matmul_dtype = matmul;
  if (matmul == DType::E4M3) o.gradient_dtype = DType::E5M2;
  o.autotune_matmuls = true;
  return o;
}

BatchSource batches() { return seeded_batches(TinyQwen2Shape{}.vocab, kB * kT); }

class AutotunedResume : public ::testing::TestWithParam<DType> {};

TEST_P(AutotunedResume, ReplaysTheCheckpointsAlgorithmsBitForBit) {
  const QwenModelOptions opts = autotuned_options(GetParam());
  TempDir ckpt;
  std::vector<StepResult> straight;
  std::map<std::string, Bytes> straight_state;
  {
    std::unique_ptr<Model> model = make_tiny_qwen2(opts);
    straight = train_steps(*model, adamw_at(1e-3f), kAccum, 1, kSteps - 1, batches());
    model->save_checkpoint(ckpt.path());
    const auto last = train_steps(*model, adamw_at(1e-3f), kAccum, kSteps, kSteps, batches());
    straight.insert(straight.end(), last.begin(), last.end());
    straight_state = checkpoint_tensors(*model);
  }
  const std::filesystem::path file = ckpt.path() / "matmul_algorithms.json";
  ASSERT_TRUE(std::filesystem::exists(file));
  const nlohmann::json saved = nlohmann::json::parse(std::ifstream(file));
  EXPECT_FALSE(saved.at("environment").get<std::string>().empty());
  EXPECT_GE(saved.at("choices").size(), 7u);  // at least the forward and backward GEMMs of a block and the LM head

  std::unique_ptr<Model> resumed = make_tiny_qwen2(opts);
  resumed->load_checkpoint(ckpt.path());
  const auto last = train_steps(*resumed, adamw_at(1e-3f), kAccum, kSteps, kSteps, batches());
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].loss, straight.back().loss);
  EXPECT_EQ(last[0].grad_norm, straight.back().grad_norm);
  expect_same_bytes(checkpoint_tensors(*resumed), straight_state, "checkpoint tensor");
}

// A checkpoint whose algorithm file comes from another GPU or library (or is unreadable) still
// loads: the run chooses again and says so.
TEST(AutotunedResumeFile, ForeignOrBrokenFileIsNotFatal) {
  const QwenModelOptions opts = autotuned_options(DType::BF16);
  TempDir ckpt;
  {
    std::unique_ptr<Model> model = make_tiny_qwen2(opts);
    train_steps(*model, adamw_at(1e-3f), kAccum, 1, 1, batches());
    model->save_checkpoint(ckpt.path());
  }
  const std::filesystem::path file = ckpt.path() / "matmul_algorithms.json";
  for (const std::string text : {std::string(R"({"environment": "another GPU", "choices": {}})"),
                                 std::string("{ not json")}) {
    std::ofstream(file) << text;
    std::unique_ptr<Model> model = make_tiny_qwen2(opts);
    model->load_checkpoint(ckpt.path());
    const auto steps = train_steps(*model, adamw_at(1e-3f), kAccum, 2, 2, batches());
    ASSERT_EQ(steps.size(), 1u);
    EXPECT_TRUE(std::isfinite(steps[0].loss)) << text;
  }
}

INSTANTIATE_TEST_SUITE_P(MatmulDtypes, AutotunedResume, ::testing::Values(DType::BF16, DType::E4M3),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return info.param == DType::BF16 ? std::string("bf16") : std::string("fp8");
                         });

}  // namespace
}  // namespace llmq::test
