// SwiGLU (src/kernels/swiglu.cu) against plain CPU loops that mirror the head comment: forward and
// backward on the [gate | up] layout, the in-place backward (dh aliases h), saturated sigmoids without
// NaN, and bad inputs. The abs-max option (FP8 scales): runs without and with it must give bit-identical
// outputs, and the slot must end up holding exactly max(its previous value, max |out| or |dh|) of the
// copied-back output; a NaN written must reach the slot.
// Tolerances (relative L2 over the whole tensor): fp32 < 1e-5, bf16 < 1e-2 (the reference sees the
// inputs rounded through bf16, exactly as the device does).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <type_traits>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/swiglu.h"

namespace llmq::test {
namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// out[n, j] = silu(h[n, j]) * h[n, D + j]
std::vector<double> forward_reference(const std::vector<float>& h, int N, int D) {
  std::vector<double> out(static_cast<std::size_t>(N) * D);
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < D; ++j) {
      const double g = h[static_cast<std::size_t>(n) * 2 * D + j], u = h[static_cast<std::size_t>(n) * 2 * D + D + j];
      out[static_cast<std::size_t>(n) * D + j] = g * sigmoid(g) * u;
    }
  }
  return out;
}

// dh[n, j] = dout * u * sig * (1 + g * (1 - sig)), dh[n, D + j] = dout * silu(g)
std::vector<double> backward_reference(const std::vector<float>& dout, const std::vector<float>& h, int N, int D) {
  std::vector<double> dh(h.size());
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < D; ++j) {
      const std::size_t gate = static_cast<std::size_t>(n) * 2 * D + j, up = gate + D;
      const double g = h[gate], u = h[up], dy = dout[static_cast<std::size_t>(n) * D + j];
      const double sig = sigmoid(g);
      dh[gate] = dy * u * sig * (1.0 + g * (1.0 - sig));
      dh[up] = dy * g * sig;
    }
  }
  return dh;
}

template <typename T>
class SwiGluTest : public ::testing::Test {};
TYPED_TEST_SUITE(SwiGluTest, FloatAndBf16);

constexpr int kN = 3 * 37 + 1;  // 112 rows
constexpr int kD = 8 * 77;      // 616: not a multiple of the 256-thread block

template <typename T>
void check_forward(int N, int D, float gate_scale) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " D=" << D << " gate scale " << gate_scale);
  const auto h = representable<T>(random_normal(static_cast<std::size_t>(N) * 2 * D, 71, gate_scale));
  DeviceBuffer<T> d_h(as_device_type<T>(h)), d_out(static_cast<std::size_t>(N) * D);
  d_out.poison();
  kernels::swiglu_forward(d_out.get(), d_h.get(), N, D, nullptr);
  sync_and_check();
  EXPECT_LT(rel_l2(as_float(d_out.download()), forward_reference(h, N, D)), tolerance<T>());
}

template <typename T>
void check_backward(int N, int D, float gate_scale, bool in_place) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " D=" << D << " gate scale " << gate_scale
                                  << (in_place ? " dh aliases h" : " separate dh"));
  const auto h = representable<T>(random_normal(static_cast<std::size_t>(N) * 2 * D, 72, gate_scale));
  const auto dout = representable<T>(random_normal(static_cast<std::size_t>(N) * D, 73));
  DeviceBuffer<T> d_h(as_device_type<T>(h)), d_dout(as_device_type<T>(dout)), d_dh(h.size());
  d_dh.poison();
  T* dh = in_place ? d_h.get() : d_dh.get();
  kernels::swiglu_backward(dh, d_dout.get(), d_h.get(), N, D, nullptr);
  sync_and_check();
  const auto got = as_float(in_place ? d_h.download() : d_dh.download());
  EXPECT_LT(rel_l2(got, backward_reference(dout, h, N, D)), tolerance<T>());
}

TYPED_TEST(SwiGluTest, Forward) {
  check_forward<TypeParam>(kN, kD, 2.f);
  check_forward<TypeParam>(1, 8, 1.f);
  check_forward<TypeParam>(5, 4864, 1.f);  // Qwen2.5-0.5B MLP width
}
TYPED_TEST(SwiGluTest, Backward) {
  check_backward<TypeParam>(kN, kD, 2.f, false);
  check_backward<TypeParam>(1, 8, 1.f, false);
  check_backward<TypeParam>(5, 4864, 1.f, false);
}
TYPED_TEST(SwiGluTest, BackwardInPlace) { check_backward<TypeParam>(kN, kD, 2.f, true); }

