// cuBLASLt matmul (src/kernels/matmul.h) against a plain CPU loop in double:
//   out[M, N] (+)= alpha * op(a) @ op(b) (+ bias[N]), row-major.
// Tolerances (relative L2 over the whole output): fp32 inputs and fp32 outputs 1e-5 (bf16 inputs are
// exact in fp32 and cuBLASLt accumulates in fp32, so bf16 -> fp32 is held to 1e-5 too); bf16 outputs
// 1e-2 (the final rounding to bf16 alone gives about 2e-3).
// Sizes are deliberately not multiples of 16 (or of 8 for M).
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "gpu_test_utils.h"
#include "kernels/matmul.h"

namespace llmq::test {
namespace {

using kernels::MatmulContext;

constexpr double kTolFp32 = 1e-5;
constexpr double kTolBf16Out = 1e-2;

struct Problem {
  int M, N, K;
  bool trans_a, trans_b;
};

std::string name(const Problem& p) {
  return "M=" + std::to_string(p.M) + " N=" + std::to_string(p.N) + " K=" + std::to_string(p.K) +
         " trans_a=" + std::to_string(p.trans_a) + " trans_b=" + std::to_string(p.trans_b);
}

// out = alpha * op(a) @ op(b) + (c0 ? c0 : 0) + (bias ? bias[n] : 0), in double.
std::vector<double> reference(const Problem& p, const std::vector<float>& a, const std::vector<float>& b, float alpha,
                              const std::vector<float>* c0, const std::vector<float>* bias) {
  const std::size_t M = p.M, N = p.N, K = p.K;
  std::vector<double> out(M * N);
  for (std::size_t m = 0; m < M; ++m) {
    for (std::size_t n = 0; n < N; ++n) {
      double sum = 0;
      for (std::size_t k = 0; k < K; ++k) {
        const double av = p.trans_a ? a[k * M + m] : a[m * K + k];  // op(a)[m, k]
        const double bv = p.trans_b ? b[n * K + k] : b[k * N + n];  // op(b)[k, n]
        sum += av * bv;
      }
      double v = alpha * sum;
      if (c0) v += (*c0)[m * N + n];
      if (bias) v += (*bias)[n];
      out[m * N + n] = v;
    }
  }
  return out;
}

class MatmulTest : public ::testing::Test {
 protected:
  void SetUp() override {
    workspace_ = std::make_unique<DeviceBuffer<std::byte>>(MatmulContext::kRecommendedWorkspaceBytes);
    ctx_ = std::make_unique<MatmulContext>(workspace_->get(), workspace_->size());
  }

  // fp32 in, fp32 out; returns the relative L2 error.
  double run_fp32(const Problem& p, float alpha, bool accumulate, bool with_bias, std::uint64_t seed) {
    const auto a = random_floats(static_cast<std::size_t>(p.M) * p.K, seed);
    const auto b = random_floats(static_cast<std::size_t>(p.K) * p.N, seed + 1);
    const auto c0 = random_floats(static_cast<std::size_t>(p.M) * p.N, seed + 2);
    const auto bias = random_floats(p.N, seed + 3);
    DeviceBuffer<float> da(a), db(b), dout(c0.size()), dbias(bias);
    if (accumulate)
      dout.upload(c0);
    else
      dout.poison();
    kernels::matmul(*ctx_, dout.get(), DType::FP32, da.get(), db.get(), DType::FP32, p.M, p.N, p.K, p.trans_a,
                    p.trans_b, alpha, accumulate, with_bias ? dbias.get() : nullptr, nullptr);
    sync_and_check();
    return rel_l2(dout.download(), reference(p, a, b, alpha, accumulate ? &c0 : nullptr, with_bias ? &bias : nullptr));
  }

