// RMSNorm (src/kernels/rmsnorm.cu) against plain CPU loops (double accumulation) that mirror the head
// comment: forward with saved rstd, the fused residual add (also in place), backward with overwritten
// or accumulated dx (dresidual, also in place), dw accumulated into existing fp32 / bf16 values,
// bit-reproducibility, widths from 8 to the 8192 limit, and bad inputs. The abs-max option (FP8 scales):
// every launcher run without and with it must give bit-identical outputs, and the slot must end up holding
// exactly max(its previous value, max |out| or |dx|) of the copied-back output.
// Tolerances (relative L2 over the whole tensor): fp32 < 1e-5, bf16 < 1e-2 (the reference sees the
// inputs rounded through bf16, exactly as the device does).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/rmsnorm.h"

namespace llmq::test {
namespace {

constexpr float kEps = 1e-6f;

// rstd[n] = 1 / sqrt(mean_c x^2 + eps), in double, stored as the fp32 the kernels save.
std::vector<float> rstd_reference(const std::vector<float>& x, int N, int C, float eps) {
  std::vector<float> rstd(N);
  for (int n = 0; n < N; ++n) {
    double sum_sq = 0;
    for (int c = 0; c < C; ++c)
      sum_sq += static_cast<double>(x[static_cast<std::size_t>(n) * C + c]) * x[static_cast<std::size_t>(n) * C + c];
    rstd[n] = static_cast<float>(1.0 / std::sqrt(sum_sq / C + eps));
  }
  return rstd;
}

// out = x * rstd * w, with rstd in double.
std::vector<double> forward_reference(const std::vector<float>& x, const std::vector<float>& w, int N, int C, float eps,
                                      std::vector<double>* rstd_out) {
  std::vector<double> out(x.size());
  rstd_out->assign(N, 0.0);
  for (int n = 0; n < N; ++n) {
    const float* row = x.data() + static_cast<std::size_t>(n) * C;
    double sum_sq = 0;
    for (int c = 0; c < C; ++c) sum_sq += static_cast<double>(row[c]) * row[c];
    const double rstd = 1.0 / std::sqrt(sum_sq / C + eps);
    (*rstd_out)[n] = rstd;
    for (int c = 0; c < C; ++c) out[static_cast<std::size_t>(n) * C + c] = row[c] * rstd * w[c];
  }
  return out;
}

struct BackwardReference {
  std::vector<double> dx;
  std::vector<double> dw;
};

// dx = dresidual + rstd * (g - xhat * mean(g * xhat)), dw = dw_before + sum_n dout * xhat.
BackwardReference backward_reference(const std::vector<float>& dout, const std::vector<float>& x,
                                     const std::vector<float>& w, const std::vector<float>& rstd,
                                     const std::vector<float>* dresidual, const std::vector<float>& dw_before, int N,
                                     int C) {
  BackwardReference ref{std::vector<double>(x.size()), std::vector<double>(dw_before.begin(), dw_before.end())};
  for (int n = 0; n < N; ++n) {
    const std::size_t row = static_cast<std::size_t>(n) * C;
    const double r = rstd[n];
    double dot = 0;
    for (int c = 0; c < C; ++c) dot += static_cast<double>(dout[row + c]) * w[c] * (x[row + c] * r);
    const double mean = dot / C;
    for (int c = 0; c < C; ++c) {
      const double g = static_cast<double>(dout[row + c]) * w[c];
      const double xhat = x[row + c] * r;
      ref.dx[row + c] = r * (g - xhat * mean) + (dresidual ? (*dresidual)[row + c] : 0.0);
      ref.dw[c] += dout[row + c] * xhat;
    }
  }
  return ref;
}

template <typename T>
class RmsNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(RmsNormTest, FloatAndBf16);

constexpr int kN = 3 * 37 + 1;  // 112 rows
constexpr int kC = 904;         // 113 bf16 / 226 fp32 vectors: a partly filled last thread per row

template <typename T>
void check_forward(int N, int C) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C);
  const auto x = representable<T>(random_normal(static_cast<std::size_t>(N) * C, 21, 2.f));
  const auto w = representable<T>(random_floats(C, 22, 0.5f, 1.5f));
  DeviceBuffer<T> d_x(as_device_type<T>(x)), d_w(as_device_type<T>(w)), d_out(x.size());
  DeviceBuffer<float> d_rstd(N);
  d_out.poison();
  d_rstd.poison();
  kernels::rmsnorm_forward(d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), kEps, N, C, nullptr);
  sync_and_check();
  std::vector<double> rstd_ref;
  const auto out_ref = forward_reference(x, w, N, C, kEps, &rstd_ref);
  EXPECT_LT(rel_l2(as_float(d_out.download()), out_ref), tolerance<T>());
  EXPECT_LT(rel_l2(d_rstd.download(), rstd_ref), 1e-5) << "rstd is fp32 for both element types";
}

