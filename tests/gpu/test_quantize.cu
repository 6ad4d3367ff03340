// FP8 current-scaling quantization (src/kernels/quantize.cu) against CPU loops that mirror its head
// comment: abs-max exact; scale computed the same way in fp32; every quantized byte and scale_inv
// bit-exact against the host versions of cuda_fp8.h's conversions (saturating, round to nearest
// even); the tiled quantize_transpose equal to the plain quantization, transposed where asked.
// Inputs are normal * 10^U(-3, 3) rounded to bf16, so the FP8 subnormal range, underflow to zero
// and saturation at the largest value all occur. Exactness, not a tolerance, is the criterion.
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fp8_reference.h"
#include "gpu_test_utils.h"
#include "kernels/quantize.h"

namespace llmq::test {
namespace {

// One slot of device floats: [0] abs-max, [1] scale_inv (separate slots, as quantize requires).
struct ScaleSlots {
  DeviceBuffer<float> buf{2};
  ScaleSlots() { buf.poison(); }
  float* absmax() const { return buf.get(); }
  float* scale_inv() const { return buf.get() + 1; }
};

// ---- abs_max ------------------------------------------------------------------------------------

template <typename T>
float device_abs_max(const std::vector<float>& x, std::size_t offset) {
  DeviceBuffer<T> d_x(as_device_type<T>(x));
  ScaleSlots slots;
  kernels::abs_max(slots.absmax(), static_cast<const T*>(d_x.get() + offset), x.size() - offset, nullptr);
  sync_and_check();
  return slots.buf.download()[0];
}

TEST(QuantizeAbsMax, ExactForBf16AndFp32InputsIncludingMisalignedStarts) {
  for (std::size_t n : {1u, 7u, 8u, 4096u, 100'003u}) {
    for (std::size_t offset : {0u, 1u}) {
      if (offset >= n) continue;
      const std::vector<float> x = wide_range_values(n, n + offset);
      const float expected = cpu_abs_max(std::vector<float>(x.begin() + offset, x.end()));
      EXPECT_EQ(bits_of(device_abs_max<nv_bfloat16>(x, offset)), bits_of(expected))
          << "bf16 n=" << n << " offset=" << offset;
      EXPECT_EQ(bits_of(device_abs_max<float>(x, offset)), bits_of(expected)) << "fp32 n=" << n << " offset=" << offset;
    }
  }
}

// The largest magnitude is negative and sits in the element-wise tail (n % 8 != 0), and a larger value just
// before the start must not count; n is large enough for hundreds of blocks.
TEST(QuantizeAbsMax, IgnoresElementsBeforeTheStartAndFindsANegativeMaxInTheTail) {
  for (std::size_t offset : {0u, 1u, 3u}) {
    std::vector<float> x = random_floats(1'000'003 + offset, 7 + offset, -1.f, 1.f);
    x.back() = -7.25f;          // exact in bf16
    if (offset) x[0] = 100.f;   // outside the range
    EXPECT_EQ(device_abs_max<float>(x, offset), 7.25f) << "fp32 offset=" << offset;
    EXPECT_EQ(device_abs_max<nv_bfloat16>(x, offset), 7.25f) << "bf16 offset=" << offset;
  }
}

TEST(QuantizeAbsMax, NaNAndInfPropagateAndEmptyGivesZero) {
  std::vector<float> x = wide_range_values(10'000, 3);
  x[777] = -INFINITY;  // |-inf| = +inf
  EXPECT_EQ(device_abs_max<float>(x, 0), INFINITY);
  x[777] = INFINITY;
  EXPECT_TRUE(std::isinf(device_abs_max<nv_bfloat16>(x, 0)));
  x[5000] = NAN;  // NaN wins over inf
  EXPECT_TRUE(std::isnan(device_abs_max<nv_bfloat16>(x, 0)));
  EXPECT_TRUE(std::isnan(device_abs_max<float>(x, 0)));
  EXPECT_EQ(device_abs_max<float>(x, x.size()), 0.f) << "n == 0 must zero the (poisoned) slot";
}

// ---- quantize_fp8 -------------------------------------------------------------------------------

struct QuantizeResult {
  std::vector<fp8_byte> q;
  float absmax, scale_inv;
};

// abs_max + quantize_fp8 of x[x_offset..] into a poisoned buffer at q_offset; checks that nothing
// outside q was written.
QuantizeResult device_quantize(const std::vector<float>& x, DType t, std::size_t x_offset, std::size_t q_offset) {
  const std::size_t n = x.size() - x_offset;
  DeviceBuffer<nv_bfloat16> d_x(to_bf16(x));
  DeviceBuffer<fp8_byte> d_q(q_offset + n + 32);
  d_q.poison();
  ScaleSlots slots;
  const nv_bfloat16* x_ptr = d_x.get() + x_offset;
  kernels::abs_max(slots.absmax(), x_ptr, n, nullptr);
  kernels::quantize_fp8(d_q.get() + q_offset, t, slots.scale_inv(), x_ptr, slots.absmax(), n, nullptr);
  sync_and_check();
  const std::vector<fp8_byte> all = d_q.download();
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i < q_offset || i >= q_offset + n) EXPECT_EQ(all[i], kPoison) << "wrote outside q at byte " << i;
  }
  const std::vector<float> scales = slots.buf.download();
  return {std::vector<fp8_byte>(all.begin() + q_offset, all.begin() + q_offset + n), scales[0], scales[1]};
}

TEST(QuantizeFp8, BitExactAgainstHostConversion) {
  struct Case {
    std::size_t n, x_offset, q_offset;
  };
  // Whole and partial 16-element groups, the vector path, and misaligned input / output pointers.
  const Case cases[] = {{1, 0, 0},    {15, 0, 0},      {16, 0, 0},      {17, 0, 0},
                        {4096, 0, 0}, {100'003, 0, 0}, {100'003, 1, 0}, {4099, 0, 3}};
  for (DType t : kFp8Types) {
    for (const Case& c : cases) {
      const std::vector<float> x = wide_range_values(c.n + c.x_offset, 10 * c.n + c.x_offset);
      const std::vector<float> used(x.begin() + c.x_offset, x.end());
      const std::string what = std::string(dtype_name(t)) + " n=" + std::to_string(c.n) +
                               " x_offset=" + std::to_string(c.x_offset) + " q_offset=" + std::to_string(c.q_offset);
      const QuantizeResult r = device_quantize(x, t, c.x_offset, c.q_offset);
      const float scale = reference_scale(cpu_abs_max(used), t);
      EXPECT_EQ(bits_of(r.absmax), bits_of(cpu_abs_max(used))) << what;
      EXPECT_EQ(bits_of(r.scale_inv), bits_of(1.f / scale)) << what;
      EXPECT_EQ(mismatches(r.q, reference_quantize(used, scale, t), what), 0u) << what;
    }
  }
}

TEST(QuantizeFp8, LargestValueMapsToFp8Max) {
  const std::vector<float> x = wide_range_values(5000, 21);
  for (DType t : kFp8Types) {
    const QuantizeResult r = device_quantize(x, t, 0, 0);
    float largest = 0.f;
    for (fp8_byte b : r.q) largest = std::max(largest, std::fabs(fp8_to_float(b, t)));
    EXPECT_EQ(largest, kernels::fp8_max(t)) << dtype_name(t);
    // Dequantized values reproduce the input to FP8 precision where they are not underflowed.
    const float absmax = cpu_abs_max(x);
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (std::fabs(x[i]) < absmax * 1e-2f) continue;  // normal range of both formats
      EXPECT_NEAR(fp8_to_float(r.q[i], t) * r.scale_inv, x[i], std::fabs(x[i]) * (t == DType::E4M3 ? 0.0625 : 0.125))
          << dtype_name(t) << " i=" << i;
    }
  }
}

TEST(QuantizeFp8, ZeroAbsMaxUsesScaleOne) {
  const std::vector<float> zeros(1000, 0.f);
  for (DType t : kFp8Types) {
    const QuantizeResult r = device_quantize(zeros, t, 0, 0);
    EXPECT_EQ(r.absmax, 0.f);
    EXPECT_EQ(r.scale_inv, 1.f);
    EXPECT_EQ(mismatches(r.q, std::vector<fp8_byte>(zeros.size(), 0), std::string(dtype_name(t))), 0u);
  }
}

TEST(QuantizeFp8, InfOrNaNInputMakesEverythingNaN) {
  for (float bad : {INFINITY, -INFINITY, NAN}) {
    std::vector<float> x = wide_range_values(3000, 31);
    x[1234] = bad;
    for (DType t : kFp8Types) {
      const QuantizeResult r = device_quantize(x, t, 0, 0);
      EXPECT_FALSE(std::isfinite(r.absmax));
      EXPECT_TRUE(std::isnan(r.scale_inv)) << dtype_name(t) << " input " << bad;
      std::size_t not_nan = 0;
      for (fp8_byte b : r.q) not_nan += !std::isnan(fp8_to_float(b, t));
      EXPECT_EQ(not_nan, 0u) << dtype_name(t) << " input " << bad;
    }
  }
}

// An abs-max deep in the subnormal range would give scale = inf; it is clamped to FLT_MAX instead.
TEST(QuantizeFp8, TinyAbsMaxClampsScaleToFltMax) {
  std::vector<float> x = random_floats(500, 41, -1.f, 1.f);
  for (float& v : x) v *= 1e-39f;
  x = round_bf16(x);
  for (DType t : kFp8Types) {
    const QuantizeResult r = device_quantize(x, t, 0, 0);
    EXPECT_EQ(reference_scale(r.absmax, t), FLT_MAX);
    EXPECT_EQ(bits_of(r.scale_inv), bits_of(1.f / FLT_MAX)) << dtype_name(t);
    EXPECT_EQ(mismatches(r.q, reference_quantize(x, FLT_MAX, t), std::string(dtype_name(t))), 0u);
  }
}

// A caller may pass any abs-max (e.g. one fused into the producer of a larger tensor).
TEST(QuantizeFp8, UsesTheGivenAbsMax) {
  const std::vector<float> x = wide_range_values(2049, 51);
  const float absmax = cpu_abs_max(x) * 3.f;
  DeviceBuffer<nv_bfloat16> d_x(to_bf16(x));
  DeviceBuffer<fp8_byte> d_q(x.size());
  d_q.poison();
  ScaleSlots slots;
  slots.buf.upload({absmax, NAN});
  kernels::quantize_fp8(d_q.get(), DType::E4M3, slots.scale_inv(), d_x.get(), slots.absmax(), x.size(), nullptr);
  sync_and_check();
  const float scale = reference_scale(absmax, DType::E4M3);
  EXPECT_EQ(bits_of(slots.buf.download()[1]), bits_of(1.f / scale));
  EXPECT_EQ(mismatches(d_q.download(), reference_quantize(x, scale, DType::E4M3), "given abs-max"), 0u);
}

// ---- quantize_transpose_fp8 ---------------------------------------------------------------------

struct TransposeCase {
  int rows, cols;
  bool want_q, want_t;
  std::size_t x_offset;  // elements; 1 forces the element-wise load path
};

std::string describe(const TransposeCase& c, DType t) {
  return std::string(dtype_name(t)) + " " + std::to_string(c.rows) + "x" + std::to_string(c.cols) +
         " q=" + std::to_string(c.want_q) + " q_t=" + std::to_string(c.want_t) +
         " x_offset=" + std::to_string(c.x_offset);
}

void check_transpose(const TransposeCase& c, DType t, std::uint64_t seed) {
  const std::size_t n = static_cast<std::size_t>(c.rows) * c.cols;
  const std::vector<float> x = wide_range_values(n + c.x_offset, seed);
  const std::vector<float> used(x.begin() + c.x_offset, x.end());
  DeviceBuffer<nv_bfloat16> d_x(to_bf16(x));
  DeviceBuffer<fp8_byte> d_q(n), d_t(n);
  d_q.poison();
  d_t.poison();
  ScaleSlots slots;
  const nv_bfloat16* x_ptr = d_x.get() + c.x_offset;
  kernels::abs_max(slots.absmax(), x_ptr, n, nullptr);
  kernels::quantize_transpose_fp8(c.want_q ? d_q.get() : nullptr, c.want_t ? d_t.get() : nullptr, t, slots.scale_inv(),
                                  x_ptr, slots.absmax(), c.rows, c.cols, nullptr);
  sync_and_check();

  const std::string what = describe(c, t);
  const float scale = reference_scale(cpu_abs_max(used), t);
  const std::vector<fp8_byte> expected = reference_quantize(used, scale, t);
  std::vector<fp8_byte> expected_t(n);
  for (int r = 0; r < c.rows; ++r)
    for (int col = 0; col < c.cols; ++col)
      expected_t[static_cast<std::size_t>(col) * c.rows + r] = expected[static_cast<std::size_t>(r) * c.cols + col];
  EXPECT_EQ(bits_of(slots.buf.download()[1]), bits_of(1.f / scale)) << what;
  const std::vector<fp8_byte> untouched(n, kPoison);
  EXPECT_EQ(mismatches(d_q.download(), c.want_q ? expected : untouched, what + " q"), 0u);
  EXPECT_EQ(mismatches(d_t.download(), c.want_t ? expected_t : untouched, what + " q_t"), 0u);
}

TEST(QuantizeTransposeFp8, BothLayoutsEqualPlainQuantization) {
  const TransposeCase cases[] = {{1, 1, true, true, 0},      {37, 129, true, true, 0},   {1024, 896, true, true, 0},
                                 {896, 4864, true, true, 0}, {129, 4097, true, true, 0}, {64, 48, true, true, 0},
                                 {1024, 896, true, true, 1}};
  std::uint64_t seed = 60;
  for (DType t : kFp8Types)
    for (const TransposeCase& c : cases) check_transpose(c, t, ++seed);
}

TEST(QuantizeTransposeFp8, OnlyOneLayoutWhenTheOtherIsNull) {
  std::uint64_t seed = 80;
  for (const TransposeCase& c : {TransposeCase{37, 129, true, false, 0}, TransposeCase{37, 129, false, true, 0},
                                 TransposeCase{1024, 896, false, true, 0}, TransposeCase{1024, 896, true, false, 0}})
    check_transpose(c, DType::E4M3, ++seed);
}

// Timing printout for the 0.5B model's shapes (N = 16384 rows: x [N, C] and the MLP's [N, D]).
TEST(QuantizeTransposeFp8, Bandwidth) {
  for (int cols : {896, 4864}) {
    const int rows = 16384;
    const std::size_t n = static_cast<std::size_t>(rows) * cols;
    DeviceBuffer<nv_bfloat16> d_x(to_bf16(random_normal(n, cols)));
    DeviceBuffer<fp8_byte> d_q(n), d_t(n);
    ScaleSlots slots;
    kernels::abs_max(slots.absmax(), d_x.get(), n, nullptr);
    const double ms = mean_ms([&] {
      kernels::quantize_transpose_fp8(d_q.get(), d_t.get(), DType::E4M3, slots.scale_inv(), d_x.get(), slots.absmax(),
                                      rows, cols, nullptr);
    });
    report_bandwidth("quantize_transpose_fp8 e4m3 " + std::to_string(rows) + "x" + std::to_string(cols),
                     static_cast<double>(n) * (sizeof(nv_bfloat16) + 2), ms);
    const float scale_inv = slots.buf.download()[1];
    EXPECT_TRUE(std::isfinite(scale_inv) && scale_inv > 0.f);
    const std::vector<fp8_byte> q = d_q.download(), q_t = d_t.download();
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; i += 997) {  // spot check q_t against q
      const std::size_t r = i / cols, c = i % cols;
      wrong += q_t[c * rows + r] != q[i];
    }
    EXPECT_EQ(wrong, 0u);
  }
}

