// AdamW (src/kernels/adamw.cu) against a double CPU loop that mirrors the head comment, for fp32
// and bf16 storage of params / grads / m / v; stochastic rounding checked for unbiasedness and
// bit-reproducibility (also when a tensor is updated in slices); the bf16 copy of fp32 master
// weights checked bit-exactly.
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/adamw.h"

namespace llmq::test {
namespace {

using kernels::AdamWConfig;

// Values exactly as a T buffer stores them.
template <typename T>
std::vector<float> stored(const std::vector<float>& v) {
  return as_float<T>(as_device_type<T>(v));
}

struct AdamState {
  std::vector<double> p, m, v;
};

// One AdamW step in double, exactly the head comment of adamw.cu.
void adamw_reference_step(AdamState& s, const std::vector<float>& grads, double grad_scale, const AdamWConfig& c) {
  const double b1 = c.beta1, b2 = c.beta2, lr = c.lr;
  const double bias1 = 1.0 - std::pow(b1, c.step), bias2 = 1.0 - std::pow(b2, c.step);
  for (std::size_t i = 0; i < s.p.size(); ++i) {
    const double g = grads[i] * grad_scale;
    s.p[i] -= lr * c.weight_decay * s.p[i];
    s.m[i] = b1 * s.m[i] + (1 - b1) * g;
    s.v[i] = b2 * s.v[i] + (1 - b2) * g * g;
    s.p[i] -= lr * (s.m[i] / bias1) / (std::sqrt(s.v[i] / bias2) + c.eps);
  }
}

AdamWConfig test_config() {
  AdamWConfig c;
  c.lr = 1e-2f;
  c.beta1 = 0.9f;
  c.beta2 = 0.95f;
  c.eps = 1e-8f;
  c.weight_decay = 0.1f;
  c.step = 1;
  c.seed = 1234;
  return c;
}

struct StepOutputs {
  std::vector<float> p, m, v;
};

// Runs `steps` AdamW steps on the GPU (buffers of type TP/TG/TM/TV, starting `offset` elements in)
// and the same steps on the CPU reference; returns the GPU state and leaves the reference in `ref`.
template <typename TP, typename TG, typename TM, typename TV>
StepOutputs run_steps(std::size_t n, int steps, float grad_scale, AdamState& ref, int offset = 0,
                      bool pass_scale_pointer = true) {
  const std::vector<float> p0 = stored<TP>(random_floats(n + offset, 1, -1.f, 1.f));
  // Moments of a run in progress, of the size the gradients below produce: |update| ~ lr.
  const std::vector<float> m0 = stored<TM>(random_normal(n + offset, 2, 0.001f));
  const std::vector<float> v0 = stored<TV>(random_floats(n + offset, 3, 1e-5f, 1e-4f));
  ref = {std::vector<double>(p0.begin() + offset, p0.end()), std::vector<double>(m0.begin() + offset, m0.end()),
         std::vector<double>(v0.begin() + offset, v0.end())};
  DeviceBuffer<TP> p(as_device_type<TP>(p0));
  DeviceBuffer<TM> m(as_device_type<TM>(m0));
  DeviceBuffer<TV> v(as_device_type<TV>(v0));
  DeviceBuffer<TG> g(n + offset);
  DeviceBuffer<float> scale(std::vector<float>{grad_scale});
  AdamWConfig c = test_config();
  for (int t = 1; t <= steps; ++t) {
    c.step = t;
    const std::vector<float> grads = stored<TG>(random_normal(n + offset, 100 + t, 0.02f));
    g.upload(as_device_type<TG>(grads));
    kernels::adamw_update(p.get() + offset, static_cast<const TG*>(g.get() + offset), m.get() + offset,
                          v.get() + offset, n, c, pass_scale_pointer ? scale.get() : nullptr, nullptr, nullptr);
    adamw_reference_step(ref, std::vector<float>(grads.begin() + offset, grads.end()),
                         pass_scale_pointer ? grad_scale : 1.0, c);
  }
  sync_and_check();
  auto tail = [offset](std::vector<float> v) { return std::vector<float>(v.begin() + offset, v.end()); };
  return {tail(as_float(p.download())), tail(as_float(m.download())), tail(as_float(v.download()))};
}

std::vector<double> difference(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> d(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}
std::vector<double> difference(const std::vector<float>& a, const std::vector<double>& b) {
  return difference(std::vector<double>(a.begin(), a.end()), b);
}

// fp32 storage: relative L2 < 1e-6 after 5 steps (brief: fp32 AdamW vs double).
constexpr double kFp32Tol = 1e-6;
// bf16 moments or parameters (stochastic rounding noise of about 2^-9 relative per step): < 1e-2.
constexpr double kBf16Tol = 1e-2;
constexpr std::size_t kOddSize = 10007;  // not a multiple of the 8-element groups

// p, m and v after run_steps each within `tol` (relative L2) of the double reference.
void expect_state_within(const StepOutputs& out, const AdamState& ref, double tol) {
  EXPECT_LT(rel_l2(out.p, ref.p), tol);
  EXPECT_LT(rel_l2(out.m, ref.m), tol);
  EXPECT_LT(rel_l2(out.v, ref.v), tol);
}

TEST(AdamW, Fp32FiveStepsMatchDouble) {
  AdamState ref;
  const auto out = run_steps<float, float, float, float>(kOddSize, 5, 0.7f, ref);
  expect_state_within(out, ref, kFp32Tol);
}

TEST(AdamW, Fp32MisalignedPointersUseElementPath) {
  AdamState ref;
  const auto out = run_steps<float, float, float, float>(kOddSize, 5, 0.7f, ref, /*offset=*/1);
  expect_state_within(out, ref, kFp32Tol);
}

TEST(AdamW, Fp32NullGradScaleMeansOne) {
  AdamState ref;
  const auto out = run_steps<float, float, float, float>(kOddSize, 2, 0.25f, ref, 0, /*pass_scale_pointer=*/false);
  EXPECT_LT(rel_l2(out.p, ref.p), kFp32Tol);
  EXPECT_LT(rel_l2(out.m, ref.m), kFp32Tol);
}

TEST(AdamW, Bf16GradsFp32StateMatchDouble) {
  AdamState ref;  // the reference sees the same bf16-rounded gradients, so the fp32 tolerance holds
  const auto out = run_steps<float, nv_bfloat16, float, float>(kOddSize, 5, 0.7f, ref);
  expect_state_within(out, ref, kFp32Tol);
}

template <typename TM, typename TV>
void check_bf16_moments() {
  AdamState ref;
  const std::vector<double> p_start = [] {
    const auto p0 = random_floats(kOddSize, 1, -1.f, 1.f);
    return std::vector<double>(p0.begin(), p0.end());
  }();
  const auto out = run_steps<float, float, TM, TV>(kOddSize, 5, 0.7f, ref);
  // Compare the parameter change, not the parameters: the change is what rounding could corrupt.
  EXPECT_LT(rel_l2(difference(out.p, p_start), difference(ref.p, p_start)), kBf16Tol);
  EXPECT_LT(rel_l2(out.m, ref.m), kBf16Tol);
  EXPECT_LT(rel_l2(out.v, ref.v), kBf16Tol);
}

TEST(AdamW, Bf16MomentsMatchDouble) { check_bf16_moments<nv_bfloat16, nv_bfloat16>(); }
TEST(AdamW, Bf16FirstMomentMatchDouble) { check_bf16_moments<nv_bfloat16, float>(); }
TEST(AdamW, Bf16SecondMomentMatchDouble) { check_bf16_moments<float, nv_bfloat16>(); }

TEST(AdamW, AllBf16MatchDouble) {
  AdamState ref;
  const auto out = run_steps<nv_bfloat16, nv_bfloat16, nv_bfloat16, nv_bfloat16>(kOddSize, 5, 0.7f, ref);
  expect_state_within(out, ref, kBf16Tol);
}

// Updates 1.5 (bf16 ulp 2^-7 = 0.0078) by about 1e-4 per step for 20 steps. Round-to-nearest would
// never move it; stochastic rounding must move the mean over 2^20 elements by the expected 2e-3.
// Each step adds a rounding error of mean 0 and variance <= ulp^2 / 4 per element, so the mean of
// n elements after K steps has standard deviation <= ulp * sqrt(K / (4 n)) (1.7e-5); tolerance: 5 sd.
TEST(AdamW, Bf16StochasticRoundingIsUnbiased) {
  const std::size_t n = 1u << 20;
  const int K = 20;
  AdamWConfig c = test_config();
  c.lr = 1e-4f;
  c.weight_decay = 0.f;
  DeviceBuffer<nv_bfloat16> p(to_bf16(std::vector<float>(n, 1.5f)));
  DeviceBuffer<float> g(std::vector<float>(n, 1.f));
  DeviceBuffer<float> m(std::vector<float>(n, 0.f)), v(std::vector<float>(n, 0.f));
  AdamState ref{{1.5}, {0.0}, {0.0}};  // every element follows the same exact trajectory
  for (int t = 1; t <= K; ++t) {
    c.step = t;
    kernels::adamw_update(p.get(), static_cast<const float*>(g.get()), m.get(), v.get(), n, c, nullptr, nullptr,
                          nullptr);
    adamw_reference_step(ref, {1.f}, 1.0, c);
  }
  const std::vector<float> out = to_float(p.download());
  double mean = 0;
  for (float x : out) mean += x;
  mean /= n;
  const double expected_shift = ref.p[0] - 1.5;  // about -K * lr
  const double ulp = 1.0 / 128;
  const double sd = ulp * std::sqrt(K / (4.0 * n));
  EXPECT_NEAR(mean - 1.5, expected_shift, 5 * sd) << "expected shift " << expected_shift;
  EXPECT_LT(expected_shift, -0.9 * K * c.lr);  // sanity: the test really asks for a sub-ulp drift
}

// Random parameters, gradients and moments of type T (seeds seed .. seed + 3) on the device.
template <typename T>
struct RandomState {
  RandomState(std::size_t n, std::uint64_t seed)
      : p(as_device_type<T>(random_floats(n, seed, -1.f, 1.f))),
        g(as_device_type<T>(random_normal(n, seed + 1, 0.02f))),
        m(as_device_type<T>(random_normal(n, seed + 2, 0.01f))),
        v(as_device_type<T>(random_floats(n, seed + 3, 1e-6f, 1e-4f))) {}
  DeviceBuffer<T> p, g, m, v;

  // p, then m, then v, as stored on the device.
  std::vector<T> download_p_m_v() const {
    std::vector<T> all = p.download();
    for (const auto* b : {&m, &v}) {
      const auto part = b->download();
      all.insert(all.end(), part.begin(), part.end());
    }
    return all;
  }
};

// Same inputs and seed: bit-identical bf16 params and moments; another seed: different roundings.
TEST(AdamW, Bf16StochasticRoundingIsDeterministic) {
  const std::size_t n = 4099;
  auto run = [&](std::uint32_t seed) {
    RandomState<nv_bfloat16> s(n, 5);
    AdamWConfig c = test_config();
    c.step = 3;
    c.seed = seed;
    kernels::adamw_update(s.p.get(), static_cast<const nv_bfloat16*>(s.g.get()), s.m.get(), s.v.get(), n, c, nullptr,
                          nullptr, nullptr);
    sync_and_check();
    return s.download_p_m_v();
  };
  const auto a = run(42), b = run(42), c = run(43);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(nv_bfloat16)), 0) << "same seed must give same bits";
  std::size_t differing = 0;
  for (std::size_t i = 0; i < a.size(); ++i) differing += std::memcmp(&a[i], &c[i], sizeof(nv_bfloat16)) != 0;
  EXPECT_GT(differing, a.size() / 20) << "another seed should change a good share of the roundings";
}

// A tensor updated in slices (index_offset = slice start) gets the same bits as one update of the
// whole: the rounding hash sees tensor indices. Slice starts not multiples of 8 also take the
// element path for misaligned pointers.
TEST(AdamW, Bf16SlicedUpdateMatchesWholeBitExactly) {
  const std::size_t n = 10007;
  // Updates [cuts[i], cuts[i + 1]) one after the other with index_offset = cuts[i] (0 if without_offset).
  auto run = [&](const std::vector<std::size_t>& cuts, bool without_offset = false) {
    RandomState<nv_bfloat16> s(n, 21);
    AdamWConfig c = test_config();
    c.step = 2;
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      c.index_offset = without_offset ? 0 : cuts[i];
      kernels::adamw_update(s.p.get() + cuts[i], static_cast<const nv_bfloat16*>(s.g.get() + cuts[i]),
                            s.m.get() + cuts[i], s.v.get() + cuts[i], cuts[i + 1] - cuts[i], c, nullptr, nullptr,
                            nullptr);
    }
    sync_and_check();
    return s.download_p_m_v();
  };
  const auto whole = run({0, n});
  const auto sliced = run({0, 1003, 1011, 4096, n});
  ASSERT_EQ(whole.size(), sliced.size());
  EXPECT_EQ(std::memcmp(whole.data(), sliced.data(), whole.size() * sizeof(nv_bfloat16)), 0);
  // Without the offset the slices would reuse the bits of elements 0.. and differ.
  const auto unshifted = run({1003, n}, /*without_offset=*/true);
  std::size_t differing = 0;
  for (std::size_t i = 1003; i < n; ++i) differing += std::memcmp(&unshifted[i], &whole[i], sizeof(nv_bfloat16)) != 0;
  EXPECT_GT(differing, (n - 1003) / 20);
}