TYPED_TEST(RmsNormTest, Forward) { check_forward<TypeParam>(kN, kC); }
TYPED_TEST(RmsNormTest, ForwardNarrowAndWideRows) {
  check_forward<TypeParam>(5, 8);
  check_forward<TypeParam>(37, 5120);
  check_forward<TypeParam>(3, kernels::rmsnorm_max_width());
}

TYPED_TEST(RmsNormTest, ForwardWithoutSavingRstdAndInPlace) {
  using T = TypeParam;
  const auto x = representable<T>(random_normal(static_cast<std::size_t>(kN) * kC, 23));
  const auto w = representable<T>(random_floats(kC, 24, 0.5f, 1.5f));
  DeviceBuffer<T> d_x(as_device_type<T>(x)), d_w(as_device_type<T>(w));
  kernels::rmsnorm_forward(d_x.get(), nullptr, d_x.get(), d_w.get(), kEps, kN, kC, nullptr);
  sync_and_check();
  std::vector<double> rstd_ref;
  EXPECT_LT(rel_l2(as_float(d_x.download()), forward_reference(x, w, kN, kC, kEps, &rstd_ref)), tolerance<T>());
}

// residual_out = round(residual + x), out = rmsnorm(residual_out); in place: residual_out aliases residual.
template <typename T>
void check_fused_forward(bool in_place) {
  SCOPED_TRACE(in_place ? "residual_out aliases residual" : "separate residual_out");
  const std::size_t size = static_cast<std::size_t>(kN) * kC;
  const auto residual = representable<T>(random_normal(size, 31));
  const auto x = representable<T>(random_normal(size, 32, 0.5f));
  const auto w = representable<T>(random_floats(kC, 33, 0.5f, 1.5f));
  std::vector<float> sum(size);
  for (std::size_t i = 0; i < size; ++i) sum[i] = residual[i] + x[i];
  const auto residual_out_ref = representable<T>(sum);  // the kernel rounds the sum to T, then normalises it

  DeviceBuffer<T> d_residual(as_device_type<T>(residual)), d_x(as_device_type<T>(x)), d_w(as_device_type<T>(w));
  DeviceBuffer<T> d_residual_out(size), d_out(size);
  DeviceBuffer<float> d_rstd(kN);
  d_residual_out.poison();
  d_out.poison();
  d_rstd.poison();
  T* residual_out = in_place ? d_residual.get() : d_residual_out.get();
  kernels::fused_residual_rmsnorm_forward(residual_out, d_out.get(), d_rstd.get(), d_residual.get(), d_x.get(),
                                          d_w.get(), kEps, kN, kC, nullptr);
  sync_and_check();
  const auto got_residual_out = as_float(in_place ? d_residual.download() : d_residual_out.download());
  std::vector<double> rstd_ref;
  const auto out_ref = forward_reference(residual_out_ref, w, kN, kC, kEps, &rstd_ref);
  EXPECT_EQ(rel_l2(got_residual_out, residual_out_ref), 0.0) << "residual + x rounded once to the element type";
  EXPECT_LT(rel_l2(as_float(d_out.download()), out_ref), tolerance<T>());
  EXPECT_LT(rel_l2(d_rstd.download(), rstd_ref), 1e-5);
}