// ---- bad inputs ---------------------------------------------------------------------------------

TEST(QuantizeFp8, Fp8MaxValues) {
  EXPECT_EQ(kernels::fp8_max(DType::E4M3), 448.f);
  EXPECT_EQ(kernels::fp8_max(DType::E5M2), 57344.f);
  EXPECT_EQ(fp8_to_float(0x7E, DType::E4M3), 448.f);  // the formats' largest finite encodings
  EXPECT_EQ(fp8_to_float(0x7B, DType::E5M2), 57344.f);
  expect_error([] { kernels::fp8_max(DType::BF16); }, "not an FP8 format");
}

TEST(QuantizeFp8, RejectsBadArguments) {
  DeviceBuffer<nv_bfloat16> x(64);
  DeviceBuffer<fp8_byte> q(64);
  ScaleSlots slots;
  expect_error(
      [&] { kernels::quantize_fp8(q.get(), DType::BF16, slots.scale_inv(), x.get(), slots.absmax(), 64, nullptr); },
      "not an FP8 format");
  expect_error(
      [&] {
        kernels::quantize_transpose_fp8(q.get(), nullptr, DType::FP32, slots.scale_inv(), x.get(), slots.absmax(), 8, 8,
                                        nullptr);
      },
      "not an FP8 format");
  expect_error(
      [&] {
        kernels::quantize_transpose_fp8(nullptr, nullptr, DType::E4M3, slots.scale_inv(), x.get(), slots.absmax(), 8, 8,
                                        nullptr);
      },
      "both outputs are null");
  expect_error(
      [&] {
        kernels::quantize_transpose_fp8(q.get(), nullptr, DType::E4M3, slots.scale_inv(), x.get(), slots.absmax(), 0, 8,
                                        nullptr);
      },
      "must be positive");
  expect_error(
      [&] { kernels::quantize_fp8(q.get(), DType::E4M3, slots.absmax(), x.get(), slots.absmax(), 64, nullptr); },
      "same float");
  expect_error([&] { kernels::quantize_fp8(q.get(), DType::E4M3, nullptr, x.get(), slots.absmax(), 64, nullptr); },
               "null scale pointer");
  expect_error([&] { kernels::abs_max(nullptr, x.get(), 64, nullptr); }, "null result pointer");
}

}  // namespace
}  // namespace llmq::test
