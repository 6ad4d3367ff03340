// Parameter initialisation (src/kernels/init.cu): normal fill against a CPU Box-Muller loop that
// mirrors the head comment, its statistics, seed behaviour and dtype consistency; constant fills.
#include <cstdint>
#include <cstring>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/init.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::test {
namespace {

// The head comment of init.cu in double precision (hash_u32 is host-callable).
std::vector<double> normal_reference(std::size_t n, double stddev, std::uint32_t seed) {
  std::vector<double> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto first = static_cast<std::uint32_t>(i & ~std::size_t{1});
    const double u1 = ((kernels::hash_u32(first, seed) >> 8) + 1.0) / 16777216.0;
    const double u2 = (kernels::hash_u32(first + 1, seed) >> 8) / 16777216.0;
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * M_PI * u2;
    out[i] = stddev * r * (i % 2 == 0 ? std::cos(angle) : std::sin(angle));
  }
  return out;
}

template <typename T>
std::vector<T> init_on_device(std::size_t n, float stddev, std::uint32_t seed) {
  DeviceBuffer<T> buf(n);
  buf.poison();
  kernels::init_normal(buf.get(), n, stddev, seed, nullptr);
  sync_and_check();
  return buf.download();
}

constexpr std::size_t kMillion = 1'000'003;  // odd: the last pair has one element

TEST(InitNormal, Fp32MatchesCpuBoxMuller) {
  const std::size_t n = 100'001;
  const auto out = init_on_device<float>(n, 0.02f, 7);
  EXPECT_LT(rel_l2(out, normal_reference(n, 0.02, 7)), 1e-5) << "fp32 tolerance 1e-5 relative L2";
}

// Statistics of 10^6 draws with stddev 0.02: mean within 5 standard errors (5 * 0.02 / sqrt(n)),
// sample stddev within 5 * sqrt(1 / (2n)) relative, the share inside one stddev within
// 5 * sqrt(p (1 - p) / n) of p = 0.6827.
TEST(InitNormal, MeanStddevAndShapeOfAMillionDraws) {
  const double sigma = 0.02;
  const auto out = init_on_device<float>(kMillion, static_cast<float>(sigma), 2024);
  const double n = static_cast<double>(kMillion);
  double sum = 0, sum_sq = 0;
  std::size_t inside = 0;
  for (float x : out) {
    sum += x;
    sum_sq += static_cast<double>(x) * x;
    inside += std::fabs(x) < sigma;
  }
  const double mean = sum / n;
  const double stddev = std::sqrt(sum_sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 5 * sigma / std::sqrt(n));
  EXPECT_NEAR(stddev / sigma, 1.0, 5 * std::sqrt(1 / (2 * n)));
  const double p = 0.682689;
  EXPECT_NEAR(inside / n, p, 5 * std::sqrt(p * (1 - p) / n));
}

TEST(InitNormal, SameSeedIsBitIdenticalAndDifferentSeedsDiffer) {
  const auto a = init_on_device<float>(kMillion, 0.02f, 1);
  const auto b = init_on_device<float>(kMillion, 0.02f, 1);
  const auto c = init_on_device<float>(kMillion, 0.02f, 2);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  std::size_t equal = 0;
  for (std::size_t i = 0; i < a.size(); ++i) equal += a[i] == c[i];
  EXPECT_LT(equal, a.size() / 1000) << "seeds 1 and 2 gave " << equal << " equal elements";
}

TEST(InitNormal, ElementDependsOnlyOnIndexAndSeed) {
  // A shorter tensor (smaller grid) is a prefix of a longer one with the same seed.
  const auto long_fill = init_on_device<float>(kMillion, 0.5f, 99);
  const auto short_fill = init_on_device<float>(1001, 0.5f, 99);
  EXPECT_EQ(std::memcmp(long_fill.data(), short_fill.data(), short_fill.size() * sizeof(float)), 0);
}

TEST(InitNormal, Bf16IsTheRoundedFp32Tensor) {
  const auto fp32 = init_on_device<float>(kMillion, 0.02f, 5);
  const auto bf16 = init_on_device<nv_bfloat16>(kMillion, 0.02f, 5);
  const auto expected = to_bf16(fp32);
  EXPECT_EQ(std::memcmp(bf16.data(), expected.data(), bf16.size() * sizeof(nv_bfloat16)), 0);
}

float value_of(float x) { return x; }
float value_of(nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
void check_constant(float value) {
  const std::size_t n = 12347;
  DeviceBuffer<T> buf(n);
  buf.poison();
  kernels::fill_constant(buf.get(), n, value, nullptr);
  sync_and_check();
  const auto out = buf.download();
  std::size_t wrong = 0;
  for (const T& x : out) wrong += value_of(x) != value;
  EXPECT_EQ(wrong, 0u) << "value " << value;
}

TEST(FillConstant, ExactValues) {
  check_constant<float>(1.f);
  check_constant<float>(0.f);
  check_constant<float>(-0.3f);
  check_constant<nv_bfloat16>(1.f);
  check_constant<nv_bfloat16>(0.f);
  check_constant<nv_bfloat16>(-0.375f);  // exactly representable in bf16
}

TEST(Init, RejectsBadArguments) {
  DeviceBuffer<float> buf(8);
  EXPECT_THROW(kernels::init_normal(buf.get(), 8, -1.f, 0, nullptr), Error);
  EXPECT_THROW(kernels::init_normal(buf.get(), 8, NAN, 0, nullptr), Error);
  EXPECT_THROW(kernels::init_normal(buf.get(), (std::size_t{1} << 32) + 2, 1.f, 0, nullptr), Error);
  EXPECT_THROW(kernels::init_normal(static_cast<float*>(nullptr), 8, 1.f, 0, nullptr), Error);
  EXPECT_THROW(kernels::fill_constant(static_cast<nv_bfloat16*>(nullptr), 8, 1.f, nullptr), Error);
}

}  // namespace
}  // namespace llmq::test