TYPED_TEST(RmsNormTest, FusedResidualForward) { check_fused_forward<TypeParam>(false); }
TYPED_TEST(RmsNormTest, FusedResidualForwardInPlace) { check_fused_forward<TypeParam>(true); }

enum class Residual { None, Separate, InPlace };

// TW: type of dw (T, or fp32 with bf16 activations).
template <typename T, typename TW>
void check_backward(int N, int C, Residual mode) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C << " residual mode " << static_cast<int>(mode));
  const std::size_t size = static_cast<std::size_t>(N) * C;
  const auto x = representable<T>(random_normal(size, 41, 2.f));
  const auto w = representable<T>(random_floats(C, 42, 0.5f, 1.5f));
  const auto dout = representable<T>(random_normal(size, 43));
  const auto dresidual = representable<T>(random_normal(size, 44));
  const auto dw_before = representable<TW>(random_floats(C, 45));
  const auto rstd = rstd_reference(x, N, C, kEps);

  DeviceBuffer<T> d_x(as_device_type<T>(x)), d_w(as_device_type<T>(w)), d_dout(as_device_type<T>(dout));
  DeviceBuffer<T> d_dresidual(as_device_type<T>(dresidual)), d_dx(size);
  DeviceBuffer<TW> d_dw(as_device_type<TW>(dw_before));
  DeviceBuffer<float> d_rstd(rstd);
  DeviceBuffer<std::byte> scratch(kernels::rmsnorm_backward_scratch_bytes(N, C));
  scratch.poison();
  d_dx.poison();
  T* dx = mode == Residual::InPlace ? d_dresidual.get() : d_dx.get();
  const T* dres = mode == Residual::None ? nullptr : d_dresidual.get();
  kernels::rmsnorm_backward(dx, d_dw.get(), reinterpret_cast<float*>(scratch.get()), dres, d_dout.get(), d_x.get(),
                            d_w.get(), d_rstd.get(), N, C, nullptr);
  sync_and_check();
  const auto ref = backward_reference(dout, x, w, rstd, mode == Residual::None ? nullptr : &dresidual, dw_before, N, C);
  const auto got_dx = as_float(mode == Residual::InPlace ? d_dresidual.download() : d_dx.download());
  EXPECT_LT(rel_l2(got_dx, ref.dx), tolerance<T>()) << "dx";
  EXPECT_LT(rel_l2(as_float(d_dw.download()), ref.dw), tolerance<TW>()) << "dw";
}

TYPED_TEST(RmsNormTest, BackwardOverwritesDx) { check_backward<TypeParam, TypeParam>(kN, kC, Residual::None); }
TYPED_TEST(RmsNormTest, BackwardAddsToSeparateDresidual) {
  check_backward<TypeParam, TypeParam>(kN, kC, Residual::Separate);
}
TYPED_TEST(RmsNormTest, BackwardAddsToDresidualInPlace) {
  check_backward<TypeParam, TypeParam>(kN, kC, Residual::InPlace);
}
TYPED_TEST(RmsNormTest, BackwardNarrowAndWideRows) {
  check_backward<TypeParam, TypeParam>(5, 8, Residual::InPlace);
  check_backward<TypeParam, TypeParam>(37, 5120, Residual::InPlace);
  check_backward<TypeParam, TypeParam>(3, kernels::rmsnorm_max_width(), Residual::None);
  check_backward<TypeParam, TypeParam>(4097, 896, Residual::InPlace);  // more rows than backward blocks
}
TEST(RmsNorm, BackwardBf16ActivationsWithFp32Dw) {
  check_backward<nv_bfloat16, float>(kN, kC, Residual::InPlace);
  check_backward<nv_bfloat16, float>(4097, 896, Residual::None);
}