  // bf16 in, bf16 or fp32 out; inputs (and c0, bias) are rounded to bf16 so the reference sees what the GPU sees.
  double run_bf16(const Problem& p, DType out_dtype, float alpha, bool accumulate, bool with_bias, std::uint64_t seed) {
    const auto a = round_bf16(random_floats(static_cast<std::size_t>(p.M) * p.K, seed));
    const auto b = round_bf16(random_floats(static_cast<std::size_t>(p.K) * p.N, seed + 1));
    auto c0 = random_floats(static_cast<std::size_t>(p.M) * p.N, seed + 2);
    auto bias = random_floats(p.N, seed + 3);
    if (out_dtype == DType::BF16) {
      c0 = round_bf16(c0);
      bias = round_bf16(bias);
    }
    DeviceBuffer<__nv_bfloat16> da(to_bf16(a)), db(to_bf16(b));
    const auto expected = reference(p, a, b, alpha, accumulate ? &c0 : nullptr, with_bias ? &bias : nullptr);
    if (out_dtype == DType::BF16) {
      DeviceBuffer<__nv_bfloat16> dout(c0.size()), dbias(to_bf16(bias));
      if (accumulate)
        dout.upload(to_bf16(c0));
      else
        dout.poison();
      kernels::matmul(*ctx_, dout.get(), DType::BF16, da.get(), db.get(), DType::BF16, p.M, p.N, p.K, p.trans_a,
                      p.trans_b, alpha, accumulate, with_bias ? dbias.get() : nullptr, nullptr);
      sync_and_check();
      return rel_l2(to_float(dout.download()), expected);
    }
    DeviceBuffer<float> dout(c0.size()), dbias(bias);
    if (accumulate)
      dout.upload(c0);
    else
      dout.poison();
    kernels::matmul(*ctx_, dout.get(), DType::FP32, da.get(), db.get(), DType::BF16, p.M, p.N, p.K, p.trans_a,
                    p.trans_b, alpha, accumulate, with_bias ? dbias.get() : nullptr, nullptr);
    sync_and_check();
    return rel_l2(dout.download(), expected);
  }

