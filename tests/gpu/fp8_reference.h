// CPU references for the FP8 quantization tests (test_quantize.cu, test_quantize_blocks.cu): the
// scale and quantization formulas of kernels/quantize.cu in fp32, with cuda_fp8.h's host conversions
// (saturating, round to nearest even), and byte-exact comparison.
#pragma once
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_utils.h"

namespace llmq::test {

using fp8_byte = std::uint8_t;
inline constexpr fp8_byte kPoison = 0xFF;  // DeviceBuffer::poison's byte (NaN in both FP8 formats)
inline const DType kFp8Types[] = {DType::E4M3, DType::E5M2};

inline __nv_fp8_interpretation_t format_of(DType t) { return t == DType::E4M3 ? __NV_E4M3 : __NV_E5M2; }

// Values spread over six decades, as bf16 would hold them.
inline std::vector<float> wide_range_values(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> decades(-3.f, 3.f);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng) * std::pow(10.f, decades(rng));
  return round_bf16(v);
}

inline float cpu_abs_max(const std::vector<float>& x) {
  float m = 0.f;
  for (float v : x) m = std::isnan(v) || std::isnan(m) ? NAN : std::max(m, std::fabs(v));
  return m;
}

// The scale of quantize.cu's head comment, in fp32.
inline float reference_scale(float absmax, DType t) {
  const float fp8_max = t == DType::E4M3 ? 448.f : 57344.f;
  if (!std::isfinite(absmax)) return NAN;
  if (absmax == 0.f) return 1.f;
  return std::min(fp8_max / absmax, FLT_MAX);
}

inline std::vector<fp8_byte> reference_quantize(const std::vector<float>& x, float scale, DType t) {
  std::vector<fp8_byte> q(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) q[i] = __nv_cvt_float_to_fp8(x[i] * scale, __NV_SATFINITE, format_of(t));
  return q;
}

inline std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}

// Number of positions where got != expected; the first one is reported.
inline std::size_t mismatches(const std::vector<fp8_byte>& got, const std::vector<fp8_byte>& expected,
                              const std::string& what) {
  EXPECT_EQ(got.size(), expected.size()) << what;
  std::size_t count = 0;
  for (std::size_t i = 0; i < std::min(got.size(), expected.size()); ++i) {
    if (got[i] == expected[i]) continue;
    if (count++ == 0)
      ADD_FAILURE() << what << ": first mismatch at " << i << ": got 0x" << std::hex << int(got[i]) << ", expected 0x"
                    << int(expected[i]);
  }
  return count;
}

}  // namespace llmq::test