TYPED_TEST(RmsNormTest, BackwardIsBitReproducible) {
  using T = TypeParam;
  const int N = 2000, C = 896;
  const std::size_t size = static_cast<std::size_t>(N) * C;
  const auto x = random_normal(size, 51);
  DeviceBuffer<T> d_x(as_device_type<T>(x)), d_w(as_device_type<T>(random_floats(C, 52))),
      d_dout(as_device_type<T>(random_normal(size, 53))), d_dx(size);
  DeviceBuffer<float> d_rstd(rstd_reference(representable<T>(x), N, C, kEps));
  DeviceBuffer<std::byte> scratch(kernels::rmsnorm_backward_scratch_bytes(N, C));
  const auto dw_before = as_device_type<T>(random_floats(C, 54));
  std::vector<std::vector<float>> dw_runs, dx_runs;
  for (int run = 0; run < 2; ++run) {
    DeviceBuffer<T> d_dw(dw_before);
    scratch.poison();
    kernels::rmsnorm_backward(d_dx.get(), d_dw.get(), reinterpret_cast<float*>(scratch.get()), nullptr, d_dout.get(),
                              d_x.get(), d_w.get(), d_rstd.get(), N, C, nullptr);
    sync_and_check();
    dw_runs.push_back(as_float(d_dw.download()));
    dx_runs.push_back(as_float(d_dx.download()));
  }
  EXPECT_EQ(std::memcmp(dw_runs[0].data(), dw_runs[1].data(), C * sizeof(float)), 0) << "dw";
  EXPECT_EQ(std::memcmp(dx_runs[0].data(), dx_runs[1].data(), size * sizeof(float)), 0) << "dx";
}

// ---- abs-max ----------------------------------------------------------------------------------

// Widths and row counts: partly filled last thread (904), a single live lane per row (8), more rows than
// the abs-max forward grid (one wave: about 2400 blocks of 64 threads on an H100, so blocks loop over
// rows), and the widest row.
struct RowShape {
  int N, C;
};
const RowShape kAbsMaxShapes[] = {{kN, kC}, {5, 8}, {5000, 896}, {3, 8192}};

// rmsnorm_forward (or the fused variant, optionally in place) without, then with an abs-max slot that
// holds slot_before. Every run starts from re-uploaded inputs and poisoned outputs.
template <typename T>
void check_forward_absmax(int N, int C, bool fused, bool in_place, float slot_before) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C << (fused ? " fused" : " plain")
                                  << (in_place ? " in place" : "") << " slot " << slot_before);
  const std::size_t size = static_cast<std::size_t>(N) * C;
  // A residual much larger than the normalised output, so that max |residual_out| != max |out|.
  const auto residual = as_device_type<T>(random_normal(size, 81, 8.f));
  const auto x = as_device_type<T>(random_normal(size, 82, 2.f));
  DeviceBuffer<T> d_residual(size), d_x(size), d_w(as_device_type<T>(random_floats(C, 83, 0.5f, 1.5f)));
  DeviceBuffer<T> d_residual_out(size), d_out(size);
  DeviceBuffer<float> d_rstd(N), d_absmax(std::vector<float>{slot_before});
  T* residual_out = in_place ? d_residual.get() : d_residual_out.get();  // fused: aliases residual
  T* out = !fused && in_place ? d_x.get() : d_out.get();                 // plain: aliases x

  struct Outputs {
    std::vector<T> out, residual_out;
    std::vector<float> rstd;
  };
  auto run = [&](float* absmax) {
    d_residual.upload(residual);
    d_x.upload(x);
    d_residual_out.poison();
    d_out.poison();
    d_rstd.poison();
    if (fused) {
      kernels::fused_residual_rmsnorm_forward(residual_out, out, d_rstd.get(), d_residual.get(), d_x.get(), d_w.get(),
                                              kEps, N, C, nullptr, absmax);
    } else {
      kernels::rmsnorm_forward(out, d_rstd.get(), d_x.get(), d_w.get(), kEps, N, C, nullptr, absmax);
    }
    sync_and_check();
    Outputs o{out == d_x.get() ? d_x.download() : d_out.download(), {}, d_rstd.download()};
    if (fused) o.residual_out = in_place ? d_residual.download() : d_residual_out.download();
    return o;
  };
  const Outputs plain = run(nullptr);
  const Outputs with_absmax = run(d_absmax.get());
  EXPECT_TRUE(same_bits(plain.out, with_absmax.out)) << "out";
  EXPECT_TRUE(same_bits(plain.residual_out, with_absmax.residual_out)) << "residual_out";
  EXPECT_TRUE(same_bits(plain.rstd, with_absmax.rstd)) << "rstd";
  const float out_max = max_abs(as_float(with_absmax.out));
  ASSERT_TRUE(all_finite(as_float(with_absmax.out)));
  EXPECT_EQ(d_absmax.download()[0], std::max(slot_before, out_max));
  if (fused) EXPECT_GT(max_abs(as_float(with_absmax.residual_out)), out_max) << "test needs residual_out to differ";
}