  std::unique_ptr<DeviceBuffer<std::byte>> workspace_;
  std::unique_ptr<MatmulContext> ctx_;
};

std::vector<Problem> all_transposes(int M, int N, int K) {
  return {{M, N, K, false, false}, {M, N, K, false, true}, {M, N, K, true, false}, {M, N, K, true, true}};
}

TEST_F(MatmulTest, Fp32AllTransposesMatchReference) {
  std::uint64_t seed = 100;
  for (const Problem& p : all_transposes(37, 45, 29)) {
    const double err = run_fp32(p, 1.f, false, false, seed += 10);
    EXPECT_LT(err, kTolFp32) << name(p);
  }
}

TEST_F(MatmulTest, Fp32AlphaAndLargerK) {
  const Problem p{67, 131, 515, false, true};
  EXPECT_LT(run_fp32(p, 0.37f, false, false, 7), kTolFp32) << name(p);
}

TEST_F(MatmulTest, Bf16ToBf16AllTransposes) {
  std::uint64_t seed = 200;
  for (const Problem& p : all_transposes(37, 40, 24)) {  // N, K multiples of 8 but not of 16; M odd
    const double err = run_bf16(p, DType::BF16, 1.f, false, false, seed += 10);
    EXPECT_LT(err, kTolBf16Out) << name(p);
  }
}

TEST_F(MatmulTest, Bf16ToFp32AllTransposes) {
  std::uint64_t seed = 300;
  for (const Problem& p : all_transposes(37, 40, 24)) {
    const double err = run_bf16(p, DType::FP32, 1.f, false, false, seed += 10);
    EXPECT_LT(err, kTolFp32) << name(p);
  }
}

// cuBLASLt has kernels for 2-byte aligned bf16 operands, so odd sizes work (slowly).
TEST_F(MatmulTest, Bf16OddSizes) {
  std::uint64_t seed = 400;
  for (const Problem& p : all_transposes(37, 45, 29)) {
    EXPECT_LT(run_bf16(p, DType::BF16, 1.f, false, false, seed += 10), kTolBf16Out) << name(p);
    EXPECT_LT(run_bf16(p, DType::FP32, 1.f, false, false, seed += 10), kTolFp32) << name(p);
  }
}

TEST_F(MatmulTest, AccumulateAddsToExistingOutput) {
  const Problem p{33, 48, 40, true, false};  // the weight-gradient pattern dW += dy^T @ x
  EXPECT_LT(run_fp32(p, 0.5f, true, false, 500), kTolFp32) << name(p);
  EXPECT_LT(run_bf16(p, DType::FP32, 0.5f, true, false, 510), kTolFp32) << name(p);
  EXPECT_LT(run_bf16(p, DType::BF16, 0.5f, true, false, 520), kTolBf16Out) << name(p);
}

TEST_F(MatmulTest, BiasEpilogueAddsBiasToEveryRow) {
  const Problem p{33, 40, 24, false, true};  // linear forward y = x @ W^T + bias
  EXPECT_LT(run_fp32(p, 1.f, false, true, 600), kTolFp32) << name(p);
  EXPECT_LT(run_bf16(p, DType::BF16, 1.f, false, true, 610), kTolBf16Out) << name(p);
  EXPECT_LT(run_bf16(p, DType::FP32, 1.f, false, true, 620), kTolFp32) << name(p);
}

TEST_F(MatmulTest, BiasTogetherWithAccumulate) {
  const Problem p{19, 40, 56, false, true};
  EXPECT_LT(run_fp32(p, 1.f, true, true, 700), kTolFp32) << name(p);
}

TEST_F(MatmulTest, AlgorithmCacheReusesPlans) {
  const Problem p{37, 40, 24, false, true};
  run_fp32(p, 1.f, false, false, 800);
  const std::size_t after_first = ctx_->cached_problems();
  EXPECT_EQ(after_first, 1u);
  EXPECT_LT(run_fp32(p, 1.f, false, false, 810), kTolFp32);  // same shape: cached plan, still correct
  EXPECT_EQ(ctx_->cached_problems(), after_first);
  run_fp32({37, 40, 24, false, false}, 1.f, false, false, 820);
  EXPECT_EQ(ctx_->cached_problems(), after_first + 1);
}

// Autotune times the candidates on the call's own buffers; the call must still compute exactly its
// result: an accumulating call's output is restored before the real call (were it not, the timed
// runs would have added alpha * a @ b six more times).
TEST_F(MatmulTest, AutotunedCallsMatchReference) {
  ctx_->set_autotune(true);
  const Problem grad{256, 384, 512, true, false};  // dW += dy^T @ x, big enough for several candidates
  EXPECT_LT(run_bf16(grad, DType::BF16, 0.5f, /*accumulate=*/true, false, 900), kTolBf16Out);
  EXPECT_LT(run_bf16(grad, DType::FP32, 1.f, true, false, 910), kTolFp32);
  EXPECT_LT(run_bf16({256, 384, 512, false, true}, DType::BF16, 1.f, false, true, 920), kTolBf16Out);
  EXPECT_LT(run_fp32({67, 131, 515, false, true}, 1.f, true, true, 930), kTolFp32);
  EXPECT_EQ(ctx_->choices().size(), 4u);
}

// bf16 out = a @ b^T of random inputs, poisoned output first.
std::vector<__nv_bfloat16> bf16_product(MatmulContext& ctx, const Problem& p, std::uint64_t seed) {
  DeviceBuffer<__nv_bfloat16> a(to_bf16(random_floats(static_cast<std::size_t>(p.M) * p.K, seed))),
      b(to_bf16(random_floats(static_cast<std::size_t>(p.K) * p.N, seed + 1))),
      out(static_cast<std::size_t>(p.M) * p.N);
  out.poison();
  kernels::matmul(ctx, out.get(), DType::BF16, a.get(), b.get(), DType::BF16, p.M, p.N, p.K, p.trans_a, p.trans_b,
                  1.f, false, nullptr, nullptr);
  sync_and_check();
  return out.download();
}

// What a resumed run relies on: another context given the first one's choices computes the same bits.
TEST_F(MatmulTest, PresetChoicesReplayBitForBit) {
  ctx_->set_autotune(true);
  const Problem p{512, 768, 1024, false, true};
  const auto tuned = bf16_product(*ctx_, p, 1000);
  const auto choices = ctx_->choices();
  ASSERT_EQ(choices.size(), 1u);

  MatmulContext replay(workspace_->get(), workspace_->size());
  replay.preset_choices(choices);
  const auto replayed = bf16_product(replay, p, 1000);
  EXPECT_EQ(replay.choices(), choices);
  ASSERT_EQ(tuned.size(), replayed.size());
  EXPECT_EQ(0, std::memcmp(tuned.data(), replayed.data(), tuned.size() * sizeof(__nv_bfloat16)));
}

// A preset naming a candidate the heuristic does not have (another cuBLASLt) falls back to its first.
TEST_F(MatmulTest, PresetOutOfRangeFallsBackToHeuristic) {
  const Problem p{64, 128, 256, false, true};
  bf16_product(*ctx_, p, 1100);
  auto choices = ctx_->choices();
  ASSERT_EQ(choices.size(), 1u);
  for (auto& [problem, index] : choices) index = 1000;
  MatmulContext other(workspace_->get(), workspace_->size());
  other.preset_choices(choices);
  bf16_product(other, p, 1100);
  EXPECT_EQ(other.choices().begin()->second, 0);
  EXPECT_FALSE(MatmulContext::environment().empty());
}

// The three matmuls of a linear layer through the Tensor-level wrapper, with 3-D activations.
TEST_F(MatmulTest, TensorWrapperLinearLayer) {
  const int B = 2, T = 7, Cin = 24, Cout = 40, N = B * T;
  const auto x = random_floats(static_cast<std::size_t>(N) * Cin, 900);
  const auto w = random_floats(static_cast<std::size_t>(Cout) * Cin, 901);
  const auto dy = random_floats(static_cast<std::size_t>(N) * Cout, 902);
  const auto dw0 = random_floats(static_cast<std::size_t>(Cout) * Cin, 903);
  DeviceBuffer<float> dx_in(x), dw_in(w), ddy(dy), dy_out(static_cast<std::size_t>(N) * Cout),
      ddx(static_cast<std::size_t>(N) * Cin), ddw(dw0);
  dy_out.poison();
  ddx.poison();
  const Tensor tx(dx_in.get(), DType::FP32, {B, T, Cin}), tw(dw_in.get(), DType::FP32, {Cout, Cin});
  const Tensor tdy(ddy.get(), DType::FP32, {B, T, Cout}), ty(dy_out.get(), DType::FP32, {B, T, Cout});
  const Tensor tdx(ddx.get(), DType::FP32, {B, T, Cin}), tdw(ddw.get(), DType::FP32, {Cout, Cin});

  kernels::matmul(*ctx_, ty, tx, tw, false, true, 1.f, false, Tensor{}, nullptr);    // y = x @ W^T
  kernels::matmul(*ctx_, tdx, tdy, tw, false, false, 1.f, false, Tensor{}, nullptr);  // dx = dy @ W
  kernels::matmul(*ctx_, tdw, tdy, tx, true, false, 1.f, true, Tensor{}, nullptr);    // dW += dy^T @ x
  sync_and_check();

  EXPECT_LT(rel_l2(dy_out.download(), reference({N, Cout, Cin, false, true}, x, w, 1.f, nullptr, nullptr)), kTolFp32);
  EXPECT_LT(rel_l2(ddx.download(), reference({N, Cin, Cout, false, false}, dy, w, 1.f, nullptr, nullptr)), kTolFp32);
  EXPECT_LT(rel_l2(ddw.download(), reference({Cout, Cin, N, true, false}, dy, x, 1.f, &dw0, nullptr)), kTolFp32);
}

TEST_F(MatmulTest, TensorWrapperWithBias) {
  const int N = 9, Cin = 32, Cout = 24;
  const auto x = round_bf16(random_floats(static_cast<std::size_t>(N) * Cin, 950));
  const auto w = round_bf16(random_floats(static_cast<std::size_t>(Cout) * Cin, 951));
  const auto bias = round_bf16(random_floats(Cout, 952));
  DeviceBuffer<__nv_bfloat16> dx(to_bf16(x)), dw(to_bf16(w)), dbias(to_bf16(bias));
  DeviceBuffer<__nv_bfloat16> dy(static_cast<std::size_t>(N) * Cout);
  dy.poison();
  kernels::matmul(*ctx_, Tensor(dy.get(), DType::BF16, {N, Cout}), Tensor(dx.get(), DType::BF16, {N, Cin}),
                  Tensor(dw.get(), DType::BF16, {Cout, Cin}), false, true, 1.f, false,
                  Tensor(dbias.get(), DType::BF16, {Cout}), nullptr);
  sync_and_check();
  EXPECT_LT(rel_l2(to_float(dy.download()), reference({N, Cout, Cin, false, true}, x, w, 1.f, nullptr, &bias)),
            kTolBf16Out);
}

// ---- bad inputs --------------------------------------------------------------------------------


TEST_F(MatmulTest, RejectsUnsupportedDtypes) {
  DeviceBuffer<float> buf(64 * 64);
  expect_error([&] { kernels::matmul(*ctx_, buf.get(), DType::BF16, buf.get(), buf.get(), DType::FP32, 8, 8, 8, false,
                                     false, 1.f, false, nullptr, nullptr); },
               "not supported");
  expect_error([&] { kernels::matmul(*ctx_, buf.get(), DType::FP32, buf.get(), buf.get(), DType::E4M3, 8, 8, 8, false,
                                     false, 1.f, false, nullptr, nullptr); },
               "not supported");
}

TEST_F(MatmulTest, RejectsBadSizesAndNullPointers) {
  DeviceBuffer<float> buf(64);
  expect_error([&] { kernels::matmul(*ctx_, buf.get(), DType::FP32, buf.get(), buf.get(), DType::FP32, 0, 8, 8, false,
                                     false, 1.f, false, nullptr, nullptr); },
               "M=0");
  expect_error([&] { kernels::matmul(*ctx_, nullptr, DType::FP32, buf.get(), buf.get(), DType::FP32, 4, 4, 4, false,
                                     false, 1.f, false, nullptr, nullptr); },
               "null pointer");
}

TEST_F(MatmulTest, TensorWrapperRejectsMismatchedShapes) {
  DeviceBuffer<float> a(8 * 16), b(24 * 16), out(8 * 24), bias(23);
  DeviceBuffer<__nv_bfloat16> b16(24 * 16);
  const Tensor ta(a.get(), DType::FP32, {8, 16}), tb(b.get(), DType::FP32, {24, 16});
  const Tensor tout(out.get(), DType::FP32, {8, 24});
  // Inner dimensions differ without trans_b: op(b) is [24, 16] but op(a) is [8, 16].
  expect_error([&] { kernels::matmul(*ctx_, tout, ta, tb, false, false, 1.f, false, Tensor{}, nullptr); },
               "inner dimensions differ");
  // Output of the wrong shape.
  expect_error([&] { kernels::matmul(*ctx_, Tensor(out.get(), DType::FP32, {24, 8}), ta, tb, false, true, 1.f, false,
                                     Tensor{}, nullptr); },
               "output");
  // a and b of different dtypes.
  expect_error([&] { kernels::matmul(*ctx_, tout, ta, Tensor(b16.get(), DType::BF16, {24, 16}), false, true, 1.f,
                                     false, Tensor{}, nullptr); },
               "different dtypes");
  // Bias of the wrong length, and of the wrong dtype.
  expect_error([&] { kernels::matmul(*ctx_, tout, ta, tb, false, true, 1.f, false,
                                     Tensor(bias.get(), DType::FP32, {23}), nullptr); },
               "bias");
  expect_error([&] { kernels::matmul(*ctx_, tout, ta, tb, false, true, 1.f, false,
                                     Tensor(b16.get(), DType::BF16, {24}), nullptr); },
               "bias");
  // Host tensors are refused.
  std::vector<float> host(8 * 16);
  expect_error([&] { kernels::matmul(*ctx_, tout, Tensor(host.data(), DType::FP32, {8, 16}, Location::Host), tb, false,
                                     true, 1.f, false, Tensor{}, nullptr); },
               "on the device");
}

}  // namespace
}  // namespace llmq::test