// Gates far into both tails of the sigmoid (|g| up to ~150): finite results that match the reference.
TYPED_TEST(SwiGluTest, SaturatedGatesStayFinite) {
  check_forward<TypeParam>(kN, kD, 40.f);
  check_backward<TypeParam>(kN, kD, 40.f, false);
}

// ---- abs-max ----------------------------------------------------------------------------------

// Sizes: not a multiple of the 256-thread block (kN x kD), one live thread (1 x 8), and more vectors than
// the abs-max grid has threads (one wave: at most 2^18 on an H100; 300 x 8000), so that threads loop.
struct Size {
  int N, D;
};
const Size kAbsMaxSizes[] = {{kN, kD}, {1, 8}, {300, 8000}};

template <typename T>
void check_forward_absmax(int N, int D, float slot_before) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " D=" << D << " slot " << slot_before);
  DeviceBuffer<T> d_h(as_device_type<T>(random_normal(static_cast<std::size_t>(N) * 2 * D, 74, 2.f)));
  DeviceBuffer<T> d_out(static_cast<std::size_t>(N) * D);
  DeviceBuffer<float> d_absmax(std::vector<float>{slot_before});
  auto run = [&](float* absmax) {
    d_out.poison();
    kernels::swiglu_forward(d_out.get(), d_h.get(), N, D, nullptr, absmax);
    sync_and_check();
    return d_out.download();
  };
  const auto plain = run(nullptr);
  const auto with_absmax = run(d_absmax.get());
  EXPECT_TRUE(same_bits(plain, with_absmax));
  ASSERT_TRUE(all_finite(as_float(with_absmax)));
  EXPECT_EQ(d_absmax.download()[0], std::max(slot_before, max_abs(as_float(with_absmax))));
}

// h's gate columns are scaled by gate_scale and its up columns by up_scale (a large up makes d/dgate the
// larger half, a large gate makes d/dup the larger one). Returns {max |d gate half|, max |d up half|}.
template <typename T>
std::pair<float, float> check_backward_absmax(int N, int D, bool in_place, float slot_before, float gate_scale = 1.f,
                                              float up_scale = 1.f) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " D=" << D << (in_place ? " dh aliases h" : " separate dh")
                                  << " slot " << slot_before << " gate x" << gate_scale << " up x" << up_scale);
  auto h_values = random_normal(static_cast<std::size_t>(N) * 2 * D, 75, 2.f);
  for (std::size_t i = 0; i < h_values.size(); ++i) h_values[i] *= (i / D) % 2 == 0 ? gate_scale : up_scale;
  const auto h = as_device_type<T>(h_values);
  DeviceBuffer<T> d_h(h.size()), d_dh(h.size());
  DeviceBuffer<T> d_dout(as_device_type<T>(random_normal(static_cast<std::size_t>(N) * D, 76)));
  DeviceBuffer<float> d_absmax(std::vector<float>{slot_before});
  T* dh = in_place ? d_h.get() : d_dh.get();
  auto run = [&](float* absmax) {
    d_h.upload(h);
    d_dh.poison();
    kernels::swiglu_backward(dh, d_dout.get(), d_h.get(), N, D, nullptr, absmax);
    sync_and_check();
    return in_place ? d_h.download() : d_dh.download();
  };
  const auto plain = run(nullptr);
  const auto with_absmax = run(d_absmax.get());
  EXPECT_TRUE(same_bits(plain, with_absmax));
  const auto got = as_float(with_absmax);
  EXPECT_TRUE(all_finite(got));
  std::vector<float> gate_part, up_part;
  for (int n = 0; n < N; ++n) {
    const auto row = got.begin() + static_cast<std::ptrdiff_t>(n) * 2 * D;
    gate_part.insert(gate_part.end(), row, row + D);
    up_part.insert(up_part.end(), row + D, row + 2 * D);
  }
  const float gate_max = max_abs(gate_part), up_max = max_abs(up_part);
  EXPECT_EQ(d_absmax.download()[0], std::max({slot_before, gate_max, up_max}));
  return {gate_max, up_max};
}