TYPED_TEST(RmsNormTest, ForwardAbsMax) {
  for (const auto& s : kAbsMaxShapes) check_forward_absmax<TypeParam>(s.N, s.C, false, false, 0.f);
  check_forward_absmax<TypeParam>(kN, kC, false, true, 0.f);
  check_forward_absmax<TypeParam>(kN, kC, false, false, kBigSlot);
}
TYPED_TEST(RmsNormTest, FusedResidualForwardAbsMaxIsOverOutOnly) {
  for (const auto& s : kAbsMaxShapes) check_forward_absmax<TypeParam>(s.N, s.C, true, false, 0.f);
  check_forward_absmax<TypeParam>(kN, kC, true, true, 0.f);
  check_forward_absmax<TypeParam>(5000, 896, true, true, kBigSlot);
}

// rmsnorm_backward without, then with an abs-max slot; dx, dw (from the same dw_before) and the slot
// compared as above. TW: type of dw.
template <typename T, typename TW>
void check_backward_absmax(int N, int C, Residual mode, float slot_before) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C << " residual mode " << static_cast<int>(mode)
                                  << " slot " << slot_before);
  const std::size_t size = static_cast<std::size_t>(N) * C;
  const auto x = representable<T>(random_normal(size, 84, 2.f));
  const auto dresidual = as_device_type<T>(random_normal(size, 85));
  const auto dw_before = as_device_type<TW>(random_floats(C, 86));
  DeviceBuffer<T> d_x(as_device_type<T>(x)), d_w(as_device_type<T>(random_floats(C, 87, 0.5f, 1.5f)));
  DeviceBuffer<T> d_dout(as_device_type<T>(random_normal(size, 88))), d_dresidual(size), d_dx(size);
  DeviceBuffer<TW> d_dw(C);
  DeviceBuffer<float> d_rstd(rstd_reference(x, N, C, kEps)), d_absmax(std::vector<float>{slot_before});
  DeviceBuffer<std::byte> scratch(kernels::rmsnorm_backward_scratch_bytes(N, C));
  T* dx = mode == Residual::InPlace ? d_dresidual.get() : d_dx.get();
  const T* dres = mode == Residual::None ? nullptr : d_dresidual.get();

  auto run = [&](float* absmax) {
    d_dresidual.upload(dresidual);
    d_dw.upload(dw_before);
    d_dx.poison();
    scratch.poison();
    kernels::rmsnorm_backward(dx, d_dw.get(), reinterpret_cast<float*>(scratch.get()), dres, d_dout.get(), d_x.get(),
                              d_w.get(), d_rstd.get(), N, C, nullptr, absmax);
    sync_and_check();
    return std::make_pair(mode == Residual::InPlace ? d_dresidual.download() : d_dx.download(), d_dw.download());
  };
  const auto plain = run(nullptr);
  const auto with_absmax = run(d_absmax.get());
  EXPECT_TRUE(same_bits(plain.first, with_absmax.first)) << "dx";
  EXPECT_TRUE(same_bits(plain.second, with_absmax.second)) << "dw";
  ASSERT_TRUE(all_finite(as_float(with_absmax.first)));
  EXPECT_EQ(d_absmax.download()[0], std::max(slot_before, max_abs(as_float(with_absmax.first))));
}

