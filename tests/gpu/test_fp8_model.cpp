// FP8 training (--matmul-dtype=e4m3, optionally --gradient-dtype=e5m2) of a tiny Qwen2-shaped model
// against the same run in bf16. FP8 GEMMs round their inputs to 3 (e4m3) or 2 (e5m2) mantissa bits,
// so the runs differ; the checks are that FP8 learns like bf16 on a learnable sequence:
//   every loss and gradient norm finite; first loss within 1% of bf16 (forward quantization only);
//   the loss falls by more than half of what bf16's falls; the mean of the last 5 losses within 10%
//   of bf16's (the tiny model's single-batch losses are noisy; the 300-step Shakespeare comparison in
//   scripts/gpu_check.sh fp8quality is the real quality check);
// and that FP8 stays deterministic under activation recomputation (bit-identical losses).
//
// Kept input transposes (Fp8Linear's kept_inputs, with FP8 gradients every input no recomputation
// needs in bf16): the weight gradient reads the e4m3 x^T the forward kept instead of quantizing x
// again; the bytes are the same, so
//   - Fp8Linear alone, all kept, some kept and none: bit-identical y, dx and accumulated dW over two
//     micro-steps, with another GEMM's forward between a forward and its backward and the bf16 x of
//     every kept input poisoned before the backward (so it must read the kept copy); a backward
//     without this micro-step's forward is refused; the option is ignored where the backward is
//     not FP8;
//   - the tiny model with e4m3 + e5m2, 3 steps x 2 micro-steps (eager and with CUDA graphs) against
//     the configuration that re-quantizes every input (keep_fp8_input_transposes off), every
//     --recompute-* flag set (each keeps the x^T of the inputs it does not recompute or read) and an
//     offload flag (--offload-opt-m): bit-identical losses, gradient norms, evaluation losses
//     (between and after the steps) and checkpoint tensors; the Quants category holds exactly the
//     kept buffers more, and without recomputation Activations exactly L - 1 layers' bf16 GEMM
//     inputs (ln1_out, ln2_out, swiglu_out) less.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/allocator.h"
#include "core/errors.h"
#include "gpu_test_utils.h"
#include "kernels/matmul.h"
#include "kernels/quantize.h"
#include "model/config.h"
#include "model/fp8_linear.h"
#include "model/param_layout.h"
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
  std::size_t activation_bytes = 0;
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

// ---- kept input transposes ----------------------------------------------------------------------

namespace {

namespace k = kernels;

// Device bytes the allocator charges for a block (it rounds device blocks up to 512 bytes).
std::size_t device_block_bytes(std::size_t bytes) { return (bytes + 511) / 512 * 512; }

constexpr KeptFp8Inputs kKeepAll{.ln1 = true, .att = true, .ln2 = true, .swiglu = true};

// What kept inputs add to the Quants category: x^T e4m3 [in_f, rows] per block matrix whose input
// is kept and, if any is, one 16-byte scale slot per block matrix.
std::size_t kept_transpose_bytes(const ModelConfig& cfg, std::size_t rows, const KeptFp8Inputs& kept) {
  const ParamLayout layout(cfg);
  std::size_t bytes = 0, matrices = 0;
  for (int l = 0; l < layout.num_layers(); ++l) {
    const LayerParamIds& ids = layout.layer(l);
    for (auto [param, is_kept] : {std::pair{ids.qkv_w, kept.ln1}, std::pair{ids.att_out_w, kept.att},
                                  std::pair{ids.mlp_up_w, kept.ln2}, std::pair{ids.mlp_down_w, kept.swiglu}}) {
      if (is_kept) bytes += device_block_bytes(rows * static_cast<std::size_t>(layout[param].cols()));
      ++matrices;
    }
  }
  return kept.any() ? bytes + device_block_bytes(matrices * 4 * sizeof(float)) : 0;
}

std::size_t differing_elements(const std::vector<nv_bfloat16>& a, const std::vector<nv_bfloat16>& b) {
  if (a.size() != b.size()) return std::max(a.size(), b.size());
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(nv_bfloat16)) != 0;
  return n;
}

bool all_finite(const std::vector<nv_bfloat16>& v) {
  for (nv_bfloat16 x : v)
    if (!std::isfinite(__bfloat162float(x))) return false;
  return true;
}

