// Block weights and gradients in pinned host memory (--offload-master / --offload-gradients),
// reached one layer at a time through two device slots, against everything on the device; the
// same for the residual stream (--offload-residual) and the FP8 weight copies (--offload-quants).
// A tiny random-init Qwen2 trains 3 optimizer steps of 3 micro-batches (so offloaded gradients
// are zeroed, then accumulated through host memory twice); every placement must give
// BIT-IDENTICAL losses, gradient norms, evaluation loss, checkpoint tensors and exported files,
// in fp32 and bf16, tied and untied, with recomputation and with FP8 matmuls (where the
// offloaded run transposes the FP8 weights per use instead of keeping a transposed copy).
// The allocator must show the block matrices in host memory and only two layer slots of them
// on the device.
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../unit/test_util.h"
#include "core/allocator.h"
#include "gpu_test_utils.h"
#include "model/config.h"
#include "model/param_layout.h"
#include "model/qwen_model.h"
#include "model_test_utils.h"

namespace llmq::test {
namespace {

constexpr int kB = 2, kT = 128, kAccum = 3, kSteps = 3;

struct Placement {
  std::string name;
  bool master = false, gradients = false, moments = false, zero_copy = false;
  bool residual = false, quants = false;
};

struct Variant {
  std::string name;
  DType model = DType::BF16;
  bool tied = false;
  bool recompute_block = false;
  DType matmul = DType::BF16, gradient = DType::BF16;
};

struct RunResult {
  std::vector<StepResult> steps;
  float eval_loss = 0.f;
  std::map<std::string, Bytes> checkpoint, exported;
  std::size_t device_bytes[static_cast<int>(MemCategory::kCount)] = {};
  std::size_t host_bytes[static_cast<int>(MemCategory::kCount)] = {};
};

constexpr int idx(MemCategory c) { return static_cast<int>(c); }

QwenModelOptions model_options(const Variant& v, const Placement& p) {
  QwenModelOptions o = tiny_qwen2_options(kB, kT, kAccum, /*seed=*/11);
  o.model_dtype = v.model;
  o.matmul_dtype = v.matmul;
  o.gradient_dtype = v.gradient;
  o.recompute.block = v.recompute_block;
  o.offload_master = p.master;
  o.offload_gradients = p.gradients;
  o.offload_opt_m = o.offload_opt_v = p.moments;
  o.use_zero_copy = p.zero_copy;
  o.offload_residual = p.residual;
  o.offload_quants = p.quants && v.matmul == DType::E4M3;  // there are no FP8 copies otherwise
  o.offload_chunk_elements = 40009;  // odd: chunks cut parameters
  return o;
}

TinyQwen2Shape shape(const Variant& v) {
  TinyQwen2Shape s;
  s.tied = v.tied;
  return s;
}

RunResult train(const Variant& v, const Placement& p) {
  std::unique_ptr<Model> model = make_tiny_qwen2(model_options(v, p), shape(v));
  RunResult r;
  r.steps = train_steps(*model, adamw_at(1e-3f), kAccum, 1, kSteps, seeded_batches(shape(v).vocab, kB * kT));
  std::vector<std::int32_t> inputs, targets;
  seeded_batch(99, 0, shape(v).vocab, kB * kT, inputs, targets);
  r.eval_loss = model->evaluate(inputs.data(), targets.data());
  const Allocator& alloc = model->allocator();
  for (int c = 0; c < static_cast<int>(MemCategory::kCount); ++c) {
    const auto cat = static_cast<MemCategory>(c);
    r.device_bytes[c] = alloc.in_use(cat, MemKind::Device);
    r.host_bytes[c] = alloc.in_use(cat, MemKind::Pinned) + alloc.in_use(cat, MemKind::WriteCombined);
  }
  r.checkpoint = checkpoint_tensors(*model);
  r.exported = exported_files(*model);
  return r;
}

void expect_identical(const RunResult& ref, const RunResult& run) {
  expect_same_steps(run.steps, ref.steps);
  EXPECT_EQ(run.eval_loss, ref.eval_loss) << "evaluation loss";
  expect_same_bytes(run.checkpoint, ref.checkpoint, "checkpoint tensor");
  expect_same_bytes(run.exported, ref.exported, "exported file");
}

// Elements of the block matrices (padded as in the layout) and of the largest layer's matrices.
struct BlockSizes {
  std::int64_t total = 0, largest_layer = 0;
};
BlockSizes block_sizes(const Variant& v) {
  const ParamLayout layout(tiny_qwen2_config(shape(v)));
  BlockSizes s;
  for (int l = 0; l < layout.num_layers(); ++l) {
    std::int64_t layer = 0;
    for (int id : layout.layer(l).matrices()) layer += layout.padded_numel(id);
    s.total += layer;
    s.largest_layer = std::max(s.largest_layer, layer);
  }
  return s;
}

// Device bytes the allocator charges for a block (it rounds device blocks up to 512 bytes).
std::size_t device_block_bytes(std::size_t bytes) { return (bytes + 511) / 512 * 512; }

void expect_placement(const RunResult& ref, const RunResult& run, const Variant& v, const Placement& p) {
  const BlockSizes blocks = block_sizes(v);
  const std::size_t elem = dtype_size(v.model);
  for (auto [cat, offloaded] : {std::pair{MemCategory::Weights, p.master}, std::pair{MemCategory::Gradients, p.gradients}}) {
    if (!offloaded) {
      EXPECT_EQ(run.device_bytes[idx(cat)], ref.device_bytes[idx(cat)]) << category_name(cat);
      EXPECT_EQ(run.host_bytes[idx(cat)], 0u) << category_name(cat);
      continue;
    }
    EXPECT_EQ(run.host_bytes[idx(cat)], static_cast<std::size_t>(blocks.total) * elem) << category_name(cat);
    // Resident part: everything but the block matrices; plus two slots of the largest layer.
    const std::size_t slots = 2 * device_block_bytes(static_cast<std::size_t>(blocks.largest_layer) * elem);
    EXPECT_LT(run.device_bytes[idx(cat)], ref.device_bytes[idx(cat)] - blocks.total * elem + slots + 1024)
        << category_name(cat);
    EXPECT_GE(run.device_bytes[idx(cat)] + blocks.total * elem, ref.device_bytes[idx(cat)] + slots - 1024)
        << category_name(cat);
  }
}

// --offload-residual: residual[0..L] in host memory, two of them on the device.
void expect_residual_placement(const RunResult& ref, const RunResult& run, const Variant& v, const Placement& p) {
  const ModelConfig cfg = tiny_qwen2_config(shape(v));
  const std::size_t residual = static_cast<std::size_t>(kB) * kT * cfg.hidden_size * dtype_size(v.model);
  const std::size_t count = cfg.num_layers + 1;
  const int act = idx(MemCategory::Activations);
  if (!p.residual) {
    EXPECT_EQ(run.device_bytes[act], ref.device_bytes[act]);
    EXPECT_EQ(run.host_bytes[act], 0u);
    return;
  }
  EXPECT_EQ(run.host_bytes[act], count * residual);
  EXPECT_EQ(run.device_bytes[act] + (count - 2) * device_block_bytes(residual), ref.device_bytes[act]);
}

// --offload-quants: one e4m3 copy of every block matrix (16-byte aligned) in host memory.
void expect_quant_placement(const RunResult& ref, const RunResult& run, const Variant& v, const Placement& p) {
  const int quants = idx(MemCategory::Quants);
  if (!p.quants || v.matmul != DType::E4M3) {
    EXPECT_EQ(run.host_bytes[quants], 0u);
    return;
  }
  const ParamLayout layout(tiny_qwen2_config(shape(v)));
  std::size_t fp8_bytes = 0;
  for (int l = 0; l < layout.num_layers(); ++l)
    for (int id : layout.layer(l).matrices()) fp8_bytes += (static_cast<std::size_t>(layout[id].numel()) + 15) / 16 * 16;
  EXPECT_EQ(run.host_bytes[quants], fp8_bytes);
  EXPECT_LT(run.device_bytes[quants], ref.device_bytes[quants]);
}

std::vector<Placement> placements() {
  return {
      {"offload master", true, false, false, false},
      {"offload gradients", false, true, false, false},
      {"offload master + gradients", true, true, false, false},
      {"offload everything, streamed", true, true, true, false},
      {"offload everything, zero-copy", true, true, true, true},
      {"offload residual", false, false, false, false, true, false},
      {"offload quants", false, false, false, false, false, true},
      {"offload everything + residual + quants", true, true, true, false, true, true},
  };
}

class OffloadedLayers : public ::testing::TestWithParam<Variant> {};

TEST_P(OffloadedLayers, StepsAreBitIdenticalToEverythingOnDevice) {
  const Variant& v = GetParam();
  const RunResult ref = train(v, Placement{"on device"});
  for (const StepResult& s : ref.steps) {
    ASSERT_TRUE(std::isfinite(s.loss) && std::isfinite(s.grad_norm));
    ASSERT_GT(s.grad_norm, 0.f);
  }
  ASSERT_TRUE(std::isfinite(ref.eval_loss));
  for (const Placement& p : placements()) {
    SCOPED_TRACE(v.name + ", " + p.name);
    const RunResult run = train(v, p);
    expect_identical(ref, run);
    expect_placement(ref, run, v, p);
    expect_residual_placement(ref, run, v, p);
    expect_quant_placement(ref, run, v, p);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, OffloadedLayers,
    ::testing::Values(Variant{"bf16_untied"}, Variant{"bf16_tied", DType::BF16, true},
                      Variant{"fp32_untied", DType::FP32}, Variant{"bf16_recompute_block", DType::BF16, false, true},
                      Variant{"fp8_e4m3_e5m2", DType::BF16, false, false, DType::E4M3, DType::E5M2},
                      Variant{"fp8_e4m3_bf16_backward", DType::BF16, false, false, DType::E4M3, DType::BF16},
                      Variant{"fp8_recompute_block", DType::BF16, true, true, DType::E4M3, DType::E5M2}),
    [](const ::testing::TestParamInfo<Variant>& info) { return info.param.name; });

// A checkpoint written with everything offloaded resumes on the device, and the other way round.
TEST(OffloadedLayersCheckpoint, ResumesAcrossPlacements) {
  const Variant v{"bf16"};
  const Placement device{"on device"}, offloaded{"offload master + gradients", true, true, false, false};
  const RunResult straight = train(v, device);
  for (const auto& [first, second] : {std::pair{device, offloaded}, std::pair{offloaded, device}}) {
    SCOPED_TRACE(first.name + " -> " + second.name);
    TempDir ckpt;
    {
      std::unique_ptr<Model> model = make_tiny_qwen2(model_options(v, first), shape(v));
      train_steps(*model, adamw_at(1e-3f), kAccum, 1, kSteps - 1, seeded_batches(shape(v).vocab, kB * kT));
      model->save_checkpoint(ckpt.path());
    }
    std::unique_ptr<Model> model = make_tiny_qwen2(model_options(v, second), shape(v));
    model->load_checkpoint(ckpt.path());
    const std::vector<StepResult> last =
        train_steps(*model, adamw_at(1e-3f), kAccum, kSteps, kSteps, seeded_batches(shape(v).vocab, kB * kT));
    ASSERT_EQ(last.size(), 1u);
    EXPECT_EQ(last[0].loss, straight.steps.back().loss);
    EXPECT_EQ(last[0].grad_norm, straight.steps.back().grad_norm);
    expect_same_bytes(checkpoint_tensors(*model), straight.checkpoint, "checkpoint tensor");
  }
}

}  // namespace
}  // namespace llmq::test