TYPED_TEST(RmsNormTest, BackwardAbsMax) {
  using T = TypeParam;
  for (const auto& s : kAbsMaxShapes) check_backward_absmax<T, T>(s.N, s.C, Residual::None, 0.f);
  check_backward_absmax<T, T>(kN, kC, Residual::Separate, 0.f);
  check_backward_absmax<T, T>(4097, 896, Residual::InPlace, 0.f);  // more rows than backward blocks
  check_backward_absmax<T, T>(kN, kC, Residual::InPlace, kBigSlot);
}
TEST(RmsNorm, BackwardAbsMaxBf16ActivationsWithFp32Dw) {
  check_backward_absmax<nv_bfloat16, float>(kN, kC, Residual::InPlace, 0.f);
  check_backward_absmax<nv_bfloat16, float>(4097, 896, Residual::None, 0.f);
  check_backward_absmax<nv_bfloat16, float>(5, 8, Residual::Separate, kBigSlot);
}

TEST(RmsNorm, ScratchGrowsWithRowsAndWidth) {
  EXPECT_GT(kernels::rmsnorm_backward_scratch_bytes(1, 896), 0u);
  EXPECT_LE(kernels::rmsnorm_backward_scratch_bytes(10, 896), kernels::rmsnorm_backward_scratch_bytes(100, 896));
  EXPECT_LE(kernels::rmsnorm_backward_scratch_bytes(16384, 896), kernels::rmsnorm_backward_scratch_bytes(32768, 896));
  EXPECT_THROW(kernels::rmsnorm_backward_scratch_bytes(0, 896), Error);
}

TEST(RmsNorm, RejectsBadInputs) {
  const int N = 4, C = 16;
  DeviceBuffer<float> x(N * 8200), w(8200), out(N * 8200), rstd(N), dw(8200);
  DeviceBuffer<std::byte> scratch(kernels::rmsnorm_backward_scratch_bytes(N, 8200));
  float* s = reinterpret_cast<float*>(scratch.get());
  EXPECT_THROW(kernels::rmsnorm_forward(out.get(), rstd.get(), x.get(), w.get(), kEps, N, 12, nullptr),
               Error);  // C % 8
  EXPECT_THROW(kernels::rmsnorm_forward(out.get(), rstd.get(), x.get(), w.get(), kEps, N, 8200, nullptr),
               Error);  // too wide
  EXPECT_THROW(kernels::rmsnorm_forward(out.get(), rstd.get(), x.get(), w.get(), 0.f, N, C, nullptr), Error);  // eps
  EXPECT_THROW(kernels::rmsnorm_forward(out.get(), rstd.get(), x.get() + 2, w.get(), kEps, N, C, nullptr),
               Error);  // misaligned
  EXPECT_THROW(kernels::rmsnorm_forward(out.get(), rstd.get(), x.get(), w.get(), kEps, 0, C, nullptr), Error);
  EXPECT_THROW(
      kernels::rmsnorm_backward(out.get(), dw.get(), s, nullptr, x.get(), x.get(), w.get(), rstd.get(), N, 12, nullptr),
      Error);
  EXPECT_THROW(kernels::rmsnorm_backward(out.get(), dw.get(), s + 1, nullptr, x.get(), x.get(), w.get(), rstd.get(), N,
                                         C, nullptr),
               Error);  // misaligned scratch
  EXPECT_THROW(
      kernels::rmsnorm_backward(out.get(), nullptr, s, nullptr, x.get(), x.get(), w.get(), rstd.get(), N, C, nullptr),
      Error);  // no dw
  sync_and_check();
}

