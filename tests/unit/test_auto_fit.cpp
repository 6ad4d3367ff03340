// --auto-fit's CPU parts: the cost model's ordering of candidates and the planning backend that
// sizes a configuration without memory. (Planning a whole model and the choices for 7B / 3B / 14B
// are measured on the GPU machine: gpu_check.sh stage memory.)
#include <gtest/gtest.h>

#include <cstdint>
#include <set>

#include "core/allocator.h"
#include "core/planning_backend.h"
#include "model/auto_fit.h"
#include "model/config.h"

namespace llmq {
namespace {

constexpr double kH100Bf16 = 989e12;

QwenModelOptions options_7b(int batch, int accum) {
  QwenModelOptions o;
  o.batch_size = batch;
  o.seq_len = 1024;
  o.grad_accumulation = accum;
  o.matmul_dtype = DType::E4M3;
  o.gradient_dtype = DType::E5M2;
  return o;
}

ModelConfig qwen_7b() {
  auto preset = find_preset("Qwen2.5-7B");
  EXPECT_TRUE(preset.has_value());
  return *preset;
}

TEST(AutoFitCost, RecomputationAndOffloadingCostTime) {
  const ModelConfig cfg = qwen_7b();
  const QwenModelOptions base = options_7b(4, 8);
  const double plain = cost_seconds(cfg, base, kH100Bf16);
  EXPECT_GT(plain, 0);
  QwenModelOptions o = base;
  o.recompute.swiglu = true;
  const double swiglu = cost_seconds(cfg, o, kH100Bf16);
  o.recompute = {.block = true};
  const double block = cost_seconds(cfg, o, kH100Bf16);
  EXPECT_GT(swiglu, plain);
  EXPECT_GT(block, swiglu);  // block recomputes the GEMMs too
  o = base;
  o.offload_opt_v = true;
  const double offload_v = cost_seconds(cfg, o, kH100Bf16);
  o.offload_opt_m = true;
  const double offload_mv = cost_seconds(cfg, o, kH100Bf16);
  EXPECT_GT(offload_v, plain);
  EXPECT_GT(offload_mv, offload_v);
  // Optimizer-only costs shrink per token with more accumulation.
  QwenModelOptions long_step = o;
  long_step.grad_accumulation = 64;
  EXPECT_LT(cost_seconds(cfg, long_step, kH100Bf16) / 64, offload_mv / 8);
}

TEST(AutoFitCost, BlockWeightsStreamOnlyWhereBf16GemmsReadThem) {
  const ModelConfig cfg = qwen_7b();
  QwenModelOptions fp8 = options_7b(4, 1);
  QwenModelOptions bf16 = fp8;
  bf16.matmul_dtype = bf16.gradient_dtype = DType::BF16;
  auto extra = [&](QwenModelOptions o) {
    const double without = cost_seconds(cfg, o, kH100Bf16);
    o.offload_master = true;
    return cost_seconds(cfg, o, kH100Bf16) - without;
  };
  // bf16 GEMMs read the streamed bf16 weights twice per micro-step; FP8 GEMMs read the FP8 copies.
  EXPECT_GT(extra(bf16), extra(fp8));
  EXPECT_GT(extra(fp8), 0);  // the optimizer and the re-quantization still move them
}

TEST(AutoFitCandidates, AllCombinationsSortedByEstimate) {
  const ModelConfig cfg = qwen_7b();
  const std::vector<FitCandidate> c = fit_candidates(cfg, options_7b(4, 8), kH100Bf16);
  ASSERT_EQ(c.size(), 288u);  // 6 recompute levels x 12 offload sets x residual x quants
  std::set<std::string> flags;
  for (std::size_t i = 0; i < c.size(); ++i) {
    flags.insert(c[i].flags);
    EXPECT_FALSE(c[i].planned);
    if (i) EXPECT_LE(c[i - 1].est_step_seconds, c[i].est_step_seconds);
    EXPECT_EQ(c[i].opts.batch_size, 4);
    EXPECT_FALSE(c[i].opts.use_zero_copy);
  }
  EXPECT_EQ(flags.size(), 288u);  // every candidate is a different flag set
  EXPECT_EQ(c.front().flags, "");  // nothing recomputed or offloaded is the fastest
  EXPECT_EQ(c.back().flags,
            "--recompute-block --offload-master --offload-gradients --offload-opt-m --offload-opt-v "
            "--offload-residual --offload-quants");
}

TEST(AutoFitCandidates, QuantsAreOffloadedOnlyWithFp8) {
  const ModelConfig cfg = qwen_7b();
  QwenModelOptions bf16 = options_7b(4, 8);
  bf16.matmul_dtype = bf16.gradient_dtype = DType::BF16;
  const std::vector<FitCandidate> c = fit_candidates(cfg, bf16, kH100Bf16);
  EXPECT_EQ(c.size(), 144u);
  for (const FitCandidate& x : c) EXPECT_FALSE(x.opts.offload_quants) << x.flags;
}

TEST(AutoFitCost, ResidualAndQuantOffloadsCostPcieTime) {
  const ModelConfig cfg = qwen_7b();
  QwenModelOptions o = options_7b(4, 8);
  o.offload_master = o.offload_gradients = true;  // PCIe-bound already: every extra byte shows
  const double base = cost_seconds(cfg, o, kH100Bf16);
  QwenModelOptions residual = o, quants = o;
  residual.offload_residual = true;
  quants.offload_quants = true;
  EXPECT_GT(cost_seconds(cfg, residual, kH100Bf16), base);
  EXPECT_GT(cost_seconds(cfg, quants, kH100Bf16), base);
}

TEST(PlanningBackend, HandsOutDistinctAlignedAddressesAndCountsEverything) {
  Allocator alloc(std::nullopt, make_planning_backend(std::size_t{16} << 30));
  std::set<void*> seen;
  for (int i = 1; i <= 20; ++i) {
    void* p = alloc.allocate_bytes("block", static_cast<std::size_t>(i) * 1000003, MemCategory::Weights);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 256, 0u);
    EXPECT_TRUE(seen.insert(p).second);
  }
  alloc.allocate_bytes("host", std::size_t{40} << 30, MemCategory::AdamM, MemKind::Pinned);  // 40 GiB, never backed
  EXPECT_EQ(alloc.in_use(MemCategory::AdamM, MemKind::Pinned), std::size_t{40} << 30);
  const std::size_t peak = alloc.device_peak();
  EXPECT_GE(peak, std::size_t{210} * 1000003);
  alloc.release(*seen.begin());
  EXPECT_EQ(alloc.device_peak(), peak);
  EXPECT_LT(alloc.device_in_use(), peak);
}

}  // namespace
}  // namespace llmq
