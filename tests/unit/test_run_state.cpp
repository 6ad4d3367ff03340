// RunState's activation plan: bytes per recompute flag set against the formula written out below,
// monotone savings, buffers shared across layers exactly where the plan recomputes, and the
// --memory-limit budget seeing the savings. A fake MemoryBackend (host malloc) stands in for the GPU.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "model/run_state.h"

using namespace llmq;

namespace {

class FakeDevice final : public MemoryBackend {
 public:
  void* allocate(std::size_t bytes, MemKind) override {
    void* p = std::malloc(bytes);
    sizes_[p] = bytes;
    return p;
  }
  void release(void* ptr, MemKind) override {
    sizes_.erase(ptr);
    std::free(ptr);
  }
  std::size_t device_total_bytes() const override { return std::size_t{1} << 34; }

 private:
  std::map<void*, std::size_t> sizes_;
};

// A small Qwen2-shaped model. Every tensor of the plan is a multiple of the allocator's 512-byte
// accounting granule at these sizes (N = 128 rows), so the formula needs no rounding.
ModelConfig small_config() {
  ModelConfig c;
  c.name = "run-state-test";
  c.hidden_size = 64;         // C
  c.intermediate_size = 128;  // D
  c.num_layers = 3;           // L
  c.num_query_heads = 4;      // Hq
  c.num_kv_heads = 2;         // Hkv
  c.head_size = 16;           // Hs
  c.vocab_size = 256;         // V
  c.qkv_bias = true;
  return c;
}
constexpr int kB = 2, kT = 64;

RecomputeOptions flags(const std::string& which) {
  RecomputeOptions r;
  if (which == "swiglu") r.swiglu = true;
  if (which == "norm") r.norm = true;
  if (which == "ffn") r.ffn = true;
  if (which == "qkv") r.qkv = true;
  if (which == "att") r.att = true;
  if (which == "block") r.block = true;
  if (which == "att+ffn+norm") r.att = r.ffn = r.norm = true;
  return r;
}
const std::vector<std::string> kFlagSets = {"none", "swiglu", "norm", "ffn", "qkv", "att", "att+ffn+norm", "block"};

// The activation plan in bytes (e = bytes per element, n = B*T rows):
//   per layer, L copies, or 1 when recomputed or (FP8 gradients) kept as x^T e4m3:
//     ln1_out n C e (norm; kept.ln1), ln2_out n C e (norm; kept.ln2), qkv n (Hq+2Hkv) Hs e (qkv),
//     att n Hq Hs e + lse B Hq T 4 (att), residual_mid n C e (block), mlp_up 2 n D e (ffn),
//     swiglu_out n D e (swiglu; kept.swiglu)
//   always per layer: residual[0..L] (L+1) n C e, ln1_rstd + ln2_rstd 2 L n 4
//   fixed: final_out n C e + final_rstd n 4, proj_out n C e, logits rows V e, losses n 4,
//          gradients d_residual + d_ln 2 n C e, d_att n Hq Hs e, d_qkv n (Hq+2Hkv) Hs e,
//          d_swiglu n D e, d_mlp_up 2 n D e (not with FP8 gradients)
std::size_t expected_activation_bytes(const ModelConfig& c, std::size_t e, int lmhead_rows, RecomputeOptions rc,
                                      KeptFp8Inputs kept = {}, bool mlp_up_gradient = true) {
  rc = rc.resolved();
  const std::size_t n = kB * kT, C = c.hidden_size, D = c.intermediate_size, L = c.num_layers, V = c.vocab_size;
  const std::size_t qkv = static_cast<std::size_t>(c.num_query_heads + 2 * c.num_kv_heads) * c.head_size;
  const std::size_t q = static_cast<std::size_t>(c.num_query_heads) * c.head_size;
  const std::size_t lse = static_cast<std::size_t>(kB) * c.num_query_heads * kT * 4;
  auto copies = [&](bool shared) { return shared ? std::size_t{1} : L; };
  std::size_t bytes = (L + 1) * n * C * e + 2 * L * n * 4;
  bytes += (copies(rc.norm || kept.ln1) + copies(rc.norm || kept.ln2)) * n * C * e;
  bytes += copies(rc.qkv) * n * qkv * e;
  bytes += copies(rc.att) * (n * q * e + lse);
  bytes += copies(rc.block) * n * C * e;
  bytes += copies(rc.ffn) * n * 2 * D * e;
  bytes += copies(rc.swiglu || kept.swiglu) * n * D * e;
  bytes += n * C * e + n * 4 + n * C * e + static_cast<std::size_t>(lmhead_rows) * V * e + n * 4;
  bytes += 2 * n * C * e + n * q * e + n * qkv * e + n * D * e + (mlp_up_gradient ? 2 * n * D * e : 0);
  return bytes;
}

// The kept x^T e4m3 buffers (Fp8Linear, category Quants): N x in_f bytes per layer and kept input.
std::size_t kept_transpose_bytes(const ModelConfig& c, const KeptFp8Inputs& kept) {
  const std::size_t n = kB * kT, C = c.hidden_size, D = c.intermediate_size;
  const std::size_t q = static_cast<std::size_t>(c.num_query_heads) * c.head_size;
  return c.num_layers * n * (kept.ln1 * C + kept.att * q + kept.ln2 * C + kept.swiglu * D);
}

std::size_t planned_activation_bytes(const RecomputeOptions& rc, DType dtype = DType::BF16, int lmhead_chunks = 1) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>());
  RunState run(alloc, small_config(), dtype, kB, kT, lmhead_chunks, rc);
  return alloc.in_use(MemCategory::Activations, MemKind::Device);
}

