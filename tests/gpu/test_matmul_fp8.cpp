// FP8 matmul (kernels::matmul_fp8) against a CPU double GEMM of the DEQUANTIZED operands:
//   out[M, N] (+)= sum_k (qa[m, k] * a_scale_inv) * (qb[n, k] * b_scale_inv) (+ bias[n])
// The operands are random bf16 tensors quantized on the device by quantize.h's kernels, and the
// reference multiplies exactly the values the GEMM sees, so what remains is cuBLASLt's accumulation
// and the output rounding. Tolerances (relative L2 over the checked rows):
//   bf16 output                    1e-2  (the final rounding to bf16 alone gives about 1e-3)
//   fp32 output, fast_accum off    5e-4  Hopper's tensor cores add FP8 products in a reduced-precision
//                                        accumulator (about 13 mantissa bits) that cuBLASLt promotes
//                                        to fp32 every few MMAs; that leaves ~1e-4, so the 1e-5 of
//                                        fp32 paths (and even 1e-4) is out of reach
//   fp32 output, fast_accum on     5e-3  no promotion: the whole K sum stays in that accumulator
// Every test prints its measured errors. For M = 16384 the reference covers about 200 rows.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/init.h"
#include "kernels/matmul.h"
#include "kernels/quantize.h"
#include "kernels/quantize_blocks.h"

namespace llmq::test {
namespace {

using fp8_byte = std::uint8_t;
using kernels::MatmulContext;

constexpr double kTolBf16Out = 1e-2;
constexpr double kTolFp32Out = 5e-4;
constexpr double kTolFp32OutFastAccum = 5e-3;

double tolerance(DType out_dtype, bool fast_accum) {
  if (out_dtype == DType::BF16) return kTolBf16Out;
  return fast_accum ? kTolFp32OutFastAccum : kTolFp32Out;
}

// A random bf16 matrix [rows, cols] quantized on the device, with its dequantized values on the
// host: per tensor (abs_max + quantize_fp8) or in blocks (quantize_blocks_fp8, scales where the GEMM
// reads them: fp8_scale_layout).
class QuantizedMatrix {
 public:
  QuantizedMatrix(int rows, int cols, DType dtype, float stddev, std::uint64_t seed,
                  kernels::Fp8Scaling scaling = kernels::Fp8Scaling::Tensor)
      : rows_(rows),
        cols_(cols),
        dtype_(dtype),
        scaling_(scaling),
        q_(static_cast<std::size_t>(rows) * cols),
        scales_(4 + std::max<std::size_t>(4, kernels::fp8_scale_count(scaling, rows, cols))) {
    const std::size_t n = q_.size();
    DeviceBuffer<nv_bfloat16> x(to_bf16(random_normal(n, seed, stddev)));
    q_.poison();
    scales_.poison();
    const kernels::ScaleLayout layout = kernels::fp8_scale_layout(scaling, rows, cols);
    if (scaling == kernels::Fp8Scaling::Tensor) {
      kernels::abs_max(absmax_slot(), x.get(), n, nullptr);
      kernels::quantize_fp8(q_.get(), dtype, scale_inv_slot(), x.get(), absmax_slot(), n, nullptr);
    } else {
      const auto blocks = scaling == kernels::Fp8Scaling::Block1x128 ? kernels::Fp8Blocks::Row128
                                                                     : kernels::Fp8Blocks::Square128;
      kernels::quantize_blocks_fp8(q_.get(), scale_inv_slot(), layout, nullptr, nullptr, {}, dtype, blocks, x.get(),
                                   rows, cols, nullptr);
    }
    sync_and_check();
    const std::vector<fp8_byte> q = q_.download();
    const std::vector<float> scales = scales_.download();
    values_.resize(n);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const std::int64_t i = scaling == kernels::Fp8Scaling::Block128x128 ? r / 128 : r;
        const double scale_inv = scales[4 + i * layout.i_stride + c / 128 * layout.j_stride];
        const std::size_t at = static_cast<std::size_t>(r) * cols + c;
        values_[at] = fp8_to_float(q[at], dtype) * scale_inv;
      }
  }