// One Fp8Linear (e4m3 + e5m2) of the tiny model and the GEMM buffers of layer 0's MLP (up: C -> 2D,
// down: D -> C) and layer 1's QKV (C -> qkv), filled with seeded random values.
class LinearHarness {
 public:
  static constexpr int kRows = 272;  // a multiple of 16, not of the 64-row quantize+transpose tile

  LinearHarness(KeptFp8Inputs kept, bool fp8_dgrad = true, int rows = kRows)
      : cfg_(test::tiny_qwen2_config(tiny_shape())),
        layout_(cfg_),
        workspace_(alloc_.allocate_bytes("cuBLASLt workspace", k::MatmulContext::kRecommendedWorkspaceBytes,
                                         MemCategory::Workspace)),
        mm_(workspace_, k::MatmulContext::kRecommendedWorkspaceBytes),
        fp8_(alloc_, cfg_, layout_, rows, fp8_dgrad, /*transpose_per_use=*/false, kept) {}

  Fp8Linear& fp8() { return fp8_; }
  const Allocator& allocator() const { return alloc_; }
  const ModelConfig& config() const { return cfg_; }
  const LayerParamIds& layer(int l) const { return layout_.layer(l); }
  k::MatmulContext& mm() { return mm_; }

 private:
  ModelConfig cfg_;
  ParamLayout layout_;
  Allocator alloc_;
  void* workspace_;
  k::MatmulContext mm_;
  Fp8Linear fp8_;
};

using Bf16Buffer = test::DeviceBuffer<nv_bfloat16>;

// Elements of a [rows, cols] matrix.
std::size_t elems(int rows, int cols) { return static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols); }

std::unique_ptr<Bf16Buffer> random_bf16(std::size_t n, std::uint64_t seed, float stddev) {
  return std::make_unique<Bf16Buffer>(test::to_bf16(test::random_normal(n, seed, stddev)));
}

// Outputs of two micro-steps through layer 0's MLP GEMMs and layer 1's QKV forward (the last
// micro-step's y and dx, dW accumulated over both), and the Quants bytes of the Fp8Linear.
struct LinearRun {
  std::map<std::string, std::vector<nv_bfloat16>> outputs;
  std::size_t quant_bytes = 0;
  KeptFp8Inputs kept;
};

