// Fused softmax cross-entropy (src/kernels/cross_entropy.cu) against a double-precision CPU loop
// that mirrors the head comment: losses, in-place dlogits, ignored targets, z-loss, odd and
// Qwen-sized vocabularies, misaligned rows; both bf16 kernels (the single-read cluster kernel and the
// two-pass fallback), bit reproducibility and bandwidth; plus the deterministic loss sum.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
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

bool device_supports_clusters() {
  int device = 0, supported = 0;
  LLMQ_CUDA_CHECK(cudaGetDevice(&device));
  LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrClusterLaunch, device));
  return supported != 0;
}

template <typename T>
bool identical_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The real Qwen2.5 shape on the single-read cluster kernel: a 297 KB row is split over several CTAs.
TEST(CrossEntropy, Bf16QwenVocabClusterPath) {
  const int V = 151936;
  if (device_supports_clusters()) EXPECT_GE(kernels::cross_entropy_bf16_ctas_per_row(V), 2);
  check_cross_entropy<nv_bfloat16>(6, V, 0.f, 60, kBf16Tol);
}
TEST(CrossEntropy, Bf16QwenVocabZLoss) { check_cross_entropy<nv_bfloat16>(4, 151936, 1e-2f, 61, kBf16Tol); }

// Odd V and a chunk that starts 3 elements (6 bytes) past a 16-byte boundary: every row starts at a
// different offset inside a vector, so head/tail scalars, slice starts and TMA addresses differ per row.
TEST(CrossEntropy, Bf16ClusterPathMisalignedRows) {
  const int V = 100003;
  if (device_supports_clusters()) EXPECT_GE(kernels::cross_entropy_bf16_ctas_per_row(V), 2);
  check_cross_entropy<nv_bfloat16>(9, V, 0.f, 62, kBf16Tol, 3);
}

// A row wider than 8 CTAs of shared memory can hold (2 MB of bf16) takes the two-pass kernel.
TEST(CrossEntropy, Bf16TwoPassFallbackForHugeVocab) {
  const int V = 1000003;
  EXPECT_EQ(kernels::cross_entropy_bf16_ctas_per_row(V), 0);
  check_cross_entropy<nv_bfloat16>(4, V, 0.f, 63, kBf16Tol, 1);
}

// The same inputs give the same bits: fixed reduction orders within CTAs and across the cluster.
TEST(CrossEntropy, Bf16QwenVocabBitReproducible) {
  const int R = 5, V = 151936;
  const std::vector<nv_bfloat16> input = to_bf16(random_normal(static_cast<std::size_t>(R) * V, 64, 3.f));
  DeviceBuffer<nv_bfloat16> d_logits(input.size());
  DeviceBuffer<std::int32_t> d_targets(random_targets(R, V, 65));
  DeviceBuffer<float> d_losses(R);
  auto run = [&] {
    d_logits.upload(input);
    d_losses.poison();
    kernels::cross_entropy_forward_backward(d_logits.get(), d_targets.get(), d_losses.get(), R, V, 0.25f, 1e-3f,
                                            nullptr);
    sync_and_check();
    return std::make_pair(d_logits.download(), d_losses.download());
  };
  const auto first = run();
  const auto second = run();
  EXPECT_TRUE(all_finite(first.second));
  EXPECT_TRUE(identical_bytes(first.first, second.first)) << "dlogits differ between two identical runs";
  EXPECT_TRUE(identical_bytes(first.second, second.second)) << "losses differ between two identical runs";
}

// A scale read from device memory (what a replayed CUDA graph uses) gives the bits of the same scale
// passed by value, on the fp32 kernel and both bf16 kernels (one CTA per row, and a cluster per row).
TEST(CrossEntropy, ScaleInDeviceMemoryMatchesScaleByValue) {
  DeviceBuffer<float> d_scale(std::vector<float>{0.375f});
  const kernels::GradScale in_memory = kernels::GradScale::in_device_memory(d_scale.get());
  const int R = 3;
  for (const int V : {100, 151936}) {
    const std::vector<float> input = random_normal(static_cast<std::size_t>(R) * V, 69, 3.f);
    const std::vector<std::int32_t> target_ids = random_targets(R, V, 70);
    DeviceBuffer<std::int32_t> targets(target_ids);
    DeviceBuffer<float> losses(R);
    auto bf16_run = [&](kernels::GradScale scale) {
      DeviceBuffer<nv_bfloat16> logits(to_bf16(input));
      kernels::cross_entropy_forward_backward(logits.get(), targets.get(), losses.get(), R, V, scale, 1e-3f, nullptr);
      sync_and_check();
      return logits.download();
    };
    EXPECT_TRUE(identical_bytes(bf16_run(in_memory), bf16_run(0.375f))) << "bf16 V=" << V;
    if (V > 100) continue;
    auto fp32_run = [&](kernels::GradScale scale) {
      DeviceBuffer<float> logits(input);
      kernels::cross_entropy_forward_backward(logits.get(), targets.get(), losses.get(), R, V, scale, 1e-3f, nullptr);
      sync_and_check();
      return logits.download();
    };
    EXPECT_TRUE(identical_bytes(fp32_run(in_memory), fp32_run(0.375f))) << "fp32 V=" << V;
  }
}