  int rows() const { return rows_; }
  int cols() const { return cols_; }
  DType dtype() const { return dtype_; }
  kernels::Fp8Operand operand() const { return {q_.get(), dtype_, scale_inv_slot(), scaling_}; }
  const void* data() const { return q_.get(); }
  const float* scale_inv() const { return scale_inv_slot(); }
  const double* row(int r) const { return values_.data() + static_cast<std::size_t>(r) * cols_; }

 private:
  float* absmax_slot() const { return scales_.get(); }
  float* scale_inv_slot() const { return scales_.get() + 4; }  // 16-byte aligned

  int rows_, cols_;
  DType dtype_;
  kernels::Fp8Scaling scaling_;
  DeviceBuffer<fp8_byte> q_;
  DeviceBuffer<float> scales_;  // [0] abs-max, from [4] scale_inv (cuBLASLt needs 16-byte aligned scales)
  std::vector<double> values_;  // dequantized
};

// All rows for small M, about 200 evenly spaced rows (and the last) for large M.
std::vector<int> checked_rows(int M) {
  const int step = std::max(1, M / 192);
  std::vector<int> rows;
  for (int m = 0; m < M; m += step) rows.push_back(m);
  if (rows.back() != M - 1) rows.push_back(M - 1);
  return rows;
}

struct RunOptions {
  DType out_dtype = DType::BF16;
  bool fast_accum = false;
  bool with_bias = false;
  bool accumulate = false;
};

std::string describe(const QuantizedMatrix& a, const QuantizedMatrix& b, const RunOptions& o) {
  return "M=" + std::to_string(a.rows()) + " N=" + std::to_string(b.rows()) + " K=" + std::to_string(a.cols()) + " " +
         std::string(dtype_name(a.dtype())) + " x " + std::string(dtype_name(b.dtype())) + " -> " +
         std::string(dtype_name(o.out_dtype)) + " fast_accum=" + std::to_string(o.fast_accum) +
         " bias=" + std::to_string(o.with_bias) + " accumulate=" + std::to_string(o.accumulate);
}

class MatmulFp8Test : public ::testing::Test {
 protected:
  void SetUp() override {
    workspace_ = std::make_unique<DeviceBuffer<std::byte>>(MatmulContext::kRecommendedWorkspaceBytes);
    ctx_ = std::make_unique<MatmulContext>(workspace_->get(), workspace_->size());
  }

  // Runs matmul_fp8 and returns the relative L2 error over the checked rows (also printed).
  double run_and_compare(const QuantizedMatrix& a, const QuantizedMatrix& b, const RunOptions& o, std::uint64_t seed) {
    const int M = a.rows(), N = b.rows();
    const std::vector<float> bias = round_bf16(random_normal(N, seed, 1.f));  // bf16 for every output dtype
    std::vector<float> c0 = random_normal(static_cast<std::size_t>(M) * N, seed + 1, 1.f);
    if (o.out_dtype == DType::BF16) c0 = round_bf16(c0);
    const std::vector<float> out =
        o.out_dtype == DType::BF16 ? run<nv_bfloat16>(a, b, o, bias, c0) : run<float>(a, b, o, bias, c0);

    const std::vector<int> rows = checked_rows(M);
    std::vector<double> expected, got;
    for (int m : rows) {
      for (int n = 0; n < N; ++n) {
        const double* ar = a.row(m);
        const double* br = b.row(n);
        double sum = 0;
        for (int k = 0; k < a.cols(); ++k) sum += ar[k] * br[k];
        const std::size_t i = static_cast<std::size_t>(m) * N + n;
        expected.push_back(sum + (o.with_bias ? bias[n] : 0.0) + (o.accumulate ? c0[i] : 0.0));
        got.push_back(out[i]);
      }
    }
    const double err = rel_l2(got, expected);
    std::printf("[ fp8 error ] %s: rel L2 %.2e\n", describe(a, b, o).c_str(), err);
    return err;
  }