TYPED_TEST(SwiGluTest, ForwardAbsMax) {
  for (const auto& s : kAbsMaxSizes) check_forward_absmax<TypeParam>(s.N, s.D, 0.f);
  check_forward_absmax<TypeParam>(kN, kD, kBigSlot);
}
TYPED_TEST(SwiGluTest, BackwardAbsMax) {
  for (const auto& s : kAbsMaxSizes) check_backward_absmax<TypeParam>(s.N, s.D, false, 0.f);
  check_backward_absmax<TypeParam>(300, 8000, true, 0.f);
  check_backward_absmax<TypeParam>(kN, kD, true, kBigSlot);
}
// Each half of dh once holds the maximum: the abs-max must cover both.
TYPED_TEST(SwiGluTest, BackwardAbsMaxCoversGateAndUpColumns) {
  const auto [gate_max_1, up_max_1] = check_backward_absmax<TypeParam>(kN, kD, false, 0.f, 1.f, 30.f);
  EXPECT_GT(gate_max_1, up_max_1) << "large up values: d/dgate should hold the maximum";
  const auto [gate_max_2, up_max_2] = check_backward_absmax<TypeParam>(kN, kD, true, 0.f, 30.f, 1.f);
  EXPECT_GT(up_max_2, gate_max_2) << "large gate values: d/dup should hold the maximum";
}

// A NaN gate gives a NaN output and must give a NaN abs-max (the FP8 scale shows the problem), even when the
// slot already holds a large value.
TYPED_TEST(SwiGluTest, AbsMaxPropagatesNaN) {
  using T = TypeParam;
  const int N = kN, D = kD;
  auto h = random_normal(static_cast<std::size_t>(N) * 2 * D, 77);
  h[static_cast<std::size_t>(N / 2) * 2 * D + 5] = NAN;
  DeviceBuffer<T> d_h(as_device_type<T>(h)), d_out(static_cast<std::size_t>(N) * D);
  DeviceBuffer<float> d_absmax(std::vector<float>{kBigSlot});
  kernels::swiglu_forward(d_out.get(), d_h.get(), N, D, nullptr, d_absmax.get());
  sync_and_check();
  EXPECT_TRUE(std::isnan(as_float(d_out.download())[static_cast<std::size_t>(N / 2) * D + 5]));
  EXPECT_TRUE(std::isnan(d_absmax.download()[0]));
}

TEST(SwiGlu, RejectsBadInputs) {
  DeviceBuffer<float> h(4 * 2 * 16), out(4 * 16);
  EXPECT_THROW(kernels::swiglu_forward(out.get(), h.get(), 4, 12, nullptr), Error);  // D % 8
  EXPECT_THROW(kernels::swiglu_forward(out.get(), h.get(), 0, 16, nullptr), Error);
  EXPECT_THROW(kernels::swiglu_forward(out.get() + 1, h.get(), 4, 8, nullptr), Error);  // misaligned
  EXPECT_THROW(kernels::swiglu_backward(h.get(), out.get(), h.get(), 4, 20, nullptr), Error);
  EXPECT_THROW(kernels::swiglu_backward(h.get(), out.get() + 2, h.get(), 4, 8, nullptr), Error);
  sync_and_check();
}

// Qwen2.5-0.5B MLP width (D = 4864) at 8 x 1024 rows, bf16. Prints the effective bandwidth.
TEST(SwiGlu, BandwidthAtQwenShapes) {
  const int N = 8 * 1024, D = 4864;
  const std::size_t out_size = static_cast<std::size_t>(N) * D;
  DeviceBuffer<nv_bfloat16> h(to_bf16(random_floats(2 * out_size, 97, -4.f, 4.f))), out(out_size), dh(2 * out_size);
  const double out_bytes = out_size * sizeof(nv_bfloat16);
  const double fwd_ms = mean_ms([&] { kernels::swiglu_forward(out.get(), h.get(), N, D, nullptr); });
  report_bandwidth("swiglu_forward bf16 N=8192 D=4864", 3.0 * out_bytes, fwd_ms);
  const double bwd_ms = mean_ms([&] { kernels::swiglu_backward(dh.get(), out.get(), h.get(), N, D, nullptr); });
  report_bandwidth("swiglu_backward bf16 N=8192 D=4864", 5.0 * out_bytes, bwd_ms);
  DeviceBuffer<float> absmax(std::vector<float>{0.f});  // never reset: it only maxes
  const double fwd_absmax_ms =
      mean_ms([&] { kernels::swiglu_forward(out.get(), h.get(), N, D, nullptr, absmax.get()); });
  report_bandwidth("swiglu_forward with absmax bf16 N=8192 D=4864", 3.0 * out_bytes, fwd_absmax_ms);
  const double bwd_absmax_ms =
      mean_ms([&] { kernels::swiglu_backward(dh.get(), out.get(), h.get(), N, D, nullptr, absmax.get()); });
  report_bandwidth("swiglu_backward with absmax bf16 N=8192 D=4864", 5.0 * out_bytes, bwd_absmax_ms);
  EXPECT_TRUE(all_finite(to_float(dh.download())));
}

}  // namespace
}  // namespace llmq::test
