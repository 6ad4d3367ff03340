// fp32 <-> bf16 conversions and stochastic rounding (src/kernels/convert.cu) against CPU loops:
// bit-exact where the math is exact, statistical where it is random. (abs_max: test_quantize.cu.)
#include <cstdint>
#include <cstring>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/convert.h"

namespace llmq::test {
namespace {

std::uint16_t bits_of(nv_bfloat16 x) {
  std::uint16_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}
float float_from_bits(std::uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof(b));
  return x;
}

// Random values plus the rounding corner cases: exact ties (round to even), values that overflow
// bf16 to inf, infinities, signed zeros and subnormals.
std::vector<float> values_with_corner_cases(std::size_t n, std::uint64_t seed) {
  std::vector<float> v = random_normal(n, seed, 10.f);
  const std::vector<float> corners = {
      float_from_bits(0x3F808000u),  // 1 + 2^-8: tie, rounds down to 1 (even)
      float_from_bits(0x3F818000u),  // tie, rounds up to the even neighbour
      float_from_bits(0xBF808000u),  // negative tie
      3.4028235e38f,                 // above the largest bf16: rounds to inf
      INFINITY, -INFINITY, 0.f, -0.f,
      float_from_bits(0x00012345u),  // subnormal
      1e-40f, -3.3e38f};
  for (std::size_t i = 0; i < corners.size() && i < n; ++i) v[i * 7 % n] = corners[i];
  return v;
}

TEST(Convert, Fp32ToBf16RoundsToNearestEven) {
  const std::size_t n = 100'003;
  const std::vector<float> in = values_with_corner_cases(n, 1);
  DeviceBuffer<float> d_in(in);
  DeviceBuffer<nv_bfloat16> d_out(n);
  d_out.poison();
  kernels::convert(d_out.get(), static_cast<const float*>(d_in.get()), n, nullptr);
  sync_and_check();
  const auto out = d_out.download();
  const auto expected = to_bf16(in);  // host __float2bfloat16: round to nearest even
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) mismatches += bits_of(out[i]) != bits_of(expected[i]);
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(bits_of(out[0]), 0x3F80u) << "tie must round to even";
  EXPECT_EQ(bits_of(out[7]), 0x3F82u) << "tie must round to even";
}

TEST(Convert, Bf16ToFp32IsExactIncludingMisalignedStart) {
  const std::size_t n = 4097;
  const std::vector<nv_bfloat16> in = to_bf16(values_with_corner_cases(n + 1, 2));
  DeviceBuffer<nv_bfloat16> d_in(in);
  DeviceBuffer<float> d_out(n);
  d_out.poison();
  kernels::convert(d_out.get(), static_cast<const nv_bfloat16*>(d_in.get() + 1), n, nullptr);
  sync_and_check();
  const auto out = d_out.download();
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float expected = __bfloat162float(in[i + 1]);
    mismatches += std::memcmp(&out[i], &expected, sizeof(float)) != 0;
  }
  EXPECT_EQ(mismatches, 0u);
}

std::vector<nv_bfloat16> stochastic_on_device(const std::vector<float>& in, std::uint32_t seed) {
  DeviceBuffer<float> d_in(in);
  DeviceBuffer<nv_bfloat16> d_out(in.size());
  d_out.poison();
  kernels::convert_stochastic(d_out.get(), static_cast<const float*>(d_in.get()), in.size(), seed, nullptr);
  sync_and_check();
  return d_out.download();
}

// Each result must be one of the two bf16 neighbours of the input (truncation t or the next value
// away from zero), or the input itself when it is representable.
TEST(ConvertStochastic, ResultIsANeighbourAndCloseInL2) {
  const std::size_t n = 100'003;
  const std::vector<float> in = random_normal(n, 3, 2.f);
  const auto out = stochastic_on_device(in, 17);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, &in[i], sizeof(bits));
    const auto truncated = static_cast<std::uint16_t>(bits >> 16);
    const bool exact = (bits & 0xFFFFu) == 0;
    const std::uint16_t got = bits_of(out[i]);
    bad += !(got == truncated || (!exact && got == truncated + 1));
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_LT(rel_l2(to_float(out), in), 1e-2) << "bf16 tolerance 1e-2 relative L2";
}

// x = 1 + 0.3 ulp (ulp = 2^-7) in 2^20 elements: rounds up with probability 0.3. The mean's standard
// deviation is ulp * sqrt(0.3 * 0.7 / n); tolerance 5 of them. Round-to-nearest would give 1 exactly.
TEST(ConvertStochastic, UnbiasedOnAverage) {
  const std::size_t n = 1u << 20;
  const double ulp = 1.0 / 128;
  const float x = static_cast<float>(1.0 + 0.3 * ulp);
  const auto out = stochastic_on_device(std::vector<float>(n, x), 99);
  double mean = 0;
  for (const auto& b : out) mean += __bfloat162float(b);
  mean /= n;
  EXPECT_NEAR(mean, x, 5 * ulp * std::sqrt(0.3 * 0.7 / n));
}

TEST(ConvertStochastic, SameSeedBitIdenticalOtherSeedDiffers) {
  const std::vector<float> in = random_normal(50'001, 4, 1.f);
  const auto a = stochastic_on_device(in, 5), b = stochastic_on_device(in, 5), c = stochastic_on_device(in, 6);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(nv_bfloat16)), 0);
  std::size_t differing = 0;
  for (std::size_t i = 0; i < a.size(); ++i) differing += bits_of(a[i]) != bits_of(c[i]);
  EXPECT_GT(differing, a.size() / 10);  // about 1/3 expected
}

TEST(Convert, RejectsBadArguments) {
  DeviceBuffer<float> f(8);
  DeviceBuffer<nv_bfloat16> b(8);
  EXPECT_THROW(kernels::convert(b.get(), static_cast<const float*>(nullptr), 8, nullptr), Error);
  EXPECT_THROW(kernels::convert(static_cast<float*>(nullptr), static_cast<const nv_bfloat16*>(b.get()), 8, nullptr),
               Error);
  EXPECT_THROW(kernels::convert_stochastic(b.get(), f.get(), (std::size_t{1} << 32) + 1, 0, nullptr), Error);
}

}  // namespace
}  // namespace llmq::test