// Distinct buffers among all layers' entries of one field.
std::size_t distinct(const RunState& run, Tensor LayerActivations::*field) {
  std::set<void*> ptrs;
  for (const LayerActivations& a : run.layers) ptrs.insert((a.*field).data);
  return ptrs.size();
}

// Bytes per flag set (kFlagSets): each flag saves memory, and a flag that recomputes more saves more.
void expect_each_flag_saves(std::map<std::string, std::size_t>& bytes) {
  EXPECT_LT(bytes["block"], bytes["att+ffn+norm"]);  // block also drops residual_mid
  EXPECT_LT(bytes["att+ffn+norm"], bytes["att"]);
  EXPECT_LT(bytes["att"], bytes["qkv"]);
  EXPECT_LT(bytes["qkv"], bytes["none"]);
  EXPECT_LT(bytes["ffn"], bytes["swiglu"]);
  EXPECT_LT(bytes["swiglu"], bytes["none"]);
  EXPECT_LT(bytes["norm"], bytes["none"]);
}

}  // namespace

TEST(RecomputeOptions, ImplicationsFollowTheFlags) {
  const RecomputeOptions block = flags("block").resolved();
  EXPECT_TRUE(block.att && block.ffn && block.norm && block.qkv && block.swiglu);
  const RecomputeOptions att = flags("att").resolved();
  EXPECT_TRUE(att.qkv);
  EXPECT_FALSE(att.swiglu || att.ffn || att.norm || att.block);
  const RecomputeOptions ffn = flags("ffn").resolved();
  EXPECT_TRUE(ffn.swiglu);
  EXPECT_FALSE(ffn.qkv || ffn.att || ffn.norm || ffn.block);
  EXPECT_FALSE(RecomputeOptions{}.resolved().any());
  EXPECT_TRUE(flags("norm").any());
}

TEST(RunState, ActivationBytesMatchTheFormula) {
  const ModelConfig cfg = small_config();
  for (DType dtype : {DType::BF16, DType::FP32}) {
    for (const std::string& which : kFlagSets) {
      const std::size_t e = dtype_size(dtype);
      EXPECT_EQ(planned_activation_bytes(flags(which), dtype), expected_activation_bytes(cfg, e, kB * kT, flags(which)))
          << which << " " << dtype_name(dtype);
    }
  }
  // LM-head chunking shrinks only the logits buffer: 4 chunks of 32 rows.
  EXPECT_EQ(planned_activation_bytes(flags("block"), DType::BF16, 4),
            expected_activation_bytes(cfg, 2, kB * kT / 4, flags("block")));
}

// FP8 gradients write the SwiGLU gradient straight to e5m2: no d_mlp_up, 2 n D e bytes fewer.
TEST(RunState, Fp8GradientsNeedNoBf16MlpUpGradient) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>());
  RunState run(alloc, small_config(), DType::BF16, kB, kT, 1, {}, false, /*mlp_up_gradient=*/false);
  EXPECT_EQ(run.d_mlp_up.data, nullptr);
  EXPECT_NE(run.d_swiglu.data, nullptr);
  EXPECT_EQ(planned_activation_bytes({}) - alloc.in_use(MemCategory::Activations, MemKind::Device),
            static_cast<std::size_t>(2) * kB * kT * small_config().intermediate_size * 2);
}