  template <typename T>
  std::vector<float> run(const QuantizedMatrix& a, const QuantizedMatrix& b, const RunOptions& o,
                         const std::vector<float>& bias, const std::vector<float>& c0) {
    DeviceBuffer<T> out(c0.size());
    DeviceBuffer<nv_bfloat16> d_bias(to_bf16(bias));
    if (o.accumulate)
      out.upload(as_device_type<T>(c0));
    else
      out.poison();
    kernels::matmul_fp8(*ctx_, out.get(), o.out_dtype, a.operand(), b.operand(), a.rows(), b.rows(), a.cols(),
                        o.accumulate, o.with_bias ? d_bias.get() : nullptr, o.fast_accum, nullptr);
    sync_and_check();
    return as_float(out.download());
  }

  void check(const QuantizedMatrix& a, const QuantizedMatrix& b, const RunOptions& o, std::uint64_t seed) {
    EXPECT_LT(run_and_compare(a, b, o, seed), tolerance(o.out_dtype, o.fast_accum)) << describe(a, b, o);
  }

  std::unique_ptr<DeviceBuffer<std::byte>> workspace_;
  std::unique_ptr<MatmulContext> ctx_;
};

struct Shape {
  int M, N, K;
};

// Activations (stddev 2) times weights (stddev 0.03), as in a linear layer's forward pass.
TEST_F(MatmulFp8Test, E4m3ModelShapesAllOutputsWithAndWithoutFastAccum) {
  std::uint64_t seed = 100;
  for (const Shape& s : {Shape{16384, 896, 896}, Shape{64, 4864, 896}, Shape{48, 1152, 896}}) {
    const QuantizedMatrix a(s.M, s.K, DType::E4M3, 2.f, ++seed), b(s.N, s.K, DType::E4M3, 0.03f, ++seed);
    for (DType out : {DType::BF16, DType::FP32})
      for (bool fast : {false, true}) check(a, b, {.out_dtype = out, .fast_accum = fast}, ++seed);
  }
}

TEST_F(MatmulFp8Test, BiasEpilogueWithBf16BiasForBothOutputs) {
  const QuantizedMatrix a(48, 896, DType::E4M3, 2.f, 200), b(1152, 896, DType::E4M3, 0.03f, 201);  // 0.5B qkv
  check(a, b, {.out_dtype = DType::BF16, .with_bias = true}, 202);
  check(a, b, {.out_dtype = DType::FP32, .with_bias = true}, 203);
}

TEST_F(MatmulFp8Test, AccumulateAddsToExistingOutput) {
  const QuantizedMatrix a(64, 896, DType::E4M3, 2.f, 300), b(4864, 896, DType::E4M3, 0.03f, 301);
  check(a, b, {.out_dtype = DType::BF16, .accumulate = true}, 302);
  check(a, b, {.out_dtype = DType::FP32, .accumulate = true}, 303);
  check(a, b, {.out_dtype = DType::FP32, .with_bias = true, .accumulate = true}, 304);
}

// e5m2 gradients times e4m3 weights (backward dx = dy @ W) and the mirrored pair.
TEST_F(MatmulFp8Test, MixedE4m3AndE5m2) {
  const QuantizedMatrix a4(64, 896, DType::E4M3, 2.f, 400), b5(896, 896, DType::E5M2, 0.03f, 401);
  const QuantizedMatrix a5(64, 896, DType::E5M2, 1e-3f, 402), b4(896, 896, DType::E4M3, 0.03f, 403);
  for (DType out : {DType::BF16, DType::FP32}) {
    check(a4, b5, {.out_dtype = out}, 404);
    check(a5, b4, {.out_dtype = out}, 405);
    check(a5, b4, {.out_dtype = out, .fast_accum = true}, 406);
  }
}

TEST_F(MatmulFp8Test, MDoesNotNeedToBeAMultipleOf16) {
  const QuantizedMatrix a(37, 896, DType::E4M3, 2.f, 500), b(896, 896, DType::E4M3, 0.03f, 501);
  check(a, b, {.out_dtype = DType::BF16}, 502);
  check(a, b, {.out_dtype = DType::FP32, .with_bias = true}, 503);
}

// Block-scaled operands (Hopper): activations or gradients in 1 x 128 blocks, weights in 128 x 128
// blocks (forward and data gradient), both 1 x 128 along the tokens (weight gradient). Sizes with
// partial blocks (K = 896 = 7 blocks, N = 1152 = 9 blocks, M = 200) check where the scales are read.
TEST_F(MatmulFp8Test, BlockScaledOperandsMatchTheDequantizedProduct) {
  using kernels::Fp8Scaling;
  const QuantizedMatrix x(200, 896, DType::E4M3, 2.f, 700, Fp8Scaling::Block1x128);
  const QuantizedMatrix w(1152, 896, DType::E4M3, 0.03f, 701, Fp8Scaling::Block128x128);
  const QuantizedMatrix dy(256, 640, DType::E5M2, 1e-3f, 702, Fp8Scaling::Block1x128);
  const QuantizedMatrix w_t(384, 640, DType::E4M3, 0.03f, 703, Fp8Scaling::Block128x128);
  const QuantizedMatrix dy_t(384, 512, DType::E4M3, 1e-3f, 704, Fp8Scaling::Block1x128);
  const QuantizedMatrix x_t(256, 512, DType::E4M3, 2.f, 705, Fp8Scaling::Block1x128);
  for (DType out : {DType::BF16, DType::FP32}) {
    check(x, w, {.out_dtype = out}, 706);
    check(x, w, {.out_dtype = out, .with_bias = true}, 707);
    check(dy, w_t, {.out_dtype = out}, 708);
    check(dy_t, x_t, {.out_dtype = out, .accumulate = true}, 709);
  }
}

TEST_F(MatmulFp8Test, BlockScalingRefusesFastAccumulation) {
  using kernels::Fp8Scaling;
  const QuantizedMatrix a(32, 128, DType::E4M3, 1.f, 800, Fp8Scaling::Block1x128);
  const QuantizedMatrix b(128, 128, DType::E4M3, 1.f, 801, Fp8Scaling::Block128x128);
  DeviceBuffer<nv_bfloat16> out(32 * 128);
  expect_error([&] {
    kernels::matmul_fp8(*ctx_, out.get(), DType::BF16, a.operand(), b.operand(), 32, 128, 128, false, nullptr, true,
                        nullptr);
  }, "fast_accum off");
}

TEST_F(MatmulFp8Test, PlanCacheKeysOnDtypesAndFastAccum) {
  const QuantizedMatrix a(32, 64, DType::E4M3, 1.f, 600), b4(48, 64, DType::E4M3, 1.f, 601),
      b5(48, 64, DType::E5M2, 1.f, 602);
  DeviceBuffer<nv_bfloat16> out(32 * 48);
  auto call = [&](const QuantizedMatrix& b, bool fast_accum) {
    kernels::matmul_fp8(*ctx_, out.get(), DType::BF16, a.data(), a.dtype(), a.scale_inv(), b.data(), b.dtype(),
                        b.scale_inv(), 32, 48, 64, false, nullptr, fast_accum, nullptr);
    sync_and_check();
  };
  call(b4, false);
  EXPECT_EQ(ctx_->cached_problems(), 1u);
  call(b4, false);
  EXPECT_EQ(ctx_->cached_problems(), 1u) << "same problem: the cached plan is reused";
  call(b4, true);
  EXPECT_EQ(ctx_->cached_problems(), 2u) << "fast_accum is part of the key";
  call(b5, false);
  EXPECT_EQ(ctx_->cached_problems(), 3u) << "b's dtype is part of the key";
  EXPECT_LT(run_and_compare(a, b5, {}, 603), kTolBf16Out) << "correct after plan switches";
}

TEST_F(MatmulFp8Test, RejectsBadInputs) {
  DeviceBuffer<fp8_byte> buf(64 * 64 + 64);
  DeviceBuffer<float> out(64 * 64), scale(std::vector<float>{1.f});
  auto call = [&](DType out_dtype, DType a_dtype, DType b_dtype, int M, int N, int K, const void* a,
                  const float* a_scale) {
    kernels::matmul_fp8(*ctx_, out.get(), out_dtype, a, a_dtype, a_scale, buf.get(), b_dtype, scale.get(), M, N, K,
                        false, nullptr, false, nullptr);
  };
  const void* a = buf.get();
  const float* s = scale.get();
  expect_error([&] { call(DType::FP32, DType::E5M2, DType::E5M2, 16, 16, 16, a, s); }, "not supported");
  expect_error([&] { call(DType::FP32, DType::BF16, DType::E4M3, 16, 16, 16, a, s); }, "not supported");
  expect_error([&] { call(DType::E4M3, DType::E4M3, DType::E4M3, 16, 16, 16, a, s); }, "output is not supported");
  expect_error([&] { call(DType::FP32, DType::E4M3, DType::E4M3, 16, 16, 24, a, s); }, "multiples of 16");
  expect_error([&] { call(DType::FP32, DType::E4M3, DType::E4M3, 16, 40, 16, a, s); }, "multiples of 16");
  expect_error([&] { call(DType::FP32, DType::E4M3, DType::E4M3, 0, 16, 16, a, s); }, "must be positive");
  expect_error([&] { call(DType::FP32, DType::E4M3, DType::E4M3, 16, 16, 16, a, nullptr); }, "null scale pointer");
  expect_error([&] { call(DType::FP32, DType::E4M3, DType::E4M3, 16, 16, 16, buf.get() + 8, s); }, "16-byte aligned");
  expect_error([&] { call(DType::FP32, DType::E4M3, DType::E4M3, 16, 16, 16, nullptr, s); }, "null pointer");
  expect_error([&] { call(DType::FP32, DType::E4M3, DType::E4M3, 16, 16, 16, a, s + 1); }, "scale pointers must be");
}

// Timing printout: the 0.5B model's MLP up (or gate) and down projections at 16384 rows.
TEST_F(MatmulFp8Test, ThroughputBf16VsFp8) {
  for (const Shape& s : {Shape{16384, 4864, 896}, Shape{16384, 896, 4864}}) {
    const std::size_t mk = static_cast<std::size_t>(s.M) * s.K, nk = static_cast<std::size_t>(s.N) * s.K,
                      mn = static_cast<std::size_t>(s.M) * s.N;
    DeviceBuffer<nv_bfloat16> a16(mk), b16(nk), out16(mn), out8(mn);
    DeviceBuffer<fp8_byte> a8(mk), b8(nk);
    DeviceBuffer<float> scales(16);  // abs-max and scale_inv of a, then of b, 16-byte aligned
    kernels::init_normal(a16.get(), mk, 1.f, 1, nullptr);
    kernels::init_normal(b16.get(), nk, 0.03f, 2, nullptr);
    kernels::abs_max(scales.get(), a16.get(), mk, nullptr);
    kernels::quantize_fp8(a8.get(), DType::E4M3, scales.get() + 4, a16.get(), scales.get(), mk, nullptr);
    kernels::abs_max(scales.get() + 8, b16.get(), nk, nullptr);
    kernels::quantize_fp8(b8.get(), DType::E4M3, scales.get() + 12, b16.get(), scales.get() + 8, nk, nullptr);
    auto fp8 = [&](bool fast_accum) {
      kernels::matmul_fp8(*ctx_, out8.get(), DType::BF16, a8.get(), DType::E4M3, scales.get() + 4, b8.get(),
                          DType::E4M3, scales.get() + 12, s.M, s.N, s.K, false, nullptr, fast_accum, nullptr);
    };
    const double ms_bf16 = mean_ms([&] {
      kernels::matmul(*ctx_, out16.get(), DType::BF16, a16.get(), b16.get(), DType::BF16, s.M, s.N, s.K, false, true,
                      1.f, false, nullptr, nullptr);
    });
    const double ms_fp8 = mean_ms([&] { fp8(false); });
    const double ms_fp8_fast = mean_ms([&] { fp8(true); });
    const double tflop = 2.0 * s.M * s.N * s.K / 1e12;
    std::printf("[ tflops    ] M=%d N=%d K=%d: bf16 %.0f, fp8 %.0f, fp8 fast_accum %.0f TFLOP/s\n", s.M, s.N, s.K,
                tflop / (ms_bf16 * 1e-3), tflop / (ms_fp8 * 1e-3), tflop / (ms_fp8_fast * 1e-3));
    // Sanity: e4m3 keeps 3 mantissa bits, so the FP8 result is within a few percent of the bf16 GEMM
    // of the unquantized inputs.
    EXPECT_LT(rel_l2(to_float(out8.download()), to_float(out16.download())), 0.1);
  }
}

}  // namespace
}  // namespace llmq::test
