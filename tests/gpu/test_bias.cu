// Bias forward / backward (src/kernels/bias.cu) against double CPU loops, for vector-friendly and
// odd widths, odd row counts, misaligned pointers, and bit-reproducibility of the backward sum.
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/bias.h"

namespace llmq::test {
namespace {

template <typename T>
std::vector<float> stored(const std::vector<float>& v) {
  return as_float<T>(as_device_type<T>(v));
}
template <typename T>
constexpr double tolerance() {  // relative L2: fp32 1e-5, bf16 1e-2
  return std::is_same_v<T, float> ? 1e-5 : 1e-2;
}

template <typename T>
void check_forward(int N, int C, int offset) {
  const std::vector<float> out0 = stored<T>(random_floats(static_cast<std::size_t>(N) * C + offset, 1));
  const std::vector<float> bias = stored<T>(random_floats(C + offset, 2));
  std::vector<double> expected(static_cast<std::size_t>(N) * C);
  for (int n = 0; n < N; ++n) {
    for (int c = 0; c < C; ++c) {
      const std::size_t i = static_cast<std::size_t>(n) * C + c;
      expected[i] = static_cast<double>(out0[offset + i]) + bias[offset + c];
    }
  }
  DeviceBuffer<T> d_out(as_device_type<T>(out0)), d_bias(as_device_type<T>(bias));
  kernels::bias_forward(d_out.get() + offset, static_cast<const T*>(d_bias.get() + offset), N, C, nullptr);
  sync_and_check();
  const std::vector<float> all = as_float(d_out.download());
  EXPECT_EQ(std::memcmp(all.data(), out0.data(), offset * sizeof(float)), 0) << "wrote before the tensor";
  EXPECT_LT(rel_l2(std::vector<float>(all.begin() + offset, all.end()), expected), tolerance<T>())
      << "N=" << N << " C=" << C << " offset=" << offset;
}

TEST(BiasForward, Fp32) {
  check_forward<float>(1001, 896, 0);
  check_forward<float>(37, 101, 0);
  check_forward<float>(5, 1000, 1);
}
TEST(BiasForward, Bf16) {
  check_forward<nv_bfloat16>(1001, 896, 0);
  check_forward<nv_bfloat16>(37, 101, 0);
  check_forward<nv_bfloat16>(5, 1000, 3);
}

template <typename TB, typename T>
std::vector<TB> run_backward(const std::vector<float>& dout, const std::vector<float>& dbias0, int N, int C, int offset) {
  DeviceBuffer<T> d_dout(as_device_type<T>(dout));
  DeviceBuffer<TB> d_dbias(as_device_type<TB>(dbias0));
  DeviceBuffer<std::uint8_t> scratch(kernels::bias_backward_scratch_bytes(N, C));
  scratch.poison();
  kernels::bias_backward(d_dbias.get(), static_cast<const T*>(d_dout.get() + offset), N, C, scratch.get(), nullptr);
  sync_and_check();
  return d_dbias.download();
}

template <typename TB, typename T>
void check_backward(int N, int C, int offset = 0) {
  const std::vector<float> dout = stored<T>(random_floats(static_cast<std::size_t>(N) * C + offset, 3));
  const std::vector<float> dbias0 = stored<TB>(random_floats(C, 4));  // accumulated into: not zero
  std::vector<double> expected(dbias0.begin(), dbias0.end());
  for (int n = 0; n < N; ++n) {
    for (int c = 0; c < C; ++c) expected[c] += dout[offset + static_cast<std::size_t>(n) * C + c];
  }
  const auto out = run_backward<TB, T>(dout, dbias0, N, C, offset);
  EXPECT_LT(rel_l2(as_float(out), expected), tolerance<TB>()) << "N=" << N << " C=" << C << " offset=" << offset;
  const auto again = run_backward<TB, T>(dout, dbias0, N, C, offset);
  EXPECT_EQ(std::memcmp(out.data(), again.data(), out.size() * sizeof(TB)), 0) << "not bit-reproducible";
}

TEST(BiasBackward, Fp32) {
  check_backward<float, float>(1001, 896);
  check_backward<float, float>(8193, 1152);  // more rows than 128 row blocks of 64
  check_backward<float, float>(37, 101);
  check_backward<float, float>(1, 7);
  check_backward<float, float>(999, 1000, 1);
}
TEST(BiasBackward, Bf16) {
  check_backward<nv_bfloat16, nv_bfloat16>(1001, 896);
  check_backward<nv_bfloat16, nv_bfloat16>(37, 101);
  check_backward<nv_bfloat16, nv_bfloat16>(999, 1000, 3);
}
TEST(BiasBackward, Fp32GradientOfBf16Output) {
  check_backward<float, nv_bfloat16>(1001, 896);
  check_backward<float, nv_bfloat16>(63, 33);
}

TEST(Bias, RejectsBadArguments) {
  DeviceBuffer<float> buf(64);
  EXPECT_THROW(kernels::bias_forward(buf.get(), buf.get(), 4, 0, nullptr), Error);
  EXPECT_THROW(kernels::bias_forward(buf.get(), buf.get(), -1, 4, nullptr), Error);
  EXPECT_THROW(kernels::bias_forward(buf.get(), static_cast<const float*>(nullptr), 4, 4, nullptr), Error);
  EXPECT_THROW(kernels::bias_backward(buf.get(), buf.get(), 4, 4, nullptr, nullptr), Error);
  EXPECT_THROW(kernels::bias_backward_scratch_bytes(4, -3), Error);
}

}  // namespace
}  // namespace llmq::test