TEST(KeptFp8Inputs, EveryInputNoRecomputationNeedsInBf16) {
  auto kept = [](const std::string& which) { return KeptFp8Inputs::unless_recomputed(flags(which)); };
  EXPECT_EQ(kept("none"), (KeptFp8Inputs{.ln1 = true, .att = true, .ln2 = true, .swiglu = true}));
  // att's x^T comes on top of its bf16 copy: not where a flag asks to save memory.
  EXPECT_EQ(kept("swiglu"), (KeptFp8Inputs{.ln1 = true, .ln2 = true}));
  EXPECT_EQ(kept("norm"), (KeptFp8Inputs{.swiglu = true}));
  EXPECT_EQ(kept("ffn"), (KeptFp8Inputs{.ln1 = true}));               // recomputing MLP up reads ln2_out
  EXPECT_EQ(kept("qkv"), (KeptFp8Inputs{.ln2 = true, .swiglu = true}));  // recomputing QKV reads ln1_out
  EXPECT_EQ(kept("att"), (KeptFp8Inputs{.ln2 = true, .swiglu = true}));
  EXPECT_FALSE(kept("att+ffn+norm").any());
  EXPECT_FALSE(kept("block").any());
}

// FP8 gradients: the backward reads a kept GEMM input only as the forward's e4m3 x^T, so a kept
// ln1_out, ln2_out or swiglu_out is one buffer for all layers (nothing recomputes it), while att,
// qkv, mlp_up and residual_mid stay per layer unless recomputed. Keeping an input that a
// recomputation reads or refills is refused.
TEST(RunState, GemmInputsKeptAsFp8AreSharedByAllLayers) {
  const ModelConfig cfg = small_config();
  const std::size_t L = cfg.num_layers;
  for (const std::string& which : kFlagSets) {
    SCOPED_TRACE(which);
    const RecomputeOptions rc = flags(which).resolved();
    const KeptFp8Inputs kept = KeptFp8Inputs::unless_recomputed(rc);
    Allocator alloc(std::nullopt, std::make_unique<FakeDevice>());
    RunState run(alloc, cfg, DType::BF16, kB, kT, 1, flags(which), false, /*mlp_up_gradient=*/false, kept);
    EXPECT_EQ(run.kept_fp8_inputs, kept);
    EXPECT_EQ(distinct(run, &LayerActivations::ln1_out), rc.norm || kept.ln1 ? 1u : L);
    EXPECT_EQ(distinct(run, &LayerActivations::ln2_out), rc.norm || kept.ln2 ? 1u : L);
    EXPECT_EQ(distinct(run, &LayerActivations::swiglu_out), rc.swiglu || kept.swiglu ? 1u : L);
    EXPECT_EQ(distinct(run, &LayerActivations::att), rc.att ? 1u : L);  // kept x^T or not
    EXPECT_EQ(distinct(run, &LayerActivations::ln1_rstd), L);
    EXPECT_EQ(alloc.in_use(MemCategory::Activations, MemKind::Device),
              expected_activation_bytes(cfg, 2, kB * kT, rc, kept, /*mlp_up_gradient=*/false));
    const LayerActivations& a = run.layers[0];
    EXPECT_EQ((std::set<void*>{a.ln1_out.data, a.ln2_out.data, a.swiglu_out.data}).size(), 3u) << "no aliasing";
  }

  Allocator other(std::nullopt, std::make_unique<FakeDevice>());
  EXPECT_THROW(RunState(other, cfg, DType::BF16, kB, kT, 1, flags("swiglu"), false, false,
                        KeptFp8Inputs{.swiglu = true}), Error);
  EXPECT_THROW(RunState(other, cfg, DType::BF16, kB, kT, 1, flags("qkv"), false, false, KeptFp8Inputs{.ln1 = true}),
               Error);
  EXPECT_THROW(RunState(other, cfg, DType::BF16, kB, kT, 1, flags("ffn"), false, false, KeptFp8Inputs{.ln2 = true}),
               Error);
}

// With FP8 gradients a recompute flag saves memory as it does in bf16, counting the kept x^T: it
// drops its own tensors and never swaps a kept x^T for a bf16 copy per layer. And no flag set keeps
// more than re-quantizing every input would (the plan before kept x^T under recomputation).
TEST(RunState, Fp8RecomputationSavesMemoryMonotonically) {
  const ModelConfig cfg = small_config();
  std::map<std::string, std::size_t> bytes;
  for (const std::string& which : kFlagSets) {
    const KeptFp8Inputs kept = KeptFp8Inputs::unless_recomputed(flags(which));
    bytes[which] = expected_activation_bytes(cfg, 2, kB * kT, flags(which), kept, false) +
                   kept_transpose_bytes(cfg, kept);
  }
  expect_each_flag_saves(bytes);
  for (const std::string& which : kFlagSets) {
    if (which == "none") continue;  // keeping att's x^T costs memory there, for speed
    const std::size_t requantized = expected_activation_bytes(cfg, 2, kB * kT, flags(which), {}, false);
    EXPECT_LE(bytes[which], requantized) << which;
  }
}

