// Helpers shared by GPU tests: device buffers that free themselves, seeded random inputs,
// output poisoning, FP8 byte decoding, and the relative-L2 / cosine metrics every test reports.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/errors.h"

namespace llmq::test {

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t n) : n_(n) { LLMQ_CUDA_CHECK(cudaMalloc(&ptr_, std::max<std::size_t>(n, 1) * sizeof(T))); }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  std::size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    LLMQ_REQUIRE(host.size() == n_, "upload of {} elements into a buffer of {}", host.size(), n_);
    LLMQ_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
    LLMQ_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // Fills every byte with 0xFF (NaN for floats) so that unwritten outputs are caught.
  void poison() { LLMQ_CUDA_CHECK(cudaMemset(ptr_, 0xFF, n_ * sizeof(T))); }

 private:
  T* ptr_ = nullptr;
  std::size_t n_;
};

inline std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<float> random_normal(std::size_t n, std::uint64_t seed, float stddev = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16(v[i]);
  return out;
}
inline std::vector<float> to_float(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}
// Rounds through bf16, so CPU references see exactly the inputs the GPU sees.
inline std::vector<float> round_bf16(const std::vector<float>& v) { return to_float(to_bf16(v)); }

// The value of one stored FP8 byte of format E4M3 or E5M2 (exact; NaN encodings give NaN), on the host.
inline float fp8_to_float(std::uint8_t byte, DType format) {
  LLMQ_REQUIRE(format == DType::E4M3 || format == DType::E5M2, "fp8_to_float: dtype {} is not e4m3 or e5m2",
               dtype_name(format));
  if (format == DType::E4M3) {
    __nv_fp8_e4m3 v;
    v.__x = byte;
    return static_cast<float>(v);
  }
  __nv_fp8_e5m2 v;
  v.__x = byte;
  return static_cast<float>(v);
}

// ||out - ref|| / ||ref||, accumulated in double; NaN/Inf anywhere in `out` gives +inf.
template <typename A, typename B>
double rel_l2(const std::vector<A>& out, const std::vector<B>& ref) {
  EXPECT_EQ(out.size(), ref.size());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < out.size() && i < ref.size(); ++i) {
    double o = static_cast<double>(out[i]), r = static_cast<double>(ref[i]);
    if (!std::isfinite(o)) return INFINITY;
    num += (o - r) * (o - r);
    den += r * r;
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

template <typename A, typename B>
double cosine(const std::vector<A>& a, const std::vector<B>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    double x = static_cast<double>(a[i]), y = static_cast<double>(b[i]);
    ab += x * y;
    aa += x * x;
    bb += y * y;
  }
  return ab / std::sqrt(aa * bb + 1e-300);
}

// Runs `fn`, expects llmq::Error whose message contains `needle`.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected llmq::Error containing \"" << needle << "\"";
  } catch (const ::llmq::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

inline void sync_and_check() {
  LLMQ_CUDA_CHECK(cudaGetLastError());
  LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- element-type helpers for tests typed on float / nv_bfloat16 ----
template <typename T>
std::vector<T> as_device_type(const std::vector<float>& v) {
  if constexpr (std::is_same_v<T, nv_bfloat16>) {
    return to_bf16(v);
  } else {
    return v;
  }
}
template <typename T>
std::vector<float> as_float(const std::vector<T>& v) {
  if constexpr (std::is_same_v<T, nv_bfloat16>) {
    return to_float(v);
  } else {
    return v;
  }
}
// The values a tensor of type T holds after uploading v.
template <typename T>
std::vector<float> representable(const std::vector<float>& v) {
  return as_float(as_device_type<T>(v));
}
template <typename T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-2;
}

// Mean time of one launch() over 20 runs after a warm-up, in milliseconds (CUDA events).
template <typename F>
inline double mean_ms(F&& launch) {
  constexpr int kRuns = 20;
  launch();
  sync_and_check();
  cudaEvent_t start, stop;
  LLMQ_CUDA_CHECK(cudaEventCreate(&start));
  LLMQ_CUDA_CHECK(cudaEventCreate(&stop));
  LLMQ_CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < kRuns; ++i) launch();
  LLMQ_CUDA_CHECK(cudaEventRecord(stop));
  LLMQ_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  LLMQ_CUDA_CHECK(cudaEventDestroy(start));
  LLMQ_CUDA_CHECK(cudaEventDestroy(stop));
  sync_and_check();
  return ms / kRuns;
}

// Prints the effective bandwidth (bytes that must move / time) for comparison with the GPU's peak.
inline void report_bandwidth(const std::string& what, double bytes, double ms) {
  const double gb_per_s = bytes / (ms * 1e-3) / 1e9;
  std::printf("[ bandwidth ] %s: %.1f us, %.0f GB/s\n", what.c_str(), ms * 1e3, gb_per_s);
  ::testing::Test::RecordProperty(what, static_cast<int>(gb_per_s));
}

template <typename A>
bool all_finite(const std::vector<A>& v) {
  for (const auto& x : v)
    if (!std::isfinite(static_cast<double>(x))) return false;
  return true;
}

// The element types of kernels that take fp32 or bf16 tensors: TYPED_TEST_SUITE(SomeTest, FloatAndBf16).
using FloatAndBf16 = ::testing::Types<float, nv_bfloat16>;

// ---- fused abs-max (FP8 scales) ----
// A launcher run without and with its abs-max slot must write the same bits, and the slot must end up
// holding max(its previous value, max |output|).

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// max |x| over v (0 for an empty v); check all_finite(v) first: NaN entries are skipped.
inline float max_abs(const std::vector<float>& v) {
  float m = 0.f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

constexpr float kBigSlot = 1e30f;  // a slot already holding more than any output here: must be kept

}  // namespace llmq::test