LinearRun run_linear(KeptFp8Inputs keep) {
  LinearHarness h(keep);
  Fp8Linear& fp8 = h.fp8();
  const int N = LinearHarness::kRows, C = h.config().hidden_size, D = h.config().intermediate_size;
  const int QKV = h.config().qkv_channels();
  const LayerParamIds& l0 = h.layer(0);
  const int qkv1 = h.layer(1).qkv_w;
  const cudaStream_t s = nullptr;

  const auto w_up = random_bf16(elems(2 * D, C), 11, 0.05f), w_down = random_bf16(elems(C, D), 12, 0.05f);
  const auto w_qkv = random_bf16(elems(QKV, C), 13, 0.05f);
  fp8.quantize_weight(l0.mlp_up_w, w_up->get(), s);
  fp8.quantize_weight(l0.mlp_down_w, w_down->get(), s);
  fp8.quantize_weight(qkv1, w_qkv->get(), s);
  fp8.mark_weights_current();

  Bf16Buffer y_up(elems(N, 2 * D)), y_down(elems(N, C)), y_qkv(elems(N, QKV));
  Bf16Buffer dx_up(elems(N, C)), dx_down(elems(N, D));
  // Weight gradients start from random values: the backward accumulates onto them.
  const auto dw_up = random_bf16(elems(2 * D, C), 14, 0.01f);
  const auto dw_down = random_bf16(elems(C, D), 15, 0.01f);
  for (Bf16Buffer* out : {&y_up, &y_down, &y_qkv, &dx_up, &dx_down}) out->poison();

  for (int micro = 0; micro < 2; ++micro) {
    const std::uint64_t seed = 100 * (micro + 1);
    fp8.begin_micro_step(s);
    // Forward: the abs-max slots are filled the way the producing kernels fill them.
    const auto x_up = random_bf16(elems(N, C), seed + 1, 1.f);
    const auto x_down = random_bf16(elems(N, D), seed + 2, 0.5f);
    const auto x_qkv = random_bf16(elems(N, C), seed + 3, 1.f);
    k::abs_max(fp8.absmax(0, Fp8Slot::Ln2Out), x_up->get(), elems(N, C), s);
    fp8.forward(h.mm(), y_up.get(), x_up->get(), fp8.absmax(0, Fp8Slot::Ln2Out), l0.mlp_up_w, nullptr, N, C, 2 * D, s);
    k::abs_max(fp8.absmax(0, Fp8Slot::SwigluOut), x_down->get(), elems(N, D), s);
    fp8.forward(h.mm(), y_down.get(), x_down->get(), fp8.absmax(0, Fp8Slot::SwigluOut), l0.mlp_down_w, nullptr, N, D, C,
                s);
    // Another layer's GEMM between the forwards and the backwards overwrites the shared x scratch.
    k::abs_max(fp8.absmax(1, Fp8Slot::Ln1Out), x_qkv->get(), elems(N, C), s);
    fp8.forward(h.mm(), y_qkv.get(), x_qkv->get(), fp8.absmax(1, Fp8Slot::Ln1Out), qkv1, nullptr, N, C, QKV, s);
    // The backward must not read the bf16 x of a kept input any more: poison it (NaN bytes).
    if (keep.ln2) x_up->poison();
    if (keep.swiglu) x_down->poison();
    const auto dy_down = random_bf16(elems(N, C), seed + 4, 1e-3f);
    const auto dy_up = random_bf16(elems(N, 2 * D), seed + 5, 1e-3f);
    k::abs_max(fp8.absmax(0, Fp8Slot::DResMlp), dy_down->get(), elems(N, C), s);
    fp8.backward(h.mm(), dx_down.get(), dw_down->get(), dy_down->get(), fp8.absmax(0, Fp8Slot::DResMlp), x_down->get(),
                 fp8.absmax(0, Fp8Slot::SwigluOut), l0.mlp_down_w, N, D, C, s);
    k::abs_max(fp8.absmax(0, Fp8Slot::DMlpUp), dy_up->get(), elems(N, 2 * D), s);
    fp8.backward(h.mm(), dx_up.get(), dw_up->get(), dy_up->get(), fp8.absmax(0, Fp8Slot::DMlpUp), x_up->get(),
                 fp8.absmax(0, Fp8Slot::Ln2Out), l0.mlp_up_w, N, C, 2 * D, s);
    test::sync_and_check();  // the x / dy buffers of this micro-step are freed at the end of the scope
  }
  LinearRun r;
  r.outputs = {{"y_up", y_up.download()},   {"y_down", y_down.download()},   {"y_qkv", y_qkv.download()},
               {"dx_up", dx_up.download()}, {"dx_down", dx_down.download()}, {"dw_up", dw_up->download()},
               {"dw_down", dw_down->download()}};
  r.quant_bytes = h.allocator().in_use(MemCategory::Quants, MemKind::Device);
  r.kept = fp8.kept_inputs();
  return r;
}

}  // namespace

TEST(Fp8KeptTransposes, LinearLayerIsBitIdenticalWithAndWithout) {
  const LinearRun requantized = run_linear({});
  EXPECT_FALSE(requantized.kept.any());
  for (const auto& [name, ref] : requantized.outputs) EXPECT_TRUE(all_finite(ref)) << name << " has non-finite values";
  // All kept, and only the MLP-up input kept (--recompute-swiglu drops the MLP-down one).
  for (const KeptFp8Inputs keep : {kKeepAll, KeptFp8Inputs{.ln1 = true, .att = true, .ln2 = true}}) {
    SCOPED_TRACE(keep.swiglu ? "all kept" : "MLP down re-quantized");
    const LinearRun kept = run_linear(keep);
    EXPECT_EQ(kept.kept, keep);
    for (const auto& [name, ref] : requantized.outputs)
      EXPECT_EQ(differing_elements(kept.outputs.at(name), ref), 0u) << name << " differs with kept x^T";
    EXPECT_EQ(kept.quant_bytes - requantized.quant_bytes,
              kept_transpose_bytes(test::tiny_qwen2_config(tiny_shape()), LinearHarness::kRows, keep));
  }
}