// Bad target ids on the bf16 paths (one CTA per row and several): a NaN loss in their own row only, and
// dx = softmax * grad_scale there (no one-hot matches), so that row's dx sums to grad_scale instead of 0.
TEST(CrossEntropy, Bf16OutOfRangeTargetsGiveNanLossOnlyInTheirRow) {
  for (const int V : {100, 151936}) {
    const int R = 4;
    DeviceBuffer<nv_bfloat16> logits(to_bf16(random_normal(static_cast<std::size_t>(R) * V, 66, 3.f)));
    DeviceBuffer<std::int32_t> targets(std::vector<std::int32_t>{5, V, -7, kIgnoreTarget});
    DeviceBuffer<float> losses(R);
    losses.poison();
    kernels::cross_entropy_forward_backward(logits.get(), targets.get(), losses.get(), R, V, 1.f, 0.f, nullptr);
    sync_and_check();
    const std::vector<float> out = losses.download();
    EXPECT_TRUE(std::isfinite(out[0])) << "V=" << V;
    EXPECT_TRUE(std::isnan(out[1])) << "V=" << V << ": a target id >= V must surface as NaN loss";
    EXPECT_TRUE(std::isnan(out[2])) << "V=" << V << ": a negative target id other than -1 must give NaN loss";
    EXPECT_EQ(out[3], 0.f) << "V=" << V << ": ignored row";
    const std::vector<float> dx = to_float(logits.download());
    const double expected_row_sums[] = {0.0, 1.0, 1.0, 0.0};
    for (int r = 0; r < R; ++r) {
      double sum = 0;
      for (int j = 0; j < V; ++j) sum += dx[static_cast<std::size_t>(r) * V + j];
      EXPECT_NEAR(sum, expected_row_sums[r], 1e-2) << "V=" << V << " row " << r;  // bf16 rounding of p
    }
    EXPECT_TRUE(std::all_of(dx.begin() + 3 * V, dx.end(), [](float g) { return g == 0.f; })) << "ignored row";
  }
}

// A Qwen2.5 LM-head chunk, 4096 x 151936 bf16 (1.2 GB). The ideal traffic is one read and one write of
// every logit; the printed bandwidth is measured against that. Repeated runs see the previous dx as
// logits, which changes the values, not the work.
TEST(CrossEntropy, Bf16BandwidthAtQwenVocab) {
  const int R = 4096, V = 151936, block_rows = 16;
  const std::vector<nv_bfloat16> block = to_bf16(random_normal(static_cast<std::size_t>(block_rows) * V, 67, 3.f));
  DeviceBuffer<nv_bfloat16> logits(static_cast<std::size_t>(R) * V);
  for (int r = 0; r < R; r += block_rows)
    LLMQ_CUDA_CHECK(cudaMemcpy(logits.get() + static_cast<std::size_t>(r) * V, block.data(),
                               block.size() * sizeof(nv_bfloat16), cudaMemcpyHostToDevice));
  DeviceBuffer<std::int32_t> targets(random_targets(R, V, 68));
  DeviceBuffer<float> losses(R);
  losses.poison();
  const double ms = mean_ms([&] {
    kernels::cross_entropy_forward_backward(logits.get(), targets.get(), losses.get(), R, V, 1.f / R, 0.f, nullptr);
  });
  const int ctas = kernels::cross_entropy_bf16_ctas_per_row(V);
  report_bandwidth("cross_entropy bf16 R=4096 V=151936, " + std::to_string(ctas) + " CTAs per row",
                   2.0 * R * V * sizeof(nv_bfloat16), ms);
  EXPECT_TRUE(all_finite(losses.download()));
}

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
  DeviceBuffer<nv_bfloat16> bf16_logits(16);
  EXPECT_THROW(
      kernels::cross_entropy_forward_backward(bf16_logits.get(), nullptr, losses.get(), 2, 8, 1.f, 0.f, nullptr),
      Error);
  EXPECT_THROW(
      kernels::cross_entropy_forward_backward(bf16_logits.get(), targets.get(), losses.get(), 2, 0, 1.f, 0.f, nullptr),
      Error);
  EXPECT_THROW(kernels::cross_entropy_bf16_ctas_per_row(0), Error);
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
