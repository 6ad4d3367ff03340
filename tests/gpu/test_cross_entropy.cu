// Fused softmax cross-entropy (src/kernels/cross_entropy.cu) against a double-precision CPU loop
// that mirrors the head comment: losses, in-place dlogits, ignored targets, z-loss, odd and
// Qwen-sized vocabularies, misaligned rows; plus the deterministic loss sum.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/cross_entropy.h"

namespace llmq::test {
namespace {

using kernels::kIgnoreTarget;

struct CrossEntropyReference {
  std::vector<double> losses;
  std::vector<double> dlogits;
};

CrossEntropyReference cross_entropy_reference(const std::vector<float>& logits, const std::vector<std::int32_t>& targets,
                                              int R, int V, double grad_scale, double z) {
  CrossEntropyReference ref{std::vector<double>(R, 0.0), std::vector<double>(static_cast<std::size_t>(R) * V, 0.0)};
  for (int r = 0; r < R; ++r) {
    const float* x = logits.data() + static_cast<std::size_t>(r) * V;
    double* dx = ref.dlogits.data() + static_cast<std::size_t>(r) * V;
    const int t = targets[r];
    if (t == kIgnoreTarget) continue;
    double m = x[0];
    for (int j = 1; j < V; ++j) m = std::max(m, static_cast<double>(x[j]));
    double sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp(x[j] - m);
    const double lse = m + std::log(sum);
    ref.losses[r] = lse - x[t] + z * lse * lse;
    for (int j = 0; j < V; ++j) {
      const double p = std::exp(x[j] - lse);
      dx[j] = (p - (j == t ? 1.0 : 0.0) + 2.0 * z * lse * p) * grad_scale;
    }
  }
  return ref;
}

// Random targets in [0, V) with about one in five ignored; the first rows hit the row ends.
std::vector<std::int32_t> random_targets(int R, int V, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> targets(R);
  for (int r = 0; r < R; ++r) targets[r] = rng() % 5 == 0 ? kIgnoreTarget : static_cast<std::int32_t>(rng() % V);
  if (R > 0) targets[0] = V - 1;
  if (R > 1) targets[1] = 0;
  if (R > 2) targets[2] = kIgnoreTarget;
  return targets;
}

int count_valid(const std::vector<std::int32_t>& targets) {
  int n = 0;
  for (auto t : targets) n += t != kIgnoreTarget;
  return n;
}

struct Tolerance {
  double dlogits;
  double loss;
};
// fp32: 1e-5 relative L2 for dlogits and losses. bf16 logits: 1e-2 for dlogits (bf16 output),
// 1e-3 for losses (the reference sees the same bf16-rounded logits).
constexpr Tolerance kFp32Tol{1e-5, 1e-5};
constexpr Tolerance kBf16Tol{1e-2, 1e-3};

template <typename T>
void check_cross_entropy(int R, int V, float z_loss, std::uint64_t seed, Tolerance tol, int pointer_offset = 0) {
  constexpr bool kIsBf16 = std::is_same_v<T, nv_bfloat16>;
  std::vector<float> logits = random_normal(static_cast<std::size_t>(R) * V, seed, 3.f);
  if (kIsBf16) logits = round_bf16(logits);
  const std::vector<std::int32_t> targets = random_targets(R, V, seed + 1);
  const double grad_scale = 1.0 / std::max(1, count_valid(targets));

  // pointer_offset > 0 starts the rows at an address that is not 16-byte aligned.
  std::vector<float> padded(logits.size() + pointer_offset, 0.5f);
  std::copy(logits.begin(), logits.end(), padded.begin() + pointer_offset);
  DeviceBuffer<T> d_logits(as_device_type<T>(padded));
  DeviceBuffer<std::int32_t> d_targets(targets);
  DeviceBuffer<float> d_losses(R);
  d_losses.poison();

  kernels::cross_entropy_forward_backward(d_logits.get() + pointer_offset, d_targets.get(), d_losses.get(), R, V,
                                          static_cast<float>(grad_scale), z_loss, nullptr);
  sync_and_check();

  const CrossEntropyReference ref = cross_entropy_reference(logits, targets, R, V, grad_scale, z_loss);
  const std::vector<float> dlogits_padded = as_float(d_logits.download());
  const std::vector<float> dlogits(dlogits_padded.begin() + pointer_offset, dlogits_padded.end());
  const std::vector<float> losses = d_losses.download();

  EXPECT_LT(rel_l2(dlogits, ref.dlogits), tol.dlogits) << "R=" << R << " V=" << V;
  EXPECT_LT(rel_l2(losses, ref.losses), tol.loss) << "R=" << R << " V=" << V;
  for (int i = 0; i < pointer_offset; ++i) EXPECT_EQ(dlogits_padded[i], 0.5f) << "wrote before row 0";
  for (int r = 0; r < R; ++r) {
    if (targets[r] != kIgnoreTarget) continue;
    EXPECT_EQ(losses[r], 0.f) << "ignored row " << r;
    for (int j = 0; j < V; ++j) {
      if (dlogits[static_cast<std::size_t>(r) * V + j] != 0.f) {
        ADD_FAILURE() << "ignored row " << r << " has nonzero gradient at " << j;
        break;
      }
    }
  }
}

TEST(CrossEntropy, Fp32V1000) { check_cross_entropy<float>(37, 1000, 0.f, 11, kFp32Tol); }
TEST(CrossEntropy, Bf16V1000) { check_cross_entropy<nv_bfloat16>(37, 1000, 0.f, 12, kBf16Tol); }
TEST(CrossEntropy, Fp32OddVocab) { check_cross_entropy<float>(9, 32003, 0.f, 13, kFp32Tol); }
TEST(CrossEntropy, Bf16OddVocab) { check_cross_entropy<nv_bfloat16>(9, 32003, 0.f, 14, kBf16Tol); }
TEST(CrossEntropy, Fp32QwenVocab) { check_cross_entropy<float>(3, 151936, 0.f, 15, kFp32Tol); }
TEST(CrossEntropy, Bf16QwenVocab) { check_cross_entropy<nv_bfloat16>(3, 151936, 0.f, 16, kBf16Tol); }
TEST(CrossEntropy, Fp32ZLoss) { check_cross_entropy<float>(21, 1000, 1e-2f, 17, kFp32Tol); }
TEST(CrossEntropy, Bf16ZLoss) { check_cross_entropy<nv_bfloat16>(21, 1000, 1e-2f, 18, kBf16Tol); }
TEST(CrossEntropy, Fp32MisalignedRows) { check_cross_entropy<float>(7, 1000, 0.f, 19, kFp32Tol, 1); }
TEST(CrossEntropy, Bf16MisalignedRows) { check_cross_entropy<nv_bfloat16>(7, 1000, 0.f, 20, kBf16Tol, 3); }
TEST(CrossEntropy, TinyVocabSmallerThanVector) { check_cross_entropy<nv_bfloat16>(5, 5, 0.f, 21, kBf16Tol, 1); }

TEST(CrossEntropy, OutOfRangeTargetGivesNanLossOnlyInItsRow) {
  const int R = 3, V = 100;
  DeviceBuffer<float> logits(random_normal(R * V, 30, 3.f));
  DeviceBuffer<std::int32_t> targets(std::vector<std::int32_t>{5, V, 7});
  DeviceBuffer<float> losses(R);
  losses.poison();
  kernels::cross_entropy_forward_backward(logits.get(), targets.get(), losses.get(), R, V, 1.f, 0.f, nullptr);
  sync_and_check();
  const std::vector<float> out = losses.download();
  EXPECT_TRUE(std::isfinite(out[0]));
  EXPECT_TRUE(std::isnan(out[1])) << "a target id >= V must surface as NaN loss";
  EXPECT_TRUE(std::isfinite(out[2]));
}

TEST(CrossEntropy, RejectsBadShapes) {
  DeviceBuffer<float> logits(16);
  DeviceBuffer<std::int32_t> targets(std::vector<std::int32_t>{0, 1});
  DeviceBuffer<float> losses(2);
  EXPECT_THROW(kernels::cross_entropy_forward_backward(logits.get(), targets.get(), losses.get(), 2, 0, 1.f, 0.f, nullptr),
               Error);
  EXPECT_THROW(kernels::cross_entropy_forward_backward(logits.get(), targets.get(), losses.get(), -1, 8, 1.f, 0.f, nullptr),
               Error);
  EXPECT_THROW(kernels::cross_entropy_forward_backward(logits.get(), nullptr, losses.get(), 2, 8, 1.f, 0.f, nullptr),
               Error);
}

TEST(LossSum, MatchesDoubleSumAndCountsValidTargets) {
  const int R = 5003;  // not a multiple of any block size
  std::vector<float> losses = random_floats(R, 40, 0.5f, 12.f);
  const std::vector<std::int32_t> targets = random_targets(R, 1000, 41);
  double expected = 0;
  for (int r = 0; r < R; ++r) {
    if (targets[r] == kIgnoreTarget) losses[r] = 0.f;
    expected += losses[r];
  }
  DeviceBuffer<float> d_losses(losses);
  DeviceBuffer<std::int32_t> d_targets(targets);
  DeviceBuffer<std::uint8_t> scratch(kernels::loss_sum_scratch_bytes());
  DeviceBuffer<float> sum(1);
  DeviceBuffer<int> count(1);
  sum.poison();
  count.poison();
  kernels::loss_sum(d_losses.get(), d_targets.get(), R, sum.get(), count.get(), scratch.get(), nullptr);
  sync_and_check();
  const float first = sum.download()[0];
  EXPECT_NEAR(first, expected, 1e-5 * expected) << "relative tolerance 1e-5";
  EXPECT_EQ(count.download()[0], count_valid(targets));

  sum.poison();
  kernels::loss_sum(d_losses.get(), d_targets.get(), R, sum.get(), count.get(), scratch.get(), nullptr);
  sync_and_check();
  const float second = sum.download()[0];
  EXPECT_EQ(std::memcmp(&first, &second, sizeof(float)), 0) << "loss sum must be bit-reproducible";
}

TEST(LossSum, EndToEndMeanLossAfterCrossEntropy) {
  const int R = 50, V = 777;
  const std::vector<float> logits = random_normal(R * V, 50, 3.f);
  const std::vector<std::int32_t> targets = random_targets(R, V, 51);
  const int valid = count_valid(targets);
  const auto ref = cross_entropy_reference(logits, targets, R, V, 1.0 / valid, 0.0);
  double expected = 0;
  for (double l : ref.losses) expected += l;

  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<std::int32_t> d_targets(targets);
  DeviceBuffer<float> d_losses(R);
  DeviceBuffer<std::uint8_t> scratch(kernels::loss_sum_scratch_bytes());
  DeviceBuffer<float> sum(1);
  DeviceBuffer<int> count(1);
  kernels::cross_entropy_forward_backward(d_logits.get(), d_targets.get(), d_losses.get(), R, V, 1.f / valid, 0.f,
                                          nullptr);
  kernels::loss_sum(d_losses.get(), d_targets.get(), R, sum.get(), count.get(), scratch.get(), nullptr);
  sync_and_check();
  EXPECT_EQ(count.download()[0], valid);
  EXPECT_NEAR(sum.download()[0] / valid, expected / valid, 1e-5 * expected / valid);
}

TEST(LossSum, RejectsMissingScratch) {
  DeviceBuffer<float> losses(4), sum(1);
  DeviceBuffer<std::int32_t> targets(4);
  DeviceBuffer<int> count(1);
  EXPECT_THROW(kernels::loss_sum(losses.get(), targets.get(), 4, sum.get(), count.get(), nullptr, nullptr), Error);
  EXPECT_THROW(kernels::loss_sum(losses.get(), targets.get(), -4, sum.get(), count.get(), losses.get(), nullptr), Error);
}

}  // namespace
}  // namespace llmq::test