TEST(Fp8KeptTransposes, BackwardWithoutThisMicroStepsForwardIsRefused) {
  LinearHarness h(kKeepAll);
  Fp8Linear& fp8 = h.fp8();
  const int N = LinearHarness::kRows, C = h.config().hidden_size, D = h.config().intermediate_size;
  const int down = h.layer(0).mlp_down_w;
  const auto w = random_bf16(elems(C, D), 1, 0.05f), x = random_bf16(elems(N, D), 2, 1.f);
  const auto dy = random_bf16(elems(N, C), 3, 1e-3f), dw = random_bf16(elems(C, D), 4, 0.01f);
  Bf16Buffer y(elems(N, C)), dx(elems(N, D));
  fp8.quantize_weight(down, w->get(), nullptr);
  fp8.mark_weights_current();
  auto backward = [&] {
    fp8.backward(h.mm(), dx.get(), dw->get(), dy->get(), fp8.absmax(0, Fp8Slot::DResMlp), x->get(),
                 fp8.absmax(0, Fp8Slot::SwigluOut), down, N, D, C, nullptr);
  };
  fp8.begin_micro_step(nullptr);
  test::expect_error(backward, "without this micro-step's forward");  // no forward at all yet
  k::abs_max(fp8.absmax(0, Fp8Slot::SwigluOut), x->get(), elems(N, D), nullptr);
  fp8.forward(h.mm(), y.get(), x->get(), fp8.absmax(0, Fp8Slot::SwigluOut), down, nullptr, N, D, C, nullptr);
  fp8.begin_micro_step(nullptr);
  test::expect_error(backward, "without this micro-step's forward");  // the forward was the last micro-step's
  test::sync_and_check();
}

TEST(Fp8KeptTransposes, IgnoredWhereTheBackwardIsNotFp8) {
  const std::size_t plain = LinearHarness({}, /*fp8_dgrad=*/false).allocator().in_use(
      MemCategory::Quants, MemKind::Device);
  LinearHarness bf16_backward(kKeepAll, /*fp8_dgrad=*/false);
  EXPECT_FALSE(bf16_backward.fp8().kept_inputs().any()) << "bf16 weight gradients read the bf16 x";
  EXPECT_EQ(bf16_backward.allocator().in_use(MemCategory::Quants, MemKind::Device), plain);
  LinearHarness odd_rows(kKeepAll, /*fp8_dgrad=*/true, /*rows=*/LinearHarness::kRows + 8);
  EXPECT_FALSE(odd_rows.fp8().kept_inputs().any()) << "B*T not a multiple of 16: bf16 weight gradients";
}

namespace {

constexpr int kKeptAccum = 2, kKeptSteps = 3;

QwenModelOptions kept_options(bool cuda_graphs) {
  QwenModelOptions o = test::tiny_qwen2_options(kB, kT, kKeptAccum, /*seed=*/7);
  o.matmul_dtype = DType::E4M3;
  o.gradient_dtype = DType::E5M2;
  o.use_cuda_graphs = cuda_graphs;
  return o;
}

struct KeptRun {
  std::vector<StepResult> steps;
  std::vector<float> eval_losses;                  // after step 2 and after step 3
  std::map<std::string, test::Bytes> checkpoint;  // weights, adam_m, adam_v after the last step
  std::size_t quant_bytes = 0;
  std::size_t activation_bytes = 0;
};

// Steps 1-2, an evaluation (a forward that overwrites every kept x^T), step 3, an evaluation.
KeptRun train_and_evaluate(const QwenModelOptions& o) {
  std::unique_ptr<Model> model = test::make_tiny_qwen2(o, tiny_shape());
  KeptRun r;
  r.quant_bytes = model->allocator().in_use(MemCategory::Quants, MemKind::Device);
  r.activation_bytes = model->allocator().in_use(MemCategory::Activations, MemKind::Device);
  const int vocab = tiny_shape().vocab, rows = kB * kT;
  const test::BatchSource batches = test::seeded_batches(vocab, rows);
  std::vector<std::int32_t> eval_inputs, eval_targets;
  test::seeded_batch(/*step=*/99, /*micro=*/0, vocab, rows, eval_inputs, eval_targets);
  const AdamWSettings adam = test::adamw_at(1e-3f);
  r.steps = test::train_steps(*model, adam, kKeptAccum, 1, 2, batches);
  r.eval_losses.push_back(model->evaluate(eval_inputs.data(), eval_targets.data()));
  for (const StepResult& step : test::train_steps(*model, adam, kKeptAccum, 3, kKeptSteps, batches))
    r.steps.push_back(step);
  r.eval_losses.push_back(model->evaluate(eval_inputs.data(), eval_targets.data()));
  r.checkpoint = test::checkpoint_tensors(*model);
  return r;
}

void expect_same_run(const KeptRun& run, const KeptRun& ref) {
  test::expect_same_steps(run.steps, ref.steps);
  ASSERT_EQ(run.eval_losses.size(), ref.eval_losses.size());
  for (std::size_t i = 0; i < ref.eval_losses.size(); ++i) {
    EXPECT_TRUE(std::isfinite(ref.eval_losses[i])) << "evaluation " << i + 1;
    EXPECT_EQ(run.eval_losses[i], ref.eval_losses[i]) << "evaluation " << i + 1;
  }
  test::expect_same_bytes(run.checkpoint, ref.checkpoint, "checkpoint tensor");
}

}  // namespace

