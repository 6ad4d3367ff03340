// Adam moments in pinned host memory (--offload-opt-m / --offload-opt-v, streamed through device
// staging buffers or, with --use-zero-copy, updated in place; --write-combined memory) against
// moments on the device. A tiny random-init Qwen2 trains 3 optimizer steps of 2 micro-batches on
// fixed random tokens; every offload variant must give BIT-IDENTICAL losses, gradient norms and
// final checkpoint tensors (weights, m, v), for fp32 and bf16 moments. A small chunk size cuts
// parameters at chunk edges, so the per-piece AdamW launches and their stochastic-rounding indices
// are exercised. The allocator must show no device bytes for offloaded moments and only the fixed
// staging buffers as extra device memory.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../unit/test_util.h"
#include "core/allocator.h"
#include "gpu_test_utils.h"
#include "model/config.h"
#include "model/state_streamer.h"
#include "model/param_layout.h"
#include "model/qwen_model.h"
#include "model_test_utils.h"

namespace llmq::test {
namespace {

constexpr int kB = 2, kT = 128, kAccum = 2, kSteps = 3;
constexpr std::int64_t kSmallChunk = 65531;  // odd: cuts parameters at places that are not multiples of 8

struct Placement {
  std::string name;
  bool offload_m = false, offload_v = false, zero_copy = false, write_combined = false;
  std::int64_t chunk = 0;  // 0 = automatic
};

struct RunResult {
  std::vector<StepResult> steps;
  std::map<std::string, Bytes> checkpoint;  // checkpoint tensors after the last step: weights, adam_m, adam_v
  std::size_t device_bytes[static_cast<int>(MemCategory::kCount)] = {};
  std::size_t host_bytes[static_cast<int>(MemCategory::kCount)] = {};  // pinned + write-combined
  std::string state_report;
};

QwenModelOptions model_options(DType moments, const Placement& p) {
  QwenModelOptions o = tiny_qwen2_options(kB, kT, kAccum, /*seed=*/7);
  o.opt_m_dtype = o.opt_v_dtype = moments;
  o.offload_opt_m = p.offload_m;
  o.offload_opt_v = p.offload_v;
  o.use_zero_copy = p.zero_copy;
  o.write_combined = p.write_combined;
  o.offload_chunk_elements = p.chunk;
  return o;
}

// Tokens of micro-batch `micro` of step `step`: the same for every run.
BatchSource batches() { return seeded_batches(TinyQwen2Shape{}.vocab, kB * kT); }

// Learning rate large enough that bf16 weights and moments change every step.
AdamWSettings adamw_settings() { return adamw_at(1e-3f); }

void record_state(Model& model, RunResult& r) {
  const Allocator& alloc = model.allocator();
  for (int c = 0; c < static_cast<int>(MemCategory::kCount); ++c) {
    const auto cat = static_cast<MemCategory>(c);
    r.device_bytes[c] = alloc.in_use(cat, MemKind::Device);
    r.host_bytes[c] = alloc.in_use(cat, MemKind::Pinned) + alloc.in_use(cat, MemKind::WriteCombined);
  }
  r.state_report = alloc.state_report();
  r.checkpoint = checkpoint_tensors(model);
}

// Trains steps [first_step, kSteps] (optionally after loading a checkpoint).
RunResult train(DType moments, const Placement& p, int first_step = 1, const std::filesystem::path& resume = {}) {
  std::unique_ptr<Model> model = make_tiny_qwen2(model_options(moments, p));
  if (!resume.empty()) model->load_checkpoint(resume);
  RunResult r;
  r.steps = train_steps(*model, adamw_settings(), kAccum, first_step, kSteps, batches());
  record_state(*model, r);
  return r;
}

void expect_identical(const RunResult& ref, const RunResult& run) {
  expect_same_steps(run.steps, ref.steps);
  expect_same_bytes(run.checkpoint, ref.checkpoint, "checkpoint tensor");
}

// Device bytes the allocator charges for a block (it rounds device blocks up to 512 bytes).
std::size_t device_block_bytes(std::size_t bytes) { return (bytes + 511) / 512 * 512; }

constexpr int idx(MemCategory c) { return static_cast<int>(c); }

// Checks where the moments live and that streaming adds exactly its staging buffers.
void expect_placement(const RunResult& ref, const RunResult& run, const Placement& p, DType moments) {
  const std::int64_t total = ParamLayout(tiny_qwen2_config()).total_elements();
  const std::size_t moment_bytes = static_cast<std::size_t>(total) * dtype_size(moments);
  EXPECT_EQ(ref.device_bytes[idx(MemCategory::AdamM)], device_block_bytes(moment_bytes));
  for (auto [cat, offloaded] : {std::pair{MemCategory::AdamM, p.offload_m}, std::pair{MemCategory::AdamV, p.offload_v}}) {
    EXPECT_EQ(run.device_bytes[idx(cat)], offloaded ? 0 : device_block_bytes(moment_bytes)) << category_name(cat);
    EXPECT_EQ(run.host_bytes[idx(cat)], offloaded ? moment_bytes : 0) << category_name(cat);
  }
  const bool streamed = (p.offload_m || p.offload_v) && !p.zero_copy;
  const std::int64_t chunk = std::min(p.chunk > 0 ? p.chunk : StateStreamer::kDefaultChunkElements, total);
  const std::size_t staging_per_moment =
      2 * device_block_bytes(static_cast<std::size_t>(chunk) * dtype_size(moments));
  const std::size_t staging = streamed ? staging_per_moment * ((p.offload_m ? 1 : 0) + (p.offload_v ? 1 : 0)) : 0;
  EXPECT_EQ(run.device_bytes[idx(MemCategory::Workspace)], ref.device_bytes[idx(MemCategory::Workspace)] + staging);
  if (p.offload_m || p.offload_v) EXPECT_NE(run.state_report.find("pinned host"), std::string::npos) << run.state_report;
}

std::vector<Placement> placements() {
  return {
      {"offload m, streamed", true, false, false, false, kSmallChunk},
      {"offload v, streamed", false, true, false, false, kSmallChunk},
      {"offload m+v, streamed", true, true, false, false, kSmallChunk},
      {"offload m+v, streamed, automatic chunk", true, true, false, false, 0},
      {"offload m+v, zero-copy", true, true, true, false, 0},
      {"offload m+v, streamed, write-combined", true, true, false, true, kSmallChunk},
      {"offload m+v, zero-copy, write-combined", true, true, true, true, 0},
      {"zero-copy without offload (no effect)", false, false, true, false, 0},
  };
}

class OffloadedMoments : public ::testing::TestWithParam<DType> {};

TEST_P(OffloadedMoments, StepsAreBitIdenticalToMomentsOnDevice) {
  const DType moments = GetParam();
  const RunResult ref = train(moments, Placement{"on device"});
  for (const StepResult& s : ref.steps) {
    ASSERT_TRUE(std::isfinite(s.loss) && std::isfinite(s.grad_norm));
    ASSERT_GT(s.grad_norm, 0.f);
  }
  // The comparisons below are not vacuous: the steps filled the moments.
  for (const char* name : {"adam_m", "adam_v"}) {
    const Bytes& moment = ref.checkpoint.at(name);
    ASSERT_GT(differing_bytes(moment, Bytes(moment.size())), moment.size() / 4) << name;
  }
  {
    SCOPED_TRACE("on device, second run (the model itself must be deterministic)");
    expect_identical(ref, train(moments, Placement{"on device"}));
  }
  for (const Placement& p : placements()) {
    SCOPED_TRACE(p.name);
    const RunResult run = train(moments, p);
    expect_identical(ref, run);
    expect_placement(ref, run, p, moments);
  }
}

// A checkpoint written with moments on the device resumes with offloaded (streamed) moments, and
// one written with offloaded moments resumes on the device, both bit-identically.
TEST_P(OffloadedMoments, CheckpointsMoveBetweenDeviceAndHostMoments) {
  const DType moments = GetParam();
  const Placement device{"on device"};
  const Placement offloaded{"offload m+v, streamed", true, true, false, false, kSmallChunk};
  const RunResult straight = train(moments, device);
  for (const auto& [first, second] : {std::pair{device, offloaded}, std::pair{offloaded, device}}) {
    SCOPED_TRACE(first.name + " -> " + second.name);
    TempDir ckpt;
    {
      std::unique_ptr<Model> model = make_tiny_qwen2(model_options(moments, first));
      train_steps(*model, adamw_settings(), kAccum, 1, kSteps - 1, batches());
      model->save_checkpoint(ckpt.path());
    }
    const RunResult resumed = train(moments, second, kSteps, ckpt.path());
    ASSERT_EQ(resumed.steps.size(), 1u);
    EXPECT_EQ(resumed.steps[0].loss, straight.steps.back().loss);
    EXPECT_EQ(resumed.steps[0].grad_norm, straight.steps.back().grad_norm);
    expect_same_bytes(resumed.checkpoint, straight.checkpoint, "checkpoint tensor");
  }
}

INSTANTIATE_TEST_SUITE_P(MomentDtypes, OffloadedMoments, ::testing::Values(DType::FP32, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return info.param == DType::FP32 ? std::string("fp32") : std::string("bf16");
                         });

TEST(OffloadedMomentsOptions, NegativeChunkIsRefused) {
  Placement p{"bad chunk", true, true, false, false, -5};
  expect_error([&] { make_tiny_qwen2(model_options(DType::FP32, p)); }, "offload chunk");
}

}  // namespace
}  // namespace llmq::test