TEST(RunState, RecomputationSavesMemoryMonotonically) {
  std::map<std::string, std::size_t> bytes;
  for (const std::string& which : kFlagSets) bytes[which] = planned_activation_bytes(flags(which));
  expect_each_flag_saves(bytes);
  // Each dropped tensor saves (L - 1) copies: swiglu_out is n D e bytes per layer.
  const ModelConfig cfg = small_config();
  EXPECT_EQ(bytes["none"] - bytes["swiglu"],
            static_cast<std::size_t>(cfg.num_layers - 1) * kB * kT * cfg.intermediate_size * 2);
}

TEST(RunState, RecomputedTensorsAreOneBufferSharedByAllLayers) {
  const ModelConfig cfg = small_config();
  const std::size_t L = cfg.num_layers;
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>());
  RunState block(alloc, cfg, DType::BF16, kB, kT, 1, flags("block"));
  EXPECT_TRUE(block.recompute.att && block.recompute.qkv && block.recompute.swiglu);  // resolved on construction
  ASSERT_EQ(block.layers.size(), L);
  for (auto field : {&LayerActivations::ln1_out, &LayerActivations::qkv, &LayerActivations::att,
                     &LayerActivations::att_lse, &LayerActivations::residual_mid, &LayerActivations::ln2_out,
                     &LayerActivations::mlp_up, &LayerActivations::swiglu_out})
    EXPECT_EQ(distinct(block, field), 1u);
  EXPECT_EQ(distinct(block, &LayerActivations::ln1_rstd), L);  // rstd vectors are kept
  EXPECT_EQ(distinct(block, &LayerActivations::ln2_rstd), L);
  std::set<void*> residuals;
  for (const Tensor& t : block.residual) residuals.insert(t.data);
  EXPECT_EQ(residuals.size(), L + 1);
  // Shared buffers are distinct from one another: no two dropped tensors alias.
  const LayerActivations& a = block.layers[0];
  std::set<void*> shared{a.ln1_out.data, a.qkv.data, a.att.data, a.att_lse.data, a.residual_mid.data,
                         a.ln2_out.data, a.mlp_up.data, a.swiglu_out.data};
  EXPECT_EQ(shared.size(), 8u);
  EXPECT_EQ(a.qkv.size(1), cfg.qkv_channels());
  EXPECT_EQ(a.att_lse.dtype, DType::FP32);

  RunState swiglu(alloc, cfg, DType::BF16, kB, kT, 1, flags("swiglu"));
  EXPECT_EQ(distinct(swiglu, &LayerActivations::swiglu_out), 1u);
  for (auto field : {&LayerActivations::ln1_out, &LayerActivations::qkv, &LayerActivations::att,
                     &LayerActivations::residual_mid, &LayerActivations::ln2_out, &LayerActivations::mlp_up})
    EXPECT_EQ(distinct(swiglu, field), L);

  RunState none(alloc, cfg, DType::BF16, kB, kT, 1, {});
  for (auto field : {&LayerActivations::ln1_out, &LayerActivations::qkv, &LayerActivations::att,
                     &LayerActivations::att_lse, &LayerActivations::residual_mid, &LayerActivations::ln2_out,
                     &LayerActivations::mlp_up, &LayerActivations::swiglu_out})
    EXPECT_EQ(distinct(none, field), L);
}

TEST(RunState, RecomputationFitsWhereKeepingEverythingDoesNot) {
  // A budget between the two plans (the only other device bytes here are the two int32 token buffers).
  const std::size_t none = planned_activation_bytes({}), block = planned_activation_bytes(flags("block"));
  const std::size_t budget = (none + block) / 2;
  {
    Allocator alloc(budget, std::make_unique<FakeDevice>());
    EXPECT_THROW(RunState(alloc, small_config(), DType::BF16, kB, kT, 1, {}), OutOfMemory);
  }
  Allocator alloc(budget, std::make_unique<FakeDevice>());
  EXPECT_NO_THROW(RunState(alloc, small_config(), DType::BF16, kB, kT, 1, flags("block")));
}

TEST(RunState, BadLmHeadChunksAreRefused) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>());
  for (int chunks : {0, -1, kB * kT + 1}) {
    try {
      RunState run(alloc, small_config(), DType::BF16, kB, kT, chunks, flags("block"));
      ADD_FAILURE() << "--lmhead-chunks=" << chunks << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--lmhead-chunks"), std::string::npos) << e.what();
    }
  }
}