// The speed configuration keeps every x^T (also with an offload flag); keep_fp8_input_transposes off
// re-quantizes every input, a recompute flag those it recomputes or reads, which (as the offload and
// recompute tests check) changes no number, so the runs must agree bit for bit.
TEST(Fp8KeptTransposes, ModelTrainsBitIdenticallyWithAndWithout) {
  const KeptRun kept = train_and_evaluate(kept_options(/*cuda_graphs=*/false));
  for (const StepResult& step : kept.steps) ASSERT_TRUE(std::isfinite(step.loss) && std::isfinite(step.grad_norm));
  const ModelConfig cfg = test::tiny_qwen2_config(tiny_shape());
  const std::size_t kept_bytes = kept_transpose_bytes(cfg, kB * kT, kKeepAll);
  // ln1_out, ln2_out [N, C] and swiglu_out [N, D] bf16: one buffer for all layers instead of L.
  const std::size_t per_layer_inputs =
      2 * device_block_bytes(std::size_t{kB} * kT * cfg.hidden_size * 2) +
      device_block_bytes(std::size_t{kB} * kT * cfg.intermediate_size * 2);
  const std::size_t shared_input_savings = (cfg.num_layers - 1) * per_layer_inputs;

  QwenModelOptions requantize = kept_options(false);
  requantize.keep_fp8_input_transposes = false;
  const KeptRun requantized = train_and_evaluate(requantize);
  expect_same_run(kept, requantized);
  EXPECT_EQ(kept.quant_bytes - requantized.quant_bytes, kept_bytes) << "Quants: kept x^T buffers only when enabled";
  EXPECT_EQ(requantized.activation_bytes - kept.activation_bytes, shared_input_savings)
      << "Activations: the bf16 GEMM inputs are kept per layer only when x^T is not";
  for (const char* flag : {"swiglu", "norm", "ffn", "qkv", "att", "block"}) {
    SCOPED_TRACE(std::string("--recompute-") + flag + " keeps the x^T of the inputs it neither recomputes nor reads");
    QwenModelOptions o = kept_options(false);
    const std::string f = flag;
    o.recompute = {.swiglu = f == "swiglu", .norm = f == "norm", .ffn = f == "ffn", .qkv = f == "qkv",
                   .att = f == "att", .block = f == "block"};
    const KeptRun recompute = train_and_evaluate(o);
    expect_same_run(kept, recompute);
    EXPECT_EQ(recompute.quant_bytes - requantized.quant_bytes,
              kept_transpose_bytes(cfg, kB * kT, KeptFp8Inputs::unless_recomputed(o.recompute)));
  }
  {
    SCOPED_TRACE("--offload-opt-m keeps x^T");
    QwenModelOptions o = kept_options(false);
    o.offload_opt_m = true;
    const KeptRun offload = train_and_evaluate(o);
    expect_same_run(kept, offload);
    EXPECT_EQ(offload.quant_bytes, kept.quant_bytes);
    EXPECT_EQ(offload.activation_bytes, kept.activation_bytes);
  }
  {
    SCOPED_TRACE("kept x^T with CUDA graphs");
    const KeptRun graphs = train_and_evaluate(kept_options(/*cuda_graphs=*/true));
    expect_same_run(graphs, kept);
    EXPECT_EQ(graphs.quant_bytes, kept.quant_bytes);
  }
}