TEST(AdamW, Bf16CopyOfFp32MasterIsRoundToNearest) {
  const std::size_t n = kOddSize;
  RandomState<float> s(n, 9);
  DeviceBuffer<nv_bfloat16> copy(n);
  copy.poison();
  kernels::adamw_update(s.p.get(), static_cast<const float*>(s.g.get()), s.m.get(), s.v.get(), n, test_config(),
                        nullptr, copy.get(), nullptr);
  sync_and_check();
  const auto master = s.p.download();
  const auto out = copy.download();
  const auto expected = to_bf16(master);
  EXPECT_EQ(std::memcmp(out.data(), expected.data(), n * sizeof(nv_bfloat16)), 0);
}

TEST(AdamW, RejectsBadArguments) {
  DeviceBuffer<float> buf(16);
  const float* g = buf.get();
  AdamWConfig c = test_config();
  c.step = 0;
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), 16, c, nullptr, nullptr, nullptr), Error);
  c = test_config();
  c.beta1 = 1.f;
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), 16, c, nullptr, nullptr, nullptr), Error);
  c = test_config();
  c.lr = NAN;
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), 16, c, nullptr, nullptr, nullptr), Error);
  c = test_config();
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), std::size_t{1} << 33, c, nullptr, nullptr,
                                     nullptr),
               Error);
  EXPECT_THROW(kernels::adamw_update(buf.get(), static_cast<const float*>(nullptr), buf.get(), buf.get(), 16, c,
                                     nullptr, nullptr, nullptr),
               Error);
  c.index_offset = 0xFFFFFFFFull - 8;  // slice [2^32 - 9, 2^32 + 7) reaches past the 32-bit hash index
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), 16, c, nullptr, nullptr, nullptr), Error);
}

}  // namespace
}  // namespace llmq::test
