// SwiGLU (src/kernels/swiglu.cu) against plain CPU loops that mirror the head comment: forward and
// backward on the [gate | up] layout, the in-place backward (dh aliases h), saturated sigmoids without
// NaN, and bad inputs.
// Tolerances (relative L2 over the whole tensor): fp32 < 1e-5, bf16 < 1e-2 (the reference sees the
// inputs rounded through bf16, exactly as the device does).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
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
using ElementTypes = ::testing::Types<float, nv_bfloat16>;
TYPED_TEST_SUITE(SwiGluTest, ElementTypes);

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
  EXPECT_TRUE(all_finite(to_float(dh.download())));
}

}  // namespace
}  // namespace llmq::test