// Qwen2.5-0.5B and 7B widths at 16 x 1024 rows, bf16. Prints the effective bandwidth.
TEST(RmsNorm, BandwidthAtQwenShapes) {
  const int N = 16 * 1024;
  for (int C : {896, 3584}) {
    const std::size_t size = static_cast<std::size_t>(N) * C;
    const double tensor_bytes = size * sizeof(nv_bfloat16);
    const std::string shape = " bf16 N=16384 C=" + std::to_string(C);
    DeviceBuffer<nv_bfloat16> x(to_bf16(random_floats(size, 93))), residual(to_bf16(random_floats(size, 94)));
    DeviceBuffer<nv_bfloat16> w(to_bf16(random_floats(C, 95, 0.5f, 1.5f))), out(size),
        dw(std::vector<nv_bfloat16>(C, __float2bfloat16(0.f)));
    DeviceBuffer<float> rstd(N);
    DeviceBuffer<std::byte> scratch(kernels::rmsnorm_backward_scratch_bytes(N, C));
    const double fwd_ms =
        mean_ms([&] { kernels::rmsnorm_forward(out.get(), rstd.get(), x.get(), w.get(), kEps, N, C, nullptr); });
    report_bandwidth("rmsnorm_forward" + shape, 2.0 * tensor_bytes, fwd_ms);
    const double fused_ms = mean_ms([&] {
      kernels::fused_residual_rmsnorm_forward(residual.get(), out.get(), rstd.get(), residual.get(), x.get(), w.get(),
                                              kEps, N, C, nullptr);
    });
    report_bandwidth("fused_residual_rmsnorm_forward" + shape, 4.0 * tensor_bytes, fused_ms);
    // dx accumulated in place into the residual gradient: reads dout, x, dresidual, writes dx.
    const double bwd_ms = mean_ms([&] {
      kernels::rmsnorm_backward(residual.get(), dw.get(), reinterpret_cast<float*>(scratch.get()), residual.get(),
                                out.get(), x.get(), w.get(), rstd.get(), N, C, nullptr);
    });
    report_bandwidth("rmsnorm_backward" + shape, 4.0 * tensor_bytes + 2.0 * scratch.size(), bwd_ms);
    // The same with the fused abs-max (the slot is never reset: it only maxes).
    DeviceBuffer<float> absmax(std::vector<float>{0.f});
    const double fused_absmax_ms = mean_ms([&] {
      kernels::fused_residual_rmsnorm_forward(residual.get(), out.get(), rstd.get(), residual.get(), x.get(), w.get(),
                                              kEps, N, C, nullptr, absmax.get());
    });
    report_bandwidth("fused_residual_rmsnorm_forward with absmax" + shape, 4.0 * tensor_bytes, fused_absmax_ms);
    const double bwd_absmax_ms = mean_ms([&] {
      kernels::rmsnorm_backward(residual.get(), dw.get(), reinterpret_cast<float*>(scratch.get()), residual.get(),
                                out.get(), x.get(), w.get(), rstd.get(), N, C, nullptr, absmax.get());
    });
    report_bandwidth("rmsnorm_backward with absmax" + shape, 4.0 * tensor_bytes + 2.0 * scratch.size(),
                     bwd_absmax_ms);
    EXPECT_TRUE(all_finite(to_float(out.download())));
    EXPECT_TRUE(all_finite(to_float(dw.download())));
  }
}

}  // namespace
}  // namespace llmq::test
